"""Celery tasks: thin. Take an id, claim the job, call a service, record the outcome."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from celery import shared_task
from celery.signals import worker_ready, worker_shutdown

from jobs import services
from jobs.models import Job

logger = logging.getLogger(__name__)


def run_claimed(job_id: int, work: Callable[[Job], dict[str, Any]]) -> None:
    """Claim the job (a redelivered message finds it claimed and does nothing), run, finish."""
    job = services.job_claim(job_id=job_id)
    if job is None:
        logger.info("job %s: not queued any more, nothing to do", job_id)
        return
    started = time.monotonic()
    try:
        result = work(job)
    except services.JobCancelled:
        services.job_mark_cancelled(job=job)
        logger.info("job %s: cancelled after %.2f s", job_id, time.monotonic() - started)
        return
    except services.JobHandedOff:
        logger.info("job %s: handed off after %.2f s", job_id, time.monotonic() - started)
        return
    except services.JobPaused as paused:
        services.job_mark_paused(job=job)
        logger.info("job %s: paused after %.2f s (%s)", job_id, time.monotonic() - started, paused)
        return
    except Exception as exc:
        logger.exception("job %s failed", job_id)
        services.job_fail(job=job, error=str(exc) or exc.__class__.__name__)
        return
    services.job_succeed(job=job, result=result)
    logger.info("job %s: %s succeeded in %.2f s", job_id, job.kind, time.monotonic() - started)


@shared_task(name="jobs.reap_stale_jobs")  # type: ignore[untyped-decorator]  # celery ships no types
def reap_stale_jobs() -> dict[str, int]:
    return services.jobs_reap_stale()


# Worker lifecycle: the fine-tune form reads which workers (and GPUs) are there. -----------------


@worker_ready.connect  # type: ignore[untyped-decorator]  # celery ships no types
def report_worker_ready(sender: Any = None, **kwargs: Any) -> None:
    """Record this worker's queues and hardware (the fine-tune form reads whether any GPU
    worker is there)."""
    from jobs.workers import worker_report_ready

    try:
        queues = [q.name for q in sender.task_consumer.queues]
        worker_report_ready(hostname=str(sender.hostname), queues=queues)
    except Exception:
        logger.exception("could not record this worker's hardware")


@worker_shutdown.connect  # type: ignore[untyped-decorator]  # celery ships no types
def report_worker_stopped(sender: Any = None, **kwargs: Any) -> None:
    from jobs.workers import worker_report_stopped

    try:
        worker_report_stopped(hostname=str(getattr(sender, "hostname", sender)))
    except Exception:
        logger.exception("could not record that this worker stopped")
