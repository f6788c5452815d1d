"""Celery tasks: thin. Take an id, claim the job, call a service, record the outcome."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import shared_task
from celery.signals import worker_ready, worker_shutdown
from django.conf import settings
from django.db import connection

from jobs import compute, services
from jobs.models import Job

logger = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    """Beats for a running job from its own process on a timer, whatever the work is doing
    (a long generate, a transaction, a child process): a job whose worker is alive is never
    taken for dead by the reaper."""

    def __init__(self, job_id: int, every_s: float) -> None:
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.job_id, self.every_s = job_id, every_s
        self.stopped = threading.Event()

    def run(self) -> None:
        try:
            while not self.stopped.wait(self.every_s):
                services.job_heartbeat(job_id=self.job_id)
        except Exception:
            logger.exception("job %s: heartbeat thread stopped", self.job_id)
        finally:
            connection.close()

    def stop(self) -> None:
        self.stopped.set()


def run_claimed(job_id: int, work: Callable[[Job], dict[str, Any]]) -> None:
    """Claim the job (a redelivered message finds it claimed and does nothing), run, finish.

    A heavy job (training, evaluation) first takes this machine's compute; when another heavy
    job has it, the job stays queued with its place shown and comes back shortly."""
    kind = Job.objects.filter(pk=job_id).values_list("kind", flat=True).first()
    if kind in services.HEAVY_KINDS:
        holder = f"{services.worker_name()} job {job_id}"
        with compute.compute_lease(holder) as slot:
            if slot is None:
                ahead = services.job_wait_for_compute(
                    job_id=job_id, kind=kind, holder=compute.current_holder() or holder
                )
                logger.info("job %s: waiting for this machine's compute (%s ahead)", job_id, ahead)
                return
            _run(job_id, work)
        return
    _run(job_id, work)


def _run(job_id: int, work: Callable[[Job], dict[str, Any]]) -> None:
    job = services.job_claim(job_id=job_id)
    if job is None:
        logger.info("job %s: not queued any more, nothing to do", job_id)
        return
    started = time.monotonic()
    heartbeat = Heartbeat(job_id, settings.JOB_HEARTBEAT_EVERY_S)
    heartbeat.start()
    try:
        _finish(job, work, started)
    finally:
        heartbeat.stop()


def _finish(job: Job, work: Callable[[Job], dict[str, Any]], started: float) -> None:
    job_id = job.pk
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


class Reaper(threading.Thread):
    """The reaper, in the worker's main process on a timer: busy pool slots (two long jobs on
    a two-slot worker) can't starve it the way they starve a reaper task in the queue."""

    def __init__(self, every_s: float) -> None:
        super().__init__(name="job-reaper", daemon=True)
        self.every_s = every_s
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.every_s):
            try:
                services.jobs_reap_stale()
            except Exception:
                logger.exception("the reaper failed; it tries again in %s s", self.every_s)
            finally:
                connection.close()


_reaper: Reaper | None = None


@worker_ready.connect  # type: ignore[untyped-decorator]  # celery ships no types
def start_reaper(sender: Any = None, **kwargs: Any) -> None:
    global _reaper
    _reaper = Reaper(settings.REAPER_EVERY_S)
    _reaper.start()


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
    if _reaper is not None:
        _reaper.stopped.set()
    from jobs.workers import worker_report_stopped

    try:
        worker_report_stopped(hostname=str(getattr(sender, "hostname", sender)))
    except Exception:
        logger.exception("could not record that this worker stopped")
