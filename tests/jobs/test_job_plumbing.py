"""Job plumbing with a real Celery worker process on the test database and Redis broker."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.utils import timezone

from distillery.celery import app
from jobs import services
from jobs.models import Job, JobKind, JobStatus
from projects import services as project_services
from projects.models import InputRow
from tests.conftest import wait_until


def big_csv(tmp_path: Path, rows: int) -> Path:
    path = tmp_path / "tickets.csv"
    with path.open("w") as fh:
        fh.write("text,label\n")
        for i in range(rows):
            fh.write(f"Ticket number {i}: my card has not arrived yet,card_arrival\n")
    return path


def start_import(project, owner, path: Path) -> Job:  # type: ignore[no-untyped-def]
    upload = project_services.input_upload_create(
        project=project, user=owner, file_name=path.name, source=path
    )
    return project_services.input_import_start(
        upload=upload, user=owner, field_map={"text": "text"}
    )


def job_status(job: Job) -> str:
    job.refresh_from_db()
    return job.status


def test_a_real_worker_runs_an_import_job_to_completion(celery_worker, project, owner, tmp_path):  # type: ignore[no-untyped-def]
    job = start_import(project, owner, big_csv(tmp_path, 500))
    wait_until(
        lambda: job_status(job) in {"succeeded", "failed"}, timeout=60, message="import to finish"
    )
    assert job.status == JobStatus.SUCCEEDED, job.error + "".join(celery_worker.log[-20:])
    assert job.progress_done == job.progress_total == 500
    assert job.attempts == 1
    assert InputRow.objects.filter(project=project).count() == 500


def test_a_redelivered_message_does_nothing(celery_worker, project, owner, tmp_path):  # type: ignore[no-untyped-def]
    job = start_import(project, owner, big_csv(tmp_path, 200))
    wait_until(lambda: job_status(job) == "succeeded", timeout=60, message="import to finish")
    finished_at = job.finished_at
    # The broker delivers the same message again (as after a lost ack).
    app.send_task("jobs.import_inputs", args=[job.pk], queue="default")
    marker = services.job_create(
        team=project.team,
        project=project,
        kind=JobKind.IMPORT_INPUTS,
        user=owner,
        params={"upload_id": 0},
    )
    # The worker handles messages in order; once the marker job (which fails: no upload) is done,
    # the duplicate before it has been handled too.
    wait_until(lambda: job_status(marker) == "failed", timeout=60, message="marker job")
    job.refresh_from_db()
    assert job.attempts == 1 and job.finished_at == finished_at
    assert InputRow.objects.filter(project=project).count() == 200


def test_cancel_stops_a_running_import_and_imports_nothing(
    worker_factory, project, owner, tmp_path
):  # type: ignore[no-untyped-def]
    worker_factory(extra_env={"DISTILLERY_IMPORT_BATCH_SIZE": "20"})
    job = start_import(project, owner, big_csv(tmp_path, 60_000))
    wait_until(
        lambda: services.job_live_view(Job.objects.get(pk=job.pk)).progress_done > 0,
        timeout=60,
        message="import to start",
    )
    services.job_request_cancel(job=job)
    wait_until(
        lambda: job_status(job) in {"cancelled", "succeeded", "failed"},
        timeout=60,
        message="cancel",
    )
    assert job.status == JobStatus.CANCELLED
    assert InputRow.objects.filter(project=project).count() == 0


def test_cancelling_a_queued_job_is_immediate(project, owner, transactional_db):  # type: ignore[no-untyped-def]
    job = services.job_create(
        team=project.team, project=project, kind=JobKind.IMPORT_INPUTS, user=owner, params={}
    )
    services.job_request_cancel(job=job)
    assert job.status == JobStatus.CANCELLED
    assert services.job_claim(job_id=job.pk) is None  # the message that arrives later does nothing


def test_a_job_whose_worker_was_killed_is_requeued_and_finished_by_another(
    worker_factory, project, owner, tmp_path
):  # type: ignore[no-untyped-def]
    first = worker_factory(extra_env={"DISTILLERY_IMPORT_BATCH_SIZE": "20"})
    job = start_import(project, owner, big_csv(tmp_path, 60_000))
    wait_until(
        lambda: services.job_live_view(Job.objects.get(pk=job.pk)).progress_done > 0,
        timeout=60,
        message="import to start",
    )
    first.kill()
    assert job_status(job) == JobStatus.RUNNING  # nobody told the database
    assert InputRow.objects.filter(project=project).count() == 0  # the transaction died with it

    # A live job is never reaped: its heartbeat is recent.
    assert services.jobs_reap_stale(stale_after_s=60, max_attempts=3) == {
        "requeued": 0,
        "failed": 0,
        "sent": 0,
    }
    # Time passes with no heartbeat (the dead worker sends none): the reaper re-queues the job.
    from django.core.cache import cache

    Job.objects.filter(pk=job.pk).update(heartbeat_at=timezone.now() - timezone.timedelta(hours=1))
    cache.delete(services.live_progress_key(job.pk))
    worker_factory()  # (starting a test worker purges the queue, so it starts first)
    assert services.jobs_reap_stale(stale_after_s=60, max_attempts=3) == {
        "requeued": 1,
        "failed": 0,
        "sent": 0,
    }
    wait_until(
        lambda: job_status(job) in {"succeeded", "failed"}, timeout=120, message="second attempt"
    )
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.attempts == 2
    assert InputRow.objects.filter(project=project).count() == 60_000


def test_the_reaper_fails_a_job_after_too_many_attempts(project, owner, transactional_db):  # type: ignore[no-untyped-def]
    job = services.job_create(
        team=project.team, project=project, kind=JobKind.IMPORT_INPUTS, user=owner, params={}
    )
    # Two earlier attempts died without progress; this third one too.
    Job.objects.filter(pk=job.pk).update(
        status=JobStatus.RUNNING,
        attempts=3,
        stalled_attempts=2,
        heartbeat_at=timezone.now() - timezone.timedelta(hours=1),
    )
    assert services.jobs_reap_stale(stale_after_s=60, max_attempts=3) == {
        "requeued": 0,
        "failed": 1,
        "sent": 0,
    }
    job.refresh_from_db()
    assert job.status == JobStatus.FAILED
    assert "stopped responding" in job.error and "3 times" in job.error


def test_status_changes_only_from_the_expected_status(project, owner, db):  # type: ignore[no-untyped-def]
    job = services.job_create(
        team=project.team, project=project, kind=JobKind.IMPORT_INPUTS, user=owner, params={}
    )
    assert services.job_succeed(job=job) is False  # queued → succeeded is not a transition
    claimed = services.job_claim(job_id=job.pk)
    assert claimed is not None and claimed.status == JobStatus.RUNNING
    assert services.job_claim(job_id=job.pk) is None
    assert services.job_fail(job=claimed, error="boom") is True
    assert services.job_succeed(job=claimed) is False
    claimed.refresh_from_db()
    assert claimed.status == JobStatus.FAILED and claimed.error == "boom"


def test_the_job_page_polls_a_status_fragment_until_the_job_ends(client_for, owner, project, db):  # type: ignore[no-untyped-def]
    job = services.job_create(
        team=project.team,
        project=project,
        kind=JobKind.IMPORT_INPUTS,
        user=owner,
        params={},
        total=10,
    )
    client = client_for(owner)
    page = client.get(f"/jobs/{job.pk}/")
    assert b'hx-get="/jobs/%d/status/"' % job.pk in page.content
    running = services.job_claim(job_id=job.pk)
    services.job_progress(job=running, done=4, total=10)
    fragment = client.get(f"/jobs/{job.pk}/status/")
    assert b"40 %" in fragment.content and b"hx-trigger" in fragment.content
    services.job_succeed(job=running, result={"imported": 10})
    fragment = client.get(f"/jobs/{job.pk}/status/")
    assert b"100 %" in fragment.content and b"hx-trigger" not in fragment.content
    assert settings.CELERY_TASK_ACKS_LATE and settings.CELERY_TASK_REJECT_ON_WORKER_LOST
