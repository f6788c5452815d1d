"""/api/v1 teacher runs: estimate, start with a budget cap (idempotent), progress, pause / resume /
cancel — the run page's form and services, a real worker and the loopback fake provider."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db.models import Sum

from jobs.models import Job, JobStatus
from teachers.models import LedgerEntry, TeacherOutput, TeacherRun
from tests.conftest import wait_until
from tests.factories import MembershipFactory
from tests.fakes.provider_server import FakeAnswer
from tests.helpers.api import Api, token_for
from tests.teachers.teacher_support import LABELS, label_project, openai_credential


def _owner_api(team, owner):  # type: ignore[no-untyped-def]
    membership = owner.memberships.get(team=team)
    return Api(token_for(membership))


def _wait_for_job(api: Api, job_id: int) -> dict:  # type: ignore[type-arg]
    def ended():  # type: ignore[no-untyped-def]
        body = api.get(f"/api/v1/jobs/{job_id}").json()
        return body if body["is_terminal"] or body["status"] == "paused" else None

    return wait_until(ended, timeout=120, message="the teacher run's job to stop")


def test_estimate_then_a_retried_start_runs_once_on_a_worker(
    team, owner, fake_provider, celery_worker
):  # type: ignore[no-untyped-def]
    project = label_project(team, owner, n=6)
    openai_credential(team, owner, fake_provider)
    api = _owner_api(team, owner)
    settings = {"credential": "prod-openai", "model": "gpt-4o-mini", "budget_usd": "5"}

    estimate = api.post(f"/api/v1/projects/{project.slug}/teacher-runs/estimate", settings)
    assert estimate.status_code == 200, estimate.content
    assert estimate.json()["calls"] == 6 and estimate.json()["prompt_tokens"] > 0
    assert Decimal(estimate.json()["usd"]) > 0
    assert not TeacherRun.objects.exists()  # an estimate starts nothing

    url = f"/api/v1/projects/{project.slug}/teacher-runs"
    first = api.post(url, settings, headers={"Idempotency-Key": "nightly-2026-12-05"})
    assert first.status_code == 201, first.content
    retried = api.post(url, settings, headers={"Idempotency-Key": "nightly-2026-12-05"})
    assert retried.status_code == 201 and retried.json() == first.json()
    assert TeacherRun.objects.count() == 1 and Job.objects.count() == 1
    started = first.json()
    assert Decimal(started["run"]["budget_usd"]) == 5
    assert started["run"]["credential"] == "prod-openai" and started["run"]["inputs"] == 6
    assert started["job"]["id"] == started["run"]["job_id"]

    job = _wait_for_job(api, started["job"]["id"])
    assert job["status"] == "succeeded", job["error"]
    run = TeacherRun.objects.get()
    ledger = LedgerEntry.objects.filter(run=run).aggregate(s=Sum("cost_usd"))["s"]
    assert Decimal(job["cost_usd"]) == run.cost_usd == ledger > 0
    detail = api.get(f"/api/v1/teacher-runs/{run.pk}").json()
    progress = detail["progress"]
    assert progress["status"] == "succeeded" and progress["done"] == progress["total"] == 6
    assert progress["calls"] == 6 and Decimal(progress["cost_usd"]) == ledger
    assert fake_provider.count("openai.chat") == 6
    listed = api.get(url).json()["results"]
    assert [(r["id"], r["status"]) for r in listed] == [(run.pk, "succeeded")]


def test_the_budget_cap_pauses_the_run_and_cancel_ends_it(
    team, owner, fake_provider, celery_worker
):  # type: ignore[no-untyped-def]
    # Each answer is 5,000 output tokens ($0.003): a $0.01 cap stops the run after a few calls.
    fake_provider.responder = lambda req: FakeAnswer(text=LABELS[0], output_tokens=5000)
    project = label_project(team, owner, n=10)
    openai_credential(team, owner, fake_provider)
    api = _owner_api(team, owner)
    started = api.post(
        f"/api/v1/projects/{project.slug}/teacher-runs",
        {
            "credential": "prod-openai",
            "model": "gpt-4o-mini",
            "max_tokens": 10_000,
            "concurrency": 2,
            "budget_usd": "0.01",
        },
    ).json()
    job = _wait_for_job(api, started["job"]["id"])
    assert job["status"] == "paused"
    run_id = started["run"]["id"]
    detail = api.get(f"/api/v1/teacher-runs/{run_id}").json()
    assert detail["progress"]["stopped_reason"].startswith("budget")
    assert Decimal(detail["progress"]["cost_usd"]) <= Decimal("0.01")
    assert 1 <= detail["progress"]["done"] < 10
    cancelled = api.post(f"/api/v1/teacher-runs/{run_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    refused = api.post(f"/api/v1/teacher-runs/{run_id}/resume")
    assert refused.status_code == 409
    assert "only a paused or failed run can be resumed" in refused.json()["detail"]


@pytest.mark.django_db
def test_pause_and_resume_a_queued_run(team, owner, django_capture_on_commit_callbacks):  # type: ignore[no-untyped-def]
    project = label_project(team, owner, n=3)
    from teams import services as team_services

    team_services.credential_create(
        team=team, user=owner, name="prod", provider="openai", api_key="sk-test-12345678"
    )
    api = _owner_api(team, owner)
    with django_capture_on_commit_callbacks(execute=False):  # no worker: the run stays queued
        started = api.post(
            f"/api/v1/projects/{project.slug}/teacher-runs",
            {"credential": "prod", "model": "gpt-4o-mini"},
        ).json()
        run_id = started["run"]["id"]
        paused = api.post(f"/api/v1/teacher-runs/{run_id}/pause").json()
        assert paused["status"] == "paused" and paused["progress"]["pause_requested"]
        resumed = api.post(f"/api/v1/teacher-runs/{run_id}/resume").json()
    assert resumed["status"] == "queued" and not resumed["progress"]["pause_requested"]
    assert Job.objects.get(pk=started["job"]["id"]).status == JobStatus.QUEUED


@pytest.mark.django_db
def test_settings_the_page_refuses_are_refused_naming_the_field(team, owner):  # type: ignore[no-untyped-def]
    project = label_project(team, owner, n=3)
    from teams import services as team_services

    team_services.credential_create(
        team=team, user=owner, name="prod", provider="openai", api_key="sk-test-12345678"
    )
    api = _owner_api(team, owner)
    url = f"/api/v1/projects/{project.slug}/teacher-runs"
    no_model = api.post(url, {"credential": "prod"})
    assert no_model.status_code == 400
    assert no_model.json()["errors"] == [
        {"field": "model", "message": "name the model, e.g. gpt-4o-mini"}
    ]
    unknown = api.post(url, {"credential": "staging", "model": "gpt-4o-mini"})
    assert unknown.status_code == 400 and unknown.json()["errors"][0]["field"] == "credential"
    no_size = api.post(url, {"credential": "prod", "model": "gpt-4o-mini", "selection": "sample"})
    assert no_size.status_code == 400 and no_size.json()["errors"][0]["field"] == "sample_size"
    too_hot = api.post(url, {"credential": "prod", "model": "gpt-4o-mini", "temperature": 5})
    assert too_hot.status_code == 400 and too_hot.json()["errors"][0]["field"] == "temperature"
    nothing = api.post(
        url,
        {"credential": "prod", "model": "gpt-4o-mini", "selection": "filter", "filter_text": "zz"},
    )
    assert nothing.status_code == 400 and "no inputs match" in nothing.json()["detail"]
    reviewer = Api(token_for(MembershipFactory(team=team, role="reviewer")))
    assert reviewer.post(url, {"credential": "prod", "model": "gpt-4o-mini"}).status_code == 403
    assert not TeacherRun.objects.exists() and not TeacherOutput.objects.exists()
