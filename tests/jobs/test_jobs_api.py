"""GET /api/v1/jobs (filters, cursor pages), GET /api/v1/jobs/{id}, POST …/cancel."""

from __future__ import annotations

import pytest

from jobs.models import JobKind, JobStatus
from jobs.services import job_create
from tests.factories import MembershipFactory, ProjectFactory
from tests.helpers.api import Api, token_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def setup(django_capture_on_commit_callbacks):  # type: ignore[no-untyped-def]
    owner = MembershipFactory()
    first = ProjectFactory(team=owner.team, name="Intents")
    second = ProjectFactory(team=owner.team, name="Other")
    with django_capture_on_commit_callbacks(execute=False):  # no broker message: stays queued
        jobs = [
            job_create(team=owner.team, project=first, kind=JobKind.IMPORT_INPUTS, user=owner.user),
            job_create(team=owner.team, project=first, kind=JobKind.REVIEW_CHECKS, user=owner.user),
            job_create(
                team=owner.team, project=second, kind=JobKind.IMPORT_INPUTS, user=owner.user
            ),
        ]
    return owner, first, jobs


def test_jobs_are_listed_newest_first_and_filtered(setup):  # type: ignore[no-untyped-def]
    owner, first, jobs = setup
    api = Api(token_for(owner))
    everything = api.get("/api/v1/jobs").json()
    assert [j["id"] for j in everything["results"]] == [j.pk for j in reversed(jobs)]
    mine = api.get("/api/v1/jobs", project=first.slug, kind="import_inputs").json()
    assert [j["id"] for j in mine["results"]] == [jobs[0].pk]
    assert api.get("/api/v1/jobs", status="running").json()["results"] == []
    page = api.get("/api/v1/jobs", page_size=2).json()
    assert len(page["results"]) == 2 and page["next"]
    rest = api.client.get(page["next"], headers=api._headers(None)).json()
    assert [j["id"] for j in rest["results"]] == [jobs[0].pk]
    bad = api.get("/api/v1/jobs", status="done")
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "status"


def test_a_job_shows_status_progress_and_who_started_it(setup):  # type: ignore[no-untyped-def]
    owner, first, jobs = setup
    body = Api(token_for(owner)).get(f"/api/v1/jobs/{jobs[0].pk}").json()
    assert body["status"] == "queued" and body["is_terminal"] is False
    assert body["project"] == first.slug and body["created_by"] == owner.user.username
    assert body["cost_usd"] is None and body["error"] == "" and body["result"] == {}


def test_cancel_a_queued_job_and_a_second_cancel_is_a_conflict(setup):  # type: ignore[no-untyped-def]
    owner, _first, jobs = setup
    api = Api(token_for(owner))
    response = api.post(f"/api/v1/jobs/{jobs[0].pk}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled" and response.json()["is_terminal"]
    jobs[0].refresh_from_db()
    assert jobs[0].status == JobStatus.CANCELLED
    again = api.post(f"/api/v1/jobs/{jobs[0].pk}/cancel")
    assert again.status_code == 409 and "already ended" in again.json()["detail"]


def test_a_reviewer_reads_jobs_but_may_not_cancel(setup):  # type: ignore[no-untyped-def]
    owner, _first, jobs = setup
    reviewer = MembershipFactory(team=owner.team, role="reviewer")
    api = Api(token_for(reviewer, scopes=("read", "write")))  # a reviewer's role has no "write"
    assert api.get(f"/api/v1/jobs/{jobs[1].pk}").status_code == 200
    refused = api.post(f"/api/v1/jobs/{jobs[1].pk}/cancel")
    assert refused.status_code == 403
    jobs[1].refresh_from_db()
    assert jobs[1].status == JobStatus.QUEUED
