"""The job runtime when things go wrong: a job whose process is alive is never taken for dead,
a job killed while it makes progress is not failed for its attempts, a broker that is down
leaves the job waiting with the reason (and it is sent when the broker is back), and heavy jobs
take turns on a machine."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from datetime import timedelta
from typing import Any

import pytest
from django.core.cache import cache
from django.urls import reverse
from django.utils import timezone

from jobs import services
from jobs.models import Job, JobKind, JobStatus
from jobs.tasks import run_claimed
from tests.conftest import wait_until
from tests.helpers.broker import broker_at


def new_job(project: Any, owner: Any, kind: str = JobKind.IMPORT_INPUTS) -> Job:
    return Job.objects.create(
        team=project.team, project=project, kind=kind, created_by=owner, sent_at=timezone.now()
    )


def make_stale(job: Job, *, attempts: int) -> None:
    """As if the worker died an hour ago: no heartbeat since, in the row or the live cache."""
    an_hour_ago = timezone.now() - timedelta(hours=1)
    Job.objects.filter(pk=job.pk).update(heartbeat_at=an_hour_ago, attempts=attempts)
    live = cache.get(services.live_progress_key(job.pk))
    if live:
        cache.set(
            services.live_progress_key(job.pk), {**live, "heartbeat": an_hour_ago.timestamp()}
        )


@pytest.mark.django_db(transaction=True)
def test_an_attempt_that_made_progress_does_not_count_toward_the_limit(project, owner):
    job = new_job(project, owner)
    Job.objects.filter(pk=job.pk).update(stalled_attempts=2)  # two earlier deaths, no progress
    assert services.job_claim(job_id=job.pk) is not None
    services.job_progress(job=job, done=40, total=100)
    make_stale(job, attempts=3)  # the third worker died, but only after moving the job on

    assert services.jobs_reap_stale(stale_after_s=60, max_attempts=3)["requeued"] == 1
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED and job.stalled_attempts == 0 and job.attempts == 3

    # The next attempts die without progress three times in a row: now the limit applies.
    for attempt in range(4, 7):
        assert services.job_claim(job_id=job.pk) is not None
        make_stale(job, attempts=attempt)
        services.jobs_reap_stale(stale_after_s=60, max_attempts=3)
        job.refresh_from_db()
    assert job.status == JobStatus.FAILED and job.attempts == 6
    assert "3 times in a row without the job making progress" in job.error


@pytest.mark.django_db(transaction=True)
def test_a_busy_job_heartbeats_from_its_own_process_and_is_not_reaped(project, owner, settings):
    settings.JOB_HEARTBEAT_EVERY_S = 0.05
    job = new_job(project, owner)
    release = threading.Event()
    beats: list[Any] = []

    def work(claimed: Job) -> dict[str, Any]:
        first = Job.objects.get(pk=claimed.pk).heartbeat_at
        # The work itself reports nothing (a long generate); the process still beats.
        wait_until(
            lambda: Job.objects.get(pk=claimed.pk).heartbeat_at > first,
            timeout=10,
            message="a heartbeat from the job's own thread",
        )
        beats.append(services.jobs_reap_stale(stale_after_s=2, max_attempts=3))
        release.wait(5)
        return {}

    thread = threading.Thread(target=run_claimed, args=(job.pk, work))
    thread.start()
    wait_until(lambda: beats, timeout=15, message="the reaper to look at the busy job")
    release.set()
    thread.join(10)
    job.refresh_from_db()
    assert beats[0]["requeued"] == 0 and beats[0]["failed"] == 0
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """A redis-server of this test's own, to stop and start like a broker outage."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_until(self.up, timeout=20, message="redis-server to start")

    def up(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc:
            self.proc.kill()
            self.proc.wait(10)

    def queued(self, queue: str) -> int:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(f"LLEN {queue}\r\n".encode())
            return int(s.recv(64).decode().strip().lstrip(":"))


@pytest.fixture
def own_broker():  # type: ignore[no-untyped-def]
    broker = Broker(free_port())
    broker.start()
    try:
        with broker_at(f"redis://127.0.0.1:{broker.port}/0"):
            yield broker
    finally:
        broker.stop()


@pytest.mark.django_db(transaction=True)
def test_a_job_started_while_the_broker_is_down_waits_with_the_reason_and_is_sent_later(
    own_broker, client_for, project, owner
):
    own_broker.stop()
    job = services.job_create(
        team=project.team, project=project, kind=JobKind.IMPORT_INPUTS, user=owner
    )
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED and job.sent_at is None
    assert "broker" in job.send_error and "unreachable" in job.send_error
    page = client_for(owner).get(reverse("jobs:job_detail", args=[job.pk]))
    assert page.status_code == 200 and b"job-send-error" in page.content

    own_broker.start()
    assert services.jobs_reap_stale()["sent"] == 1
    job.refresh_from_db()
    assert job.sent_at is not None and job.send_error == ""
    assert own_broker.queued("default") == 1


@pytest.mark.slow
def test_two_fine_tunes_on_one_worker_take_turns(worker_factory, team, owner, tiny_model_dir):
    from tests.finetunes.finetune_support import WORKER_ENV, frozen_version, start, tiny_student

    version = frozen_version(team, owner)
    student = tiny_student(team, tiny_model_dir)
    worker = worker_factory(queues="gpu", concurrency=2, extra_env=WORKER_ENV)
    first = start(version, owner, student, max_steps=12)
    second = start(version, owner, student, max_steps=12)
    jobs = [first.job, second.job]

    def one_running_one_waiting() -> bool:
        rows = {j.pk: j for j in Job.objects.filter(pk__in=[j.pk for j in jobs])}
        statuses = sorted(r.status for r in rows.values())
        waiting = [r for r in rows.values() if r.status == JobStatus.QUEUED and r.waiting]
        return (
            statuses == ["queued", "running"] and bool(waiting) and waiting[0].waiting["ahead"] == 1
        )

    wait_until(one_running_one_waiting, timeout=120, message="one job running, one waiting")
    wait_until(
        lambda: all(
            s in {"succeeded", "failed"}
            for s in Job.objects.filter(pk__in=[j.pk for j in jobs]).values_list(
                "status", flat=True
            )
        ),
        timeout=400,
        message="both fine-tunes to end",
    )
    done = sorted(Job.objects.filter(pk__in=[j.pk for j in jobs]), key=lambda j: j.started_at)
    assert [j.status for j in done] == ["succeeded", "succeeded"], "".join(worker.log[-30:])
    assert done[0].finished_at <= done[1].started_at  # never both at once


@pytest.mark.slow
def test_a_worker_given_sigterm_stops_within_its_shutdown_time_and_the_run_goes_on(
    worker_factory, team, owner, fake_provider
):
    import signal

    from teachers.models import TeacherOutput
    from tests.teachers.teacher_support import label_project, openai_credential, start

    fake_provider.latency_s = 0.5  # a long run: it is still working when the worker is stopped
    project = label_project(team, owner, n=200)
    worker = worker_factory(
        extra_env={"REMAP_SIGTERM": "SIGQUIT", "DISTILLERY_WORKER_SHUTDOWN_S": "3"}
    )
    run = start(project, owner, openai_credential(team, owner, fake_provider), concurrency=2)
    wait_until(
        lambda: TeacherOutput.objects.filter(run=run).count() >= 4,
        timeout=90,
        message="the run to be working",
    )
    assert worker.proc is not None
    worker.proc.send_signal(signal.SIGTERM)  # what `docker stop` or systemd sends
    wait_until(lambda: worker.proc.poll() is not None, timeout=30, message="the worker to exit")
    assert TeacherOutput.objects.filter(run=run).count() < 200  # it stopped mid-run

    # The run was handed back; the reaper gives it to the next worker, which finishes it.
    Job.objects.filter(pk=run.job_id).update(heartbeat_at=timezone.now() - timedelta(hours=1))
    cache.delete(services.live_progress_key(run.job_id))
    worker_factory()
    services.jobs_reap_stale(stale_after_s=60)
    fake_provider.latency_s = 0.0
    wait_until(
        lambda: Job.objects.get(pk=run.job_id).status == JobStatus.SUCCEEDED,
        timeout=120,
        message="the next worker to finish the run",
    )
    assert TeacherOutput.objects.filter(run=run).values("input_id").distinct().count() == 200
