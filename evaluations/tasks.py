"""Celery tasks: thin. Take an id, claim the job, call a service, record the outcome."""

from __future__ import annotations

from celery import shared_task

from jobs.tasks import run_claimed


# Celery ships no type hints, so its decorator is untyped to mypy.
@shared_task(name="jobs.evaluation")  # type: ignore[untyped-decorator]
def evaluation(job_id: int) -> None:
    from evaluations.services import evaluation_job_run

    run_claimed(job_id, lambda job: evaluation_job_run(job=job))


@shared_task(name="jobs.experiment")  # type: ignore[untyped-decorator]
def experiment(job_id: int) -> None:
    from evaluations.services import evaluation_job_run

    run_claimed(job_id, lambda job: evaluation_job_run(job=job))
