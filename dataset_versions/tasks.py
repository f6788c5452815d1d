"""Celery tasks: thin. Take an id, claim the job, call a service, record the outcome."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from jobs import services
from jobs.models import Job
from jobs.tasks import run_claimed


@shared_task(name="jobs.dataset_freeze")  # type: ignore[untyped-decorator]  # celery ships no types
def dataset_freeze(job_id: int) -> None:
    from dataset_versions.services import dataset_freeze_job_run

    def work(job: Job) -> dict[str, Any]:
        def progress(done: int, total: int, figures: dict[str, Any]) -> None:
            services.job_progress(job=job, done=done, total=total, figures=figures or None)

        return dataset_freeze_job_run(job=job, progress=progress)

    run_claimed(job_id, work)
