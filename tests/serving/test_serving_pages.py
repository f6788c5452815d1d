"""Serving pages and the report's "measured in serving" figures, from stored request rows."""

from __future__ import annotations

from datetime import timedelta

import pytest

from finetunes.models import StudentModel
from serving import selectors, services
from serving.models import ServedModel, ServingChange, ServingRequest

pytestmark = pytest.mark.django_db


def distilled(team, project, name="Ticket intents v1"):  # type: ignore[no-untyped-def]
    return StudentModel.objects.create(
        team=team,
        name=name,
        kind="distilled",
        source="fine_tune",
        path=f"finetunes/{name}",
        project=project,
    )


def test_an_engineer_serves_from_the_serving_page_and_it_is_audited(
    team, owner, teammate, project, client_for
):  # type: ignore[no-untyped-def]
    student = distilled(team, project)
    client = client_for(teammate)
    page = client.get(f"/teams/{team.pk}/serving/")
    assert f'data-testid="serve-{student.pk}"'.encode() in page.content
    response = client.post(f"/students/{student.pk}/serve/")
    served = ServedModel.objects.get(student=student)
    assert response.status_code == 302 and response["Location"] == f"/served/{served.pk}/"
    assert served.slug == "ticket-intents-v1" and served.served_by == teammate and served.active
    detail = client.get(f"/served/{served.pk}/").content.decode()
    assert 'model="ticket-intents-v1"' in detail and "Started serving by ted" in detail

    client.post(f"/served/{served.pk}/settings/", {"log_inputs": "on"})
    client.post(f"/served/{served.pk}/stop/")
    served.refresh_from_db()
    assert served.log_inputs and not served.active
    actions = list(
        ServingChange.objects.filter(served_model=served).values_list("action", "user__username")
    )
    assert sorted(actions) == [("log_on", "ted"), ("serve", "ted"), ("stop", "ted")]
    # Serving it again keeps its name; a second student of the same name gets its own slug.
    assert services.student_serve(student=student, user=owner).slug == "ticket-intents-v1"
    other = services.student_serve(
        student=distilled(team, project, name="Ticket intents v1 "), user=owner
    )
    assert other.slug == "ticket-intents-v1-2"


def test_a_viewer_cannot_serve_and_a_base_model_cannot_be_served(
    team, owner, project, client_for, member_with_role
):  # type: ignore[no-untyped-def]
    student = distilled(team, project)
    assert (
        client_for(member_with_role("viewer")).post(f"/students/{student.pk}/serve/").status_code
        == 403
    )
    base = StudentModel.objects.create(
        team=team, name="SmolLM2", kind="base", source="bundled", path="models/s"
    )
    with pytest.raises(services.ServingError) as refused:
        services.student_serve(student=base, user=owner)
    assert refused.value.field == "student"


def test_the_report_shows_latency_and_throughput_measured_in_serving(
    team, owner, project, client_for
):  # type: ignore[no-untyped-def]
    served = services.student_serve(student=distilled(team, project), user=owner)
    start = served.served_at
    # 20 answered requests within 2 s (10 ms .. 200 ms), one refused, one an hour later.
    rows = [
        ServingRequest(
            served_model=served,
            status=200,
            latency_ms=10.0 * (i + 1),
            created_at=start + timedelta(milliseconds=100 * i),
        )
        for i in range(20)
    ]
    rows.append(ServingRequest(served_model=served, status=503, latency_ms=1.0, created_at=start))
    rows.append(
        ServingRequest(
            served_model=served, status=200, latency_ms=10.0, created_at=start + timedelta(hours=1)
        )
    )
    ServingRequest.objects.bulk_create(rows)

    figures = selectors.serving_figures(project=project)
    assert figures.n == 21 and figures.errors == 1
    assert figures.p50_ms == pytest.approx(100.0)  # numpy's linear interpolation over 21 values
    # The busiest stretch: 11 requests finished within 1.0 s (not 21 over the hour).
    assert figures.requests_per_s == pytest.approx(11.0)
    page = client_for(owner).get(f"/projects/{project.pk}/report/").content.decode()
    assert "Measured in serving" in page and "p50 100.0 ms" in page
