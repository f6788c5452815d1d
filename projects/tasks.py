"""Celery tasks: thin. Take an id, claim the job, call a service, record the outcome."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from jobs import services
from jobs.models import Job
from jobs.tasks import run_claimed


@shared_task(name="jobs.import_inputs")  # type: ignore[untyped-decorator]  # celery ships no types
def import_inputs(job_id: int) -> None:
    from projects.services import inputs_import_run

    def work(job: Job) -> dict[str, Any]:
        def progress(done: int, total: int) -> None:
            services.job_progress(job=job, done=done, total=total)

        result = inputs_import_run(job=job, progress=progress)
        job.progress_total = result["rows_read"]
        return result

    run_claimed(job_id, work)
