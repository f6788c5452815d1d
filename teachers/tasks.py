"""Celery tasks: thin. Take an id, claim the job, call a service, record the outcome."""

from __future__ import annotations

from celery import shared_task

from jobs.tasks import run_claimed


@shared_task(name="jobs.teacher_run")  # type: ignore[untyped-decorator]
def teacher_run(job_id: int) -> None:
    from teachers.services import teacher_run_execute

    run_claimed(job_id, lambda job: teacher_run_execute(job=job))


@shared_task(name="jobs.teacher_batch_poll")  # type: ignore[untyped-decorator]
def teacher_batch_poll(job_id: int, chain: str) -> None:
    """One poll of a provider batch; it schedules the next one itself (countdown) until the
    batch is collected. If the chain is lost (a worker died), the reaper re-queues the job and
    the re-claimed run resumes polling the same batch."""
    from teachers.services import teacher_batch_poll_step

    teacher_batch_poll_step(job_id=job_id, chain=chain)


@shared_task(name="jobs.synthesize_inputs")  # type: ignore[untyped-decorator]
def synthesize_inputs(job_id: int) -> None:
    from teachers.synthesis import synthesis_execute

    run_claimed(job_id, lambda job: synthesis_execute(job=job))
