"""Starting evaluations and weekend experiments from their forms, and who may do it."""

from __future__ import annotations

import pytest

from evaluations.models import Evaluation
from finetunes.models import StudentModel
from teams.models import Role
from tests.evaluations.evaluation_support import (
    TEXTS,
    approve_all,
    freeze,
    label_project_with_references,
    place_model,
)
from tests.factories import TeacherOutputFactory
from tests.teachers.teacher_support import openai_credential

pytestmark = pytest.mark.django_db


@pytest.fixture
def ready(team, owner, tiny_model_dir):  # type: ignore[no-untyped-def]
    """A project with approved teacher answers, a frozen version and registered students."""
    project = label_project_with_references(team, owner)
    for row, (_, label) in zip(project.inputs.order_by("id"), TEXTS, strict=True):
        TeacherOutputFactory(project=project, input=row, raw_text=label)
    approve_all(project)
    version = freeze(project, owner)
    base = StudentModel.objects.create(
        team=team,
        name="tiny base",
        kind="base",
        source="local",
        path=place_model(tiny_model_dir, "tiny-pages-base"),
    )
    distilled = StudentModel.objects.create(
        team=team,
        name="tiny distilled",
        kind="distilled",
        source="fine_tune",
        path=place_model(tiny_model_dir, "tiny-pages-distilled"),
    )
    return project, version, base, distilled


def test_only_engineers_and_owners_start_evaluations_and_experiments(
    client, member_with_role, ready
):  # type: ignore[no-untyped-def]
    project, version, base, distilled = ready
    form = {
        "dataset_version": version.pk,
        "teacher_source": "stored",
        "base_model": base.pk,
        "distilled": [distilled.pk],
        "batch_size": 16,
        "latency_requests": 5,
    }
    experiment = {
        "teacher_source": "stored",
        "base_model": base.pk,
        "sample_size": 5,
        "seed": 0,
        "batch_size": 16,
        "latency_requests": 2,
    }
    for role in (Role.VIEWER, Role.REVIEWER):
        client.force_login(member_with_role(role))
        assert client.get(f"/projects/{project.pk}/evaluations/new/").status_code == 403
        assert client.post(f"/projects/{project.pk}/evaluations/new/", form).status_code == 403
        page = client.get(f"/projects/{project.pk}/experiment/")
        assert page.status_code == 200 and b"experiment-form" not in page.content
        assert client.post(f"/projects/{project.pk}/experiment/", experiment).status_code == 403
        assert client.get(f"/projects/{project.pk}/evaluations/").status_code == 200
    assert Evaluation.objects.count() == 0

    client.force_login(member_with_role(Role.ENGINEER))
    response = client.post(f"/projects/{project.pk}/evaluations/new/", form)
    assert response.status_code == 302
    evaluation = Evaluation.objects.get(kind="evaluation")
    assert response["Location"] == f"/evaluations/{evaluation.pk}/"
    assert [c.role for c in evaluation.candidates.order_by("position")] == [
        "teacher",
        "base",
        "distilled",
    ]
    assert evaluation.candidates.get(role="distilled").name == "Distilled student (tiny distilled)"
    assert evaluation.examples.count() == version.items.filter(split="test").count()
    assert evaluation.job.status == "queued" and evaluation.job.queue == "gpu"

    response = client.post(f"/projects/{project.pk}/experiment/", experiment)
    assert response.status_code == 302
    weekend = Evaluation.objects.get(kind="experiment")
    assert weekend.examples.count() == 5 and weekend.job.kind == "experiment"
    page = client.get(f"/projects/{project.pk}/experiment/").content.decode()
    assert 'data-testid="experiment-status">Queued<' in page


def test_form_errors_name_the_field(client_for, owner, team, ready, fake_provider):  # type: ignore[no-untyped-def]
    project, version, base, _ = ready
    credential = openai_credential(team, owner, fake_provider)
    client = client_for(owner)
    response = client.post(
        f"/projects/{project.pk}/evaluations/new/",
        {
            "dataset_version": version.pk,
            "teacher_source": "stored",
            "endpoint_credential": credential.pk,
            "batch_size": 16,
            "latency_requests": 5,
        },
    )
    assert response.status_code == 400
    assert b'data-testid="error-endpoint_model"' in response.content
    # No student at all: the service says so.
    response = client.post(
        f"/projects/{project.pk}/evaluations/new/",
        {
            "dataset_version": version.pk,
            "teacher_source": "stored",
            "batch_size": 16,
            "latency_requests": 5,
        },
    )
    assert response.status_code == 400 and b"at least one student" in response.content
    # A weekend experiment that calls a teacher needs the credential and the model.
    response = client.post(
        f"/projects/{project.pk}/experiment/",
        {
            "teacher_source": "call",
            "base_model": base.pk,
            "sample_size": 5,
            "seed": 0,
            "batch_size": 16,
            "latency_requests": 2,
        },
    )
    assert response.status_code == 400
    assert b'data-testid="error-teacher_credential"' in response.content
    assert b'data-testid="error-teacher_model"' in response.content
    assert Evaluation.objects.count() == 0


def test_the_only_version_and_base_model_start_chosen(client_for, owner, ready):  # type: ignore[no-untyped-def]
    from django.urls import reverse

    project, version, base, _ = ready
    page = client_for(owner).get(reverse("evaluations:evaluation_new", args=[project.pk]))
    form = page.context["form"]
    assert form["dataset_version"].value() == version.pk
    assert form["base_model"].value() == base.pk
