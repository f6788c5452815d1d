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
    JobKind.SYNTHESIZE_INPUTS: ("jobs.synthesize_inputs", "default"),
    # Review and datasets
    JobKind.REVIEW_CHECKS: ("jobs.review_checks", "default"),
    JobKind.DATASET_FREEZE: ("jobs.dataset_freeze", "default"),
    # Evaluation and the weekend experiment (jobs.evaluation_services)
    JobKind.EVALUATION: ("jobs.evaluation", "gpu"),
    JobKind.EXPERIMENT: ("jobs.experiment", "gpu"),
    # Fine-tuning (jobs.finetune_services)
    JobKind.FINE_TUNE: ("jobs.fine_tune", "gpu"),
    # Export bundles (GGUF conversion, quantisation and the quant check: heavy, on gpu workers)
    JobKind.EXPORT_BUNDLE: ("jobs.export_bundle", "gpu"),
}


class JobCancelled(Exception):
    """Raised inside a running job when a user asked it to stop (cooperative cancel)."""


class JobStateError(Exception):
    """A transition was asked for from a status that does not allow it."""


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _send(job_id: int, kind: str, *, countdown: float | None = None) -> bool:
    """Hand the job's message to the broker. A broker that can't be reached leaves the job
    queued with the reason on it (pages show it); the reaper sends it when the broker is back."""
    from distillery.celery import app
    from distillery.outages import broker_errors

    task_name, queue = TASK_FOR_KIND[kind]
    try:
        app.send_task(task_name, args=[job_id], queue=queue, countdown=countdown)
    except broker_errors() as exc:
        logger.warning("job %s: could not send to the broker: %s", job_id, exc)
        Job.objects.filter(pk=job_id, status=JobStatus.QUEUED).update(
            sent_at=None,
            send_error=f"not sent to a worker yet: the job queue (broker) is unreachable "
            f"({exc.__class__.__name__}); it is sent when the broker is back",
        )
        return False
    Job.objects.filter(pk=job_id).update(sent_at=timezone.now(), send_error="")
    return True


def job_enqueue(*, job: Job, countdown: float | None = None) -> None:
    """Send the job's task after the surrounding transaction commits (never before)."""
    job_id, kind = job.pk, job.kind
    transaction.on_commit(lambda: _send(job_id, kind, countdown=countdown))


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
        worker=worker_name(),
        progress_at_claim=F("progress_done"),
        waiting={},
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


def job_heartbeat(*, job_id: int) -> None:
    """The job's process is alive (its heartbeat thread calls this on a timer)."""
    now = timezone.now()
    Job.objects.filter(pk=job_id, status=JobStatus.RUNNING).update(heartbeat_at=now)
    live = cache.get(live_progress_key(job_id))
    if live:
        cache.set(live_progress_key(job_id), {**live, "heartbeat": now.timestamp()}, 24 * 3600)


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


def _made_progress(job: Job) -> bool:
    # Committed progress only: work done inside a transaction that died with the worker (an
    # all-or-nothing import) was not progress.
    return job.progress_done > job.progress_at_claim


def _reap_one(job: Job, *, stale_after_s: int, max_attempts: int) -> str:
    """What the reaper did with one running job whose heartbeat is stale."""
    if job.cancel_requested:
        moved = Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING).update(
            status=JobStatus.CANCELLED, finished_at=timezone.now()
        )
        return "failed" if moved else ""
    # An attempt that moved the job on does not count: a job killed again and again while it
    # works still finishes; only attempts that die without progress, in a row, use up the limit.
    stalled = 0 if _made_progress(job) else job.stalled_attempts + 1
    if stalled >= max_attempts:
        moved = Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING).update(
            status=JobStatus.FAILED,
            finished_at=timezone.now(),
            error=(
                f"the worker stopped responding (no heartbeat for {stale_after_s} s) "
                f"{stalled} times in a row without the job making progress"
            ),
        )
        return "failed" if moved else ""
    with transaction.atomic():
        moved = Job.objects.filter(pk=job.pk, status=JobStatus.RUNNING).update(
            status=JobStatus.QUEUED, worker="", stalled_attempts=stalled
        )
        if moved:
            logger.warning("job %s: no heartbeat since %s, re-queued", job.pk, job.heartbeat_at)
            job_enqueue(job=job)
    return "requeued" if moved else ""


def jobs_reap_stale(
    *, stale_after_s: int | None = None, max_attempts: int | None = None
) -> dict[str, int]:
    """Re-queue (or fail, after too many attempts without progress) running jobs whose worker
    stopped heartbeating, and send queued jobs whose message never reached the broker."""
    stale_after_s = stale_after_s or settings.JOB_HEARTBEAT_STALE_AFTER_S
    max_attempts = max_attempts or settings.JOB_MAX_ATTEMPTS
    cutoff = timezone.now() - timedelta(seconds=stale_after_s)
    counts = {"requeued": 0, "failed": 0, "sent": 0}
    for job in Job.objects.filter(status=JobStatus.RUNNING, heartbeat_at__lt=cutoff):
        live = cache.get(live_progress_key(job.pk)) or {}
        if live.get("heartbeat", 0) >= cutoff.timestamp():
            continue  # alive, working inside a transaction whose row updates are not visible yet
        outcome = _reap_one(job, stale_after_s=stale_after_s, max_attempts=max_attempts)
        if outcome:
            counts[outcome] += 1
    unsent = Job.objects.filter(status=JobStatus.QUEUED, sent_at__isnull=True).exclude(
        send_error=""
    )
    for job_id, kind in unsent.values_list("pk", "kind"):
        counts["sent"] += _send(job_id, kind)
    return counts


# One heavy job per machine -----------------------------------------------------------------------

#: Jobs that use the whole machine (every core, or a GPU): a worker runs one at a time.
HEAVY_KINDS = frozenset(
    {JobKind.FINE_TUNE, JobKind.EVALUATION, JobKind.EXPERIMENT, JobKind.EXPORT_BUNDLE}
)
#: How often a heavy job that found the machine busy asks again.
COMPUTE_RETRY_S = 5.0


def job_wait_for_compute(*, job_id: int, kind: str, holder: str) -> int:
    """The machine's compute is taken (`holder` names the job that has it): the job stays
    queued, records its place, and its message comes back in a few seconds. Returns how many
    heavy jobs are ahead of it."""
    host = holder.split(":", 1)[0]
    running = Job.objects.filter(
        status=JobStatus.RUNNING, kind__in=HEAVY_KINDS, worker__startswith=f"{host}:"
    ).count()
    waiting_before = (
        Job.objects.filter(status=JobStatus.QUEUED, kind__in=HEAVY_KINDS, pk__lt=job_id)
        .exclude(waiting={})
        .count()
    )
    ahead = max(1, running) + waiting_before
    Job.objects.filter(pk=job_id, status=JobStatus.QUEUED).update(
        waiting={"for": "the worker's compute", "ahead": ahead, "host": host}
    )
    transaction.on_commit(lambda: _send(job_id, kind, countdown=COMPUTE_RETRY_S))
    return ahead


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
            stalled_attempts=0,
            worker="",
        )
        if moved:
            job_enqueue(job=job)
    job.refresh_from_db()
    return bool(moved)
