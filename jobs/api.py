"""/api/v1/jobs: the status of anything long (imports, teacher runs, fine-tunes, evaluations…).

The CLI's ``--wait`` polls ``GET /jobs/{job_id}`` until ``is_terminal`` is true; a failed job
carries its ``error``. Progress is the freshest the job page shows (jobs.services.job_live_view).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db.models import F, QuerySet
from django.http import HttpRequest
from ninja import Router, Schema
from ninja.pagination import paginate

from jobs import services
from jobs.models import Job, JobKind, JobStatus
from teams.api_kit import PAGE, ApiError, Page, auth_of, require_permission, team_object

router = Router(tags=["jobs"])


class JobOut(Schema):
    id: int
    kind: str
    status: str
    is_terminal: bool
    project: str | None  # the project's slug
    progress_done: int
    progress_total: int
    percent: int
    #: What the job has spent so far (teacher runs: the ledger's running total); null for jobs
    #: that spend nothing.
    cost_usd: Decimal | None
    figures: dict[str, Any]
    error: str
    result: dict[str, Any]
    cancel_requested: bool
    created_by: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @staticmethod
    def resolve_project(obj: Job) -> str | None:
        project = obj.project
        return project.slug if project is not None else None

    @staticmethod
    def resolve_cost_usd(obj: Job) -> Decimal | None:
        return getattr(obj, "spent_usd", None)

    @staticmethod
    def resolve_created_by(obj: Job) -> str | None:
        user = obj.created_by
        return user.username if user is not None else None


def jobs_with_details(queryset: QuerySet[Job]) -> QuerySet[Job]:
    """Jobs with what JobOut shows, in one query (the spend is the teacher run's stored total:
    jobs sits below teachers, so it reads the column by name rather than importing the model)."""
    return queryset.select_related("project", "created_by").annotate(
        spent_usd=F("teacher_run__cost_usd")
    )


def job_out(job: Job) -> Job:
    """A job as the API answers it: reloaded with its details and live progress."""
    return services.job_live_view(jobs_with_details(Job.objects.filter(pk=job.pk)).get())


def _job_of(request: HttpRequest, job_id: int, *, permission: str = "read") -> Job:
    return team_object(
        jobs_with_details(Job.objects.all()), auth_of(request), permission=permission, pk=job_id
    )


@router.get("", response=list[JobOut], summary="List the team's jobs, newest first")
@paginate(Page, **PAGE)
def list_jobs(
    request: HttpRequest, project: str = "", kind: str = "", status: str = ""
) -> QuerySet[Job]:
    """Filter by ``project`` (its slug), ``kind`` (import_inputs, teacher_run, …) and
    ``status`` (queued, running, succeeded, failed, cancelled, paused)."""
    auth = auth_of(request)
    require_permission(auth, "read")
    errors = []
    if kind and kind not in JobKind.values:
        errors.append({"field": "kind", "message": f"one of {', '.join(JobKind.values)}"})
    if status and status not in JobStatus.values:
        errors.append({"field": "status", "message": f"one of {', '.join(JobStatus.values)}"})
    if errors:
        raise ApiError(400, "unknown filter value", errors=errors)
    jobs = jobs_with_details(Job.objects.filter(team=auth.team))
    if project:
        jobs = jobs.filter(project__slug=project)
    if kind:
        jobs = jobs.filter(kind=kind)
    if status:
        jobs = jobs.filter(status=status)
    return jobs


@router.get("/{job_id}", response=JobOut, summary="A job: status, progress, cost, error, result")
def get_job(request: HttpRequest, job_id: int) -> Job:
    return services.job_live_view(_job_of(request, job_id))


@router.post(
    "/{job_id}/cancel",
    response=JobOut,
    summary="Cancel a job (queued/paused: at once; running: at its next step)",
)
def cancel_job(request: HttpRequest, job_id: int) -> Job:
    job = _job_of(request, job_id, permission="write")
    if job.is_terminal:
        raise ApiError(409, f"the job already ended ({job.status}); nothing to cancel")
    services.job_request_cancel(job=job)
    return job_out(job)
