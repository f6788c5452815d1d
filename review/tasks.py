"""Celery tasks: thin. Take an id, claim the job, call a service, record the outcome."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from jobs import services
from jobs.models import Job
from jobs.tasks import run_claimed


# Celery ships no type hints, so its decorator is untyped to mypy.
@shared_task(name="jobs.review_checks")  # type: ignore[untyped-decorator]
def review_checks(job_id: int) -> None:
    from review.services import checks_job_run

    def work(job: Job) -> dict[str, Any]:
        def progress(done: int, total: int, figures: dict[str, Any]) -> None:
            services.job_progress(job=job, done=done, total=total, figures=figures or None)

        return checks_job_run(job=job, progress=progress)

    run_claimed(job_id, work)
