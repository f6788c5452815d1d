"""Celery tasks: thin. Take an id, claim the job, call a service, record the outcome."""

from __future__ import annotations

from celery import shared_task

from jobs.tasks import run_claimed


@shared_task(name="jobs.evaluation")
def evaluation(job_id: int) -> None:
    from evaluations.services import evaluation_job_run

    run_claimed(job_id, lambda job: evaluation_job_run(job=job))


@shared_task(name="jobs.experiment")
def experiment(job_id: int) -> None:
    from evaluations.services import evaluation_job_run

    run_claimed(job_id, lambda job: evaluation_job_run(job=job))
