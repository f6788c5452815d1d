"""Celery tasks: thin. Take an id, claim the job, call a service, record the outcome."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from celery import shared_task

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


@shared_task(name="jobs.import_inputs")
def import_inputs(job_id: int) -> None:
    from projects.services import inputs_import_run

    def work(job: Job) -> dict[str, Any]:
        def progress(done: int, total: int) -> None:
            services.job_progress(job=job, done=done, total=total)

        result = inputs_import_run(job=job, progress=progress)
        job.progress_total = result["rows_read"]
        return result

    run_claimed(job_id, work)


@shared_task(name="jobs.reap_stale_jobs")
def reap_stale_jobs() -> dict[str, int]:
    return services.jobs_reap_stale()


# Review and datasets ---------------------------------------------------------------------------


@shared_task(name="jobs.review_checks")
def review_checks(job_id: int) -> None:
    from projects.review_services import checks_job_run

    def work(job: Job) -> dict[str, Any]:
        def progress(done: int, total: int, figures: dict[str, Any]) -> None:
            services.job_progress(job=job, done=done, total=total, figures=figures or None)

        return checks_job_run(job=job, progress=progress)

    run_claimed(job_id, work)


@shared_task(name="jobs.dataset_freeze")
def dataset_freeze(job_id: int) -> None:
    from projects.dataset_services import dataset_freeze_job_run

    def work(job: Job) -> dict[str, Any]:
        def progress(done: int, total: int, figures: dict[str, Any]) -> None:
            services.job_progress(job=job, done=done, total=total, figures=figures or None)

        return dataset_freeze_job_run(job=job, progress=progress)

    run_claimed(job_id, work)


# Teacher runs ----------------------------------------------------------------------------------


@shared_task(name="jobs.teacher_run")
def teacher_run(job_id: int) -> None:
    from jobs.teacher_services import teacher_run_execute

    run_claimed(job_id, lambda job: teacher_run_execute(job=job))


@shared_task(name="jobs.teacher_batch_poll")
def teacher_batch_poll(job_id: int, chain: str) -> None:
    """One poll of a provider batch; it schedules the next one itself (countdown) until the
    batch is collected. If the chain is lost (a worker died), the reaper re-queues the job and
    the re-claimed run resumes polling the same batch."""
    from jobs.teacher_services import teacher_batch_poll_step

    teacher_batch_poll_step(job_id=job_id, chain=chain)


# Evaluation and the weekend experiment ---------------------------------------------------------


@shared_task(name="jobs.evaluation")
def evaluation(job_id: int) -> None:
    from jobs.evaluation_services import evaluation_job_run

    run_claimed(job_id, lambda job: evaluation_job_run(job=job))


@shared_task(name="jobs.experiment")
def experiment(job_id: int) -> None:
    from jobs.evaluation_services import evaluation_job_run

    run_claimed(job_id, lambda job: evaluation_job_run(job=job))


# Fine-tuning (jobs.finetune_services) ----------------------------------------------------------


@shared_task(name="jobs.fine_tune", acks_late=True)
def fine_tune(job_id: int) -> None:
    from jobs.finetune_services import fine_tune_execute

    run_claimed(job_id, lambda job: fine_tune_execute(job=job))


from celery.signals import worker_ready, worker_shutdown, worker_shutting_down  # noqa: E402


@worker_ready.connect
def report_worker_ready(sender: Any = None, **kwargs: Any) -> None:
    """Record this worker's queues and hardware (the fine-tune form reads whether any GPU
    worker is there)."""
    from jobs.finetune_services import worker_report_ready

    try:
        queues = [q.name for q in sender.task_consumer.queues]
        worker_report_ready(hostname=str(sender.hostname), queues=queues)
    except Exception:
        logger.exception("could not record this worker's hardware")


@worker_shutting_down.connect
def stop_training_children(sender: Any = None, **kwargs: Any) -> None:
    """Training subprocesses checkpoint and stop; their jobs go back to the queue."""
    from jobs.finetune_services import terminate_training_children

    try:
        terminate_training_children()
    except Exception:
        logger.exception("could not signal the training subprocesses")


@worker_shutdown.connect
def report_worker_stopped(sender: Any = None, **kwargs: Any) -> None:
    from jobs.finetune_services import worker_report_stopped

    try:
        worker_report_stopped(hostname=str(getattr(sender, "hostname", sender)))
    except Exception:
        logger.exception("could not record that this worker stopped")
