"""Synthetic inputs: a teacher writes new inputs in the style of seed rows, through the real
openai SDK against the loopback provider (its ``synthetic_inputs_responder``) and a real Celery
worker; every call is in the ledger; duplicates of the project's inputs are dropped; the new rows
are marked synthetic; bad settings, junk answers and a cancel write nothing."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from django.urls import reverse

from jobs.models import Job
from projects.models import InputRow
from teachers.models import LedgerEntry, LedgerStatus, TeacherRun
from tests.conftest import wait_until
from tests.fakes.responders import synthetic_inputs_responder
from tests.teachers.teacher_support import label_project, openai_credential


def _new_url(project: Any) -> str:
    return reverse("teachers:synthesis_new", args=[project.pk])


def _form(credential: Any, seeds: list[int], **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "credential": str(credential.pk),
        "model": "gpt-4o-mini",
        "seed_inputs": [str(pk) for pk in seeds],
        "count": "25",
        "per_call": "10",
        "temperature": "1.0",
        "max_tokens": "2000",
        "concurrency": "2",
    }
    data.update(overrides)
    return data


def _finished(job_id: int, statuses: tuple[str, ...] = ("succeeded", "failed")) -> Job:
    wait_until(
        lambda: Job.objects.get(pk=job_id).status in statuses,
        timeout=90,
        message=f"synthesis job #{job_id}",
    )
    return Job.objects.get(pk=job_id)


@pytest.mark.slow
def test_new_inputs_in_the_style_of_seed_rows_through_a_real_worker(
    team, owner, celery_worker, fake_provider_factory, client_for
):  # type: ignore[no-untyped-def]
    server = fake_provider_factory(responder=synthetic_inputs_responder)
    credential = openai_credential(team, owner, server)
    project = label_project(team, owner, n=5)
    seeds = list(project.inputs.order_by("pk").values_list("pk", flat=True))
    client = client_for(owner)
    page = client.get(_new_url(project)).content.decode()
    assert f"#{seeds[0]}: Ticket 0: where is my new card?" in page
    assert "lost_or_stolen_card (0 approved)" in page  # a short class to ask for

    data = _form(credential, seeds, topics="refunds\nlost cards", label_targets=["top_up_failed"])
    estimate = client.post(_new_url(project), {**data, "action": "estimate"})
    assert estimate.status_code == 200
    html = estimate.content.decode()
    assert 'data-testid="estimate-calls">3<' in html
    assert not Job.objects.exists()

    started = client.post(_new_url(project), {**data, "action": "start"})
    run = TeacherRun.objects.get(mode="synthetic")
    assert started.status_code == 302
    assert started["Location"] == reverse("jobs:job_detail", args=[run.job_id])
    job = _finished(run.job_id)
    assert job.status == "succeeded", job.error + "".join(celery_worker.log[-30:])
    # 25 written by the teacher; each call's first copies a seed row (exact duplicate of an
    # existing input) and its second is that row plus a word (near duplicate): 6 dropped.
    result = job.result
    assert (result["generated"], result["exact_duplicates"], result["near_duplicates"]) == (
        25,
        3,
        3,
    )
    assert result["added"] == 19 and result["unreadable_answers"] == 0
    added = InputRow.objects.filter(project=project, synthetic=True)
    assert added.count() == 19 and set(added.values_list("import_job", flat=True)) == {job.pk}
    assert InputRow.objects.filter(project=project, synthetic=False).count() == 5

    # Metered like a teacher run: one ledger row per call, the run's cost is the ledger's sum.
    run.refresh_from_db()
    ledger = LedgerEntry.objects.filter(run=run)
    assert ledger.count() == 3 and set(ledger.values_list("status", flat=True)) == {
        LedgerStatus.COMPLETED
    }
    assert run.calls_made == 3 and run.cost_usd > 0
    assert run.cost_usd == sum((e.cost_usd for e in ledger), Decimal(0))
    assert Decimal(result["cost_usd"]) == run.cost_usd

    # Each call asked for JSON (structured output), with its topic and the short label.
    bodies = [r.body or {} for r in server.generation_requests()]
    assert len(bodies) == 3
    assert all(b["response_format"]["type"] == "json_schema" for b in bodies)
    prompts = [json.dumps(b["messages"]) for b in bodies]
    assert sum("Topic: refunds." in p for p in prompts) == 2
    assert sum("Topic: lost cards." in p for p in prompts) == 1
    assert all("the label 'top_up_failed'" in p for p in prompts)

    # Marked synthetic where inputs show.
    job_page = client.get(reverse("jobs:job_detail", args=[job.pk])).content.decode()
    assert "See the synthetic inputs" in job_page
    listing = client.get(reverse("projects:inputs_list", args=[project.pk]) + "?synthetic=1")
    listing_html = listing.content.decode()
    assert "19 synthetic inputs" in listing_html
    assert listing_html.count('data-testid="synthetic-badge"') == 19
    one = added.first()
    assert one is not None
    detail = client.get(reverse("projects:input_detail", args=[project.pk, one.pk]))
    assert "Written by a teacher" in detail.content.decode()


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"seed_inputs": []}, "seed_inputs", "pick at least one seed row"),
        ({"budget_usd": "0"}, "budget_usd", "a budget cap must be more than $0"),
        ({"seed_ids": "999999"}, "seed_inputs", "not inputs of this project"),
        ({"seed_ids": "abc"}, "seed_ids", "'abc' is not an input number"),
        ({"count": "6000"}, "count", "between 1 and 5,000"),
        ({"model": "unknown-model-x"}, "model", "no price for model"),
    ],
)
def test_bad_settings_are_refused_by_field_and_nothing_starts(
    team, owner, fake_provider, client_for, overrides, field, message
):  # type: ignore[no-untyped-def]
    credential = openai_credential(team, owner, fake_provider)
    project = label_project(team, owner, n=3)
    seeds = list(project.inputs.values_list("pk", flat=True))
    response = client_for(owner).post(
        _new_url(project), {**_form(credential, seeds, **overrides), "action": "start"}
    )
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert field in errors, errors
    assert message in " ".join(errors[field])
    assert not Job.objects.exists() and not TeacherRun.objects.exists()
    assert not fake_provider.generation_requests()


@pytest.mark.slow
def test_junk_answers_fail_the_job_with_what_came_back_and_write_nothing(
    team, owner, celery_worker, fake_provider_factory, client_for
):  # type: ignore[no-untyped-def]
    server = fake_provider_factory(responder=lambda _request: "Sure! Here are some ideas: ...")
    credential = openai_credential(team, owner, server)
    project = label_project(team, owner, n=3)
    seeds = list(project.inputs.values_list("pk", flat=True))
    client_for(owner).post(_new_url(project), {**_form(credential, seeds), "action": "start"})
    run = TeacherRun.objects.get(mode="synthetic")
    job = _finished(run.job_id)
    assert job.status == "failed"
    assert "no new input could be read from the teacher's 3 answer(s); nothing was added" in (
        job.error
    )
    assert "the answer is not JSON: 'Sure! Here are some ideas: ...'" in job.error
    assert not InputRow.objects.filter(synthetic=True).exists()
    # The calls were made and paid: they are in the ledger all the same.
    assert LedgerEntry.objects.filter(run=run, status=LedgerStatus.COMPLETED).count() == 3


@pytest.mark.slow
def test_a_cancelled_synthesis_writes_nothing(
    team, owner, celery_worker, fake_provider_factory, client_for
):  # type: ignore[no-untyped-def]
    server = fake_provider_factory(responder=synthetic_inputs_responder, latency_s=1.0)
    credential = openai_credential(team, owner, server)
    project = label_project(team, owner, n=3)
    seeds = list(project.inputs.values_list("pk", flat=True))
    client = client_for(owner)
    data = _form(credential, seeds, count="40", per_call="2", concurrency="1")
    client.post(_new_url(project), {**data, "action": "start"})
    run = TeacherRun.objects.get(mode="synthetic")
    wait_until(lambda: LedgerEntry.objects.filter(run=run).exists(), message="a first call")
    client.post(reverse("jobs:job_cancel", args=[run.job_id]))
    job = _finished(run.job_id, ("cancelled", "succeeded", "failed"))
    assert job.status == "cancelled"
    assert not InputRow.objects.filter(synthetic=True).exists()
    assert 1 <= LedgerEntry.objects.filter(run=run).count() < 20


@pytest.mark.slow
def test_the_budget_cap_stops_before_a_call_that_could_exceed_it(
    team, owner, celery_worker, fake_provider_factory, client_for
):  # type: ignore[no-untyped-def]
    server = fake_provider_factory(responder=synthetic_inputs_responder)
    credential = openai_credential(team, owner, server)
    project = label_project(team, owner, n=3)
    seeds = list(project.inputs.values_list("pk", flat=True))
    client = client_for(owner)
    # One call's worst case (its prompt + 2,000 output tokens of gpt-4o-mini) is ~$0.0013.
    data = _form(credential, seeds, budget_usd="0.0005")
    estimate = client.post(_new_url(project), {**data, "action": "estimate"}).content.decode()
    assert "$0.0005 — the job stops before it would spend more" in estimate
    client.post(_new_url(project), {**data, "action": "start"})
    run = TeacherRun.objects.get(mode="synthetic")
    job = _finished(run.job_id)
    assert job.status == "failed"
    assert "the cap of $0.0005 would be exceeded" in job.error
    assert "nothing was added" in job.error
    assert not server.generation_requests() and not LedgerEntry.objects.filter(run=run).exists()
    assert not InputRow.objects.filter(synthetic=True).exists()
    # The run is listed with the teacher runs, as what it is.
    runs = client.get(reverse("teachers:teacher_runs", args=[project.pk])).content.decode()
    assert "Synthetic inputs" in runs
    detail = client.get(reverse("teachers:teacher_run", args=[run.pk]))
    assert (
        detail.status_code == 200
        and "new inputs in the style of 3 seed rows" in detail.content.decode()
    )
