"""Celery tasks: thin. Take an id, claim the job, call a service, record the outcome."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from celery.signals import worker_shutting_down

from jobs.tasks import run_claimed

logger = logging.getLogger(__name__)


@shared_task(name="jobs.fine_tune", acks_late=True)  # type: ignore[untyped-decorator]  # celery ships no types
def fine_tune(job_id: int) -> None:
    from finetunes.services import fine_tune_execute

    run_claimed(job_id, lambda job: fine_tune_execute(job=job))


@shared_task(name="jobs.export_bundle", acks_late=True)  # type: ignore[untyped-decorator]  # celery ships no types
def export_bundle(job_id: int) -> None:
    from finetunes.services import export_execute

    run_claimed(job_id, lambda job: export_execute(job=job))


@worker_shutting_down.connect  # type: ignore[untyped-decorator]  # celery ships no types
def stop_training_children(sender: Any = None, **kwargs: Any) -> None:
    """Training subprocesses checkpoint and stop; their jobs go back to the queue."""
    from finetunes.services import terminate_training_children

    try:
        terminate_training_children()
    except Exception:
        logger.exception("could not signal the training subprocesses")
