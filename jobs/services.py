"""The one place that changes a job's status, and that turns rows into worker specs.

Every transition is a conditional UPDATE on the expected current status, so two workers (or a
redelivered message and a reaper) can never both move the same job.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.cache import cache
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from jobs.models import Job, JobKind, JobStatus
from teams.models import Team

logger = logging.getLogger(__name__)

# kind -> (Celery task name, queue). Tasks are looked up by name so this module does not import
# jobs.tasks (which imports this module).
TASK_FOR_KIND: dict[str, tuple[str, str]] = {
    JobKind.IMPORT_INPUTS: ("jobs.import_inputs", "default"),
    JobKind.TEACHER_RUN: ("jobs.teacher_run", "default"),
    # Review and datasets
    JobKind.REVIEW_CHECKS: ("jobs.review_checks", "default"),
    JobKind.DATASET_FREEZE: ("jobs.dataset_freeze", "default"),
    # Evaluation and the weekend experiment (jobs.evaluation_services)
    JobKind.EVALUATION: ("jobs.evaluation", "gpu"),
    JobKind.EXPERIMENT: ("jobs.experiment", "gpu"),
    # Fine-tuning (jobs.finetune_services)
    JobKind.FINE_TUNE: ("jobs.fine_tune", "gpu"),
}


class JobCancelled(Exception):
    """Raised inside a running job when a user asked it to stop (cooperative cancel)."""


class JobStateError(Exception):
    """A transition was asked for from a status that does not allow it."""


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def job_enqueue(*, job: Job) -> None:
    """Send the job's task after the surrounding transaction commits (never before)."""
    task_name, queue = TASK_FOR_KIND[job.kind]
    job_id = job.pk

    def send() -> None:
        from distillery.celery import app

        app.send_task(task_name, args=[job_id], queue=queue)

    transaction.on_commit(send)


def job_create(
    *,
    team: Team,
    kind: str,
    user: User | None,
    project: Any = None,  # a projects.Project: jobs sits below projects, so it cannot name it
    params: dict[str, Any] | None = None,
    total: int = 0,
) -> Job:
    _, queue = TASK_FOR_KIND[kind]
    with transaction.atomic():
        job = Job.objects.create(
            team=team,
            project=project,
            kind=kind,
            queue=queue,
            params=params or {},
            progress_total=total,
            created_by=user,
        )
        job_enqueue(job=job)
    return job


def job_record_finished(
    *,
    team: Team,
    kind: str,
    user: User | None,
    project: Any = None,  # a projects.Project: jobs sits below projects, so it cannot name it
    params: dict[str, Any] | None = None,
    result: dict[str, Any] | None = None,
    done: int = 0,
) -> Job:
    """A job for work that already happened inside a request (an import of stored answers):
    created succeeded, never queued."""
    now = timezone.now()
    _, queue = TASK_FOR_KIND[kind]
    return Job.objects.create(
        team=team,
        project=project,
        kind=kind,
        queue=queue,
        status=JobStatus.SUCCEEDED,
        params=params or {},
        progress_done=done,
        progress_total=done,
        result=result or {},
        created_by=user,
        started_at=now,
        finished_at=now,
    )


def job_create_running(
    *,
    team: Team,
    kind: str,
    user: User | None,
    worker: str,
    project: Any = None,  # a projects.Project: jobs sits below projects, so it cannot name it
    params: dict[str, Any] | None = None,
    total: int = 0,
) -> Job:
    """A job that runs inline, inside another running job (`worker` names the host job): created
    running and claimed, never sent to a queue. The host heartbeats and finishes it."""
    now = timezone.now()
    _, queue = TASK_FOR_KIND[kind]
    return Job.objects.create(
        team=team,
        project=project,
        kind=kind,
        queue=queue,
        status=JobStatus.RUNNING,
        params=params or {},
        progress_total=total,
        created_by=user,
        started_at=now,
        heartbeat_at=now,
        attempts=1,
        worker=worker,
    )


def job_fail_running(*, job_ids: list[int], error: str) -> int:
    """Fail running jobs that another job supersedes (a host job retiring its dead inline job)."""
    return Job.objects.filter(pk__in=job_ids, status=JobStatus.RUNNING).update(
        status=JobStatus.FAILED, finished_at=timezone.now(), error=error[:10_000]
    )


def job_claim(*, job_id: int) -> Job | None:
    """Move a queued job to running. Returns None if someone else already has it."""
    now = timezone.now()
    claimed = Job.objects.filter(pk=job_id, status=JobStatus.QUEUED).update(
        status=JobStatus.RUNNING,
        started_at=now,
        heartbeat_at=now,
        attempts=F("attempts") + 1,
        worker=_worker_name(),
    )
    if not claimed:
        return None
    return Job.objects.get(pk=job_id)


def job_progress(
    *,
    job: Job,
    done: int | None = None,
    total: int | None = None,
    figures: dict[str, Any] | None = None,
) -> None:
    """Record progress and heartbeat; raise JobCancelled if a user asked the job to stop."""
    updates: dict[str, Any] = {"heartbeat_at": timezone.now()}
    if done is not None:
        updates["progress_done"] = job.progress_done = done
    if total is not None:
        updates["progress_total"] = job.progress_total = total
    if figures is not None:
        job.figures = {**job.figures, **figures}
        updates["figures"] = job.figures
    if not connection.in_atomic_block:
        # Inside a transaction the update would be invisible until commit and would hold the
        # job's row lock, blocking a user's cancel request; the cache below carries it instead.
        Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING).update(**updates)
    # Work done inside one transaction (an all-or-nothing import) is invisible to other
    # connections until it commits, so live figures are also published through the cache.
    cache.set(
        live_progress_key(job.pk),
        {
            "done": job.progress_done,
            "total": job.progress_total,
            "figures": job.figures,
            "heartbeat": updates["heartbeat_at"].timestamp(),
        },
        timeout=24 * 3600,
    )
    if Job.objects.filter(pk=job.pk, cancel_requested=True).exists():
        raise JobCancelled


