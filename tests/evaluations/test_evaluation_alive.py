"""An evaluation whose worker is alive is never taken for dead and run twice, however long its
candidates take between progress reports (the job's own process heartbeats on a timer, and the
worker's reaper runs on its own timer even while both pool slots are busy)."""

from __future__ import annotations

import pytest

from evaluations import services as es
from jobs.models import JobStatus
from tests.conftest import wait_until
from tests.evaluations.evaluation_support import (
    approve_all,
    freeze,
    label_project_with_references,
    run_teacher,
    teacher_responder,
)
from tests.teachers.teacher_support import openai_credential

STALE_ENV = {
    "DISTILLERY_JOB_STALE_AFTER_S": "3",
    "DISTILLERY_JOB_HEARTBEAT_EVERY_S": "1",
    "DISTILLERY_REAPER_EVERY_S": "1",
}


@pytest.mark.slow
def test_a_slow_evaluation_is_not_run_twice_while_its_worker_lives(
    worker_factory, team, owner, fake_provider
):
    fake_provider.responder = teacher_responder()
    project = label_project_with_references(team, owner, n=8)
    run_teacher(project, owner, fake_provider)
    approve_all(project)
    version = freeze(project, owner)
    worker = worker_factory(queues="default,gpu", concurrency=2, extra_env=STALE_ENV)
    # Each endpoint answer takes longer than the stale threshold: between two progress reports
    # the job says nothing itself for well over 3 s.
    fake_provider.latency_s = 4.0
    endpoint = openai_credential(team, owner, fake_provider, name="slow-endpoint")
    evaluation = es.evaluation_start(
        project=project,
        user=owner,
        teacher=es.TeacherChoice(),
        endpoints=[es.EndpointChoice(credential=endpoint, model="served-model")],
        dataset_version=version,
        options=es.EvalOptions(latency_requests=0, concurrency=1),
    )

    def finished() -> bool:
        evaluation.job.refresh_from_db()
        return evaluation.job.is_terminal

    wait_until(finished, timeout=240, message="the slow evaluation to finish")
    job = evaluation.job
    log = "".join(worker.log)
    assert job.status == JobStatus.SUCCEEDED, job.error + log[-3000:]
    assert job.attempts == 1
    assert "re-queued" not in log