def live_progress_key(job_id: int) -> str:
    return f"job-live:{job_id}"


def job_live_view(job: Job) -> Job:
    """The job with its freshest progress (the cache may be ahead of the row while it runs)."""
    if job.status == JobStatus.RUNNING:
        live = cache.get(live_progress_key(job.pk))
        if live:
            job.progress_done = max(job.progress_done, live["done"])
            job.progress_total = max(job.progress_total, live["total"])
            job.figures = {**job.figures, **live.get("figures", {})}
    return job


def _finish(*, job: Job, status: str, **fields: Any) -> bool:
    now = timezone.now()
    moved = Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING).update(
        status=status, finished_at=now, heartbeat_at=now, **fields
    )
    job.refresh_from_db()
    return bool(moved)


def job_succeed(*, job: Job, result: dict[str, Any] | None = None) -> bool:
    fields: dict[str, Any] = {"result": result or {}}
    if job.progress_total:
        fields["progress_done"] = fields["progress_total"] = job.progress_total
    return _finish(job=job, status=JobStatus.SUCCEEDED, **fields)


def job_fail(*, job: Job, error: str) -> bool:
    return _finish(job=job, status=JobStatus.FAILED, error=error[:10_000])


def job_mark_cancelled(*, job: Job) -> bool:
    """Called by the running task once it has stopped cooperatively."""
    return _finish(job=job, status=JobStatus.CANCELLED)


def job_request_cancel(*, job: Job) -> Job:
    """A queued or paused job is cancelled at once; a running one is asked to stop at its next
    step."""
    now = timezone.now()
    if Job.objects.filter(pk=job.pk, status__in=(JobStatus.QUEUED, JobStatus.PAUSED)).update(
        status=JobStatus.CANCELLED, finished_at=now, cancel_requested=True
    ):
        job.refresh_from_db()
        return job
    Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING).update(cancel_requested=True)
    job.refresh_from_db()
    return job


def jobs_reap_stale(
    *, stale_after_s: int | None = None, max_attempts: int | None = None
) -> dict[str, int]:
    """Re-queue (or fail, after too many attempts) running jobs whose worker stopped heartbeating."""
    stale_after_s = stale_after_s or settings.JOB_HEARTBEAT_STALE_AFTER_S
    max_attempts = max_attempts or settings.JOB_MAX_ATTEMPTS
    cutoff = timezone.now() - timedelta(seconds=stale_after_s)
    requeued = failed = 0
    for job in Job.objects.filter(status=JobStatus.RUNNING, heartbeat_at__lt=cutoff):
        live = cache.get(live_progress_key(job.pk)) or {}
        if live.get("heartbeat", 0) >= cutoff.timestamp():
            continue  # alive, working inside a transaction whose row updates are not visible yet
        if job.cancel_requested:
            if Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING).update(
                status=JobStatus.CANCELLED, finished_at=timezone.now()
            ):
                failed += 1
            continue
        if job.attempts >= max_attempts:
            if Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING).update(
                status=JobStatus.FAILED,
                finished_at=timezone.now(),
                error=(
                    f"the worker stopped responding (no heartbeat for {stale_after_s} s) "
                    f"and the job already ran {job.attempts} times"
                ),
            ):
                failed += 1
            continue
        with transaction.atomic():
            if Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING).update(
                status=JobStatus.QUEUED, worker=""
            ):
                logger.warning("job %s: no heartbeat since %s, re-queued", job.pk, job.heartbeat_at)
                job_enqueue(job=job)
                requeued += 1
    return {"requeued": requeued, "failed": failed}


# Pause and resume (teacher runs) --------------------------------------------------------------


class JobPaused(Exception):
    """Raised inside a running job that stopped on purpose and can be resumed later (a user's
    pause, a budget cap). The job becomes "paused"; resuming re-queues it."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


class JobHandedOff(Exception):
    """Raised by a task whose job goes on in another, scheduled task (a provider batch that is
    polled every few minutes): the job stays running, and that task heartbeats and finishes it."""


def job_pause_queued(*, job: Job) -> bool:
    """A queued job that no worker has claimed yet pauses at once (queued → paused)."""
    moved = Job.objects.filter(pk=job.pk, status=JobStatus.QUEUED).update(
        status=JobStatus.PAUSED, finished_at=timezone.now()
    )
    return bool(moved)


def job_mark_paused(*, job: Job) -> bool:
    """Called by the running task once it has stopped (running → paused)."""
    now = timezone.now()
    moved = Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING).update(
        status=JobStatus.PAUSED, heartbeat_at=now, finished_at=now
    )
    job.refresh_from_db()
    return bool(moved)


def job_resume(*, job: Job, from_statuses: tuple[str, ...] = (JobStatus.PAUSED,)) -> bool:
    """Re-queue a stopped job (a new claim picks it up). Attempts restart from zero: the reaper's
    limit is about one stretch of work, not about how often a user resumed."""
    with transaction.atomic():
        moved = Job.objects.filter(pk=job.pk, status__in=from_statuses).update(
            status=JobStatus.QUEUED,
            cancel_requested=False,
            finished_at=None,
            error="",
            attempts=0,
            worker="",
        )
        if moved:
            job_enqueue(job=job)
    job.refresh_from_db()
    return bool(moved)
