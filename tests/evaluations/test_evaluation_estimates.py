"""The evaluation form's time per student on the gpu-queue worker, and the evaluation page's
time left and Cancel button (engineers and owners only)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from evaluations import services as evaluation_services
from evaluations.choices import StudentChoice
from evaluations.models import CandidateRole, EvalCandidate, Evaluation
from finetunes.models import StudentModel
from jobs import services as job_services
from jobs.models import Job, JobStatus, WorkerInfo
from jobs.throughput import about
from teams.models import Role
from tests.evaluations.evaluation_support import (
    TEXTS,
    approve_all,
    freeze,
    label_project_with_references,
    place_model,
)
from tests.factories import TeacherOutputFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def ready(team, owner, tiny_model_dir):  # type: ignore[no-untyped-def]
    project = label_project_with_references(team, owner)
    for row, (_, label) in zip(project.inputs.order_by("id"), TEXTS, strict=True):
        TeacherOutputFactory(project=project, input=row, raw_text=label)
    approve_all(project)
    version = freeze(project, owner)
    base = StudentModel.objects.create(
        team=team,
        name="tiny base",
        kind="base",
        source="local",
        path=place_model(tiny_model_dir, "tiny-estimates-base"),
    )
    WorkerInfo.objects.create(
        hostname="cpu-1@laptop", queues=["gpu"], cpu_cores=2, started_at=timezone.now()
    )
    return project, version, base


def queued_evaluation(project, owner, version, base) -> Evaluation:  # type: ignore[no-untyped-def]
    return evaluation_services.evaluation_start(
        project=project,
        user=owner,
        teacher=evaluation_services.TeacherChoice(),
        students=[StudentChoice(CandidateRole.BASE, student_model=base)],
        dataset_version=version,
    )


def new_url(project) -> str:  # type: ignore[no-untyped-def]
    return reverse("evaluations:evaluation_new", args=[project.pk])


def test_the_form_gives_a_first_run_estimate_and_says_so(client_for, owner, ready):  # type: ignore[no-untyped-def]
    project, _, _ = ready
    html = client_for(owner).get(new_url(project)).content.decode()
    assert 'data-testid="first-run-estimate"' in html
    assert "first-run estimate: nothing measured on 2 CPU cores yet" in html
    assert "0.5 examples/s per CPU core" in html and "bench/eval_throughput.py" in html


def test_the_form_gives_the_time_measured_on_the_last_runs(client_for, owner, ready):  # type: ignore[no-untyped-def]
    project, version, base = ready
    evaluation = queued_evaluation(project, owner, version, base)
    job = job_services.job_claim(job_id=evaluation.job_id)
    assert job is not None
    EvalCandidate.objects.filter(evaluation=evaluation, role=CandidateRole.BASE).update(
        status="done",
        performance={
            "throughput": {"examples_per_s": 0.1, "n": 6, "seconds": 60.0},
            "hardware": {"device": "cpu", "name": "Xeon", "cores": 2, "threads": 2},
            "load_s": 10.0,
            "latency": {"p50_ms": 1000.0, "n": 20},
        },
    )
    job_services.job_succeed(job=job, result={})
    html = client_for(owner).get(new_url(project)).content.decode()
    assert 'data-testid="measured-estimate"' in html and "measured on the last 1 run" in html
    n_test = version.items.filter(split="test").count()
    expected = about(10.0 + 20.0 + n_test / 0.1)
    assert f'<td data-testid="evaluation-estimate">{expected}</td>' in html


def test_engineers_cancel_and_viewers_do_not_see_it(client, member_with_role, owner, ready):  # type: ignore[no-untyped-def]
    project, version, base = ready
    evaluation = queued_evaluation(project, owner, version, base)
    page_url = reverse("evaluations:evaluation", args=[evaluation.pk])
    cancel_url = reverse("evaluations:evaluation_cancel", args=[evaluation.pk])

    client.force_login(member_with_role(Role.VIEWER))
    assert 'data-testid="eval-cancel"' not in client.get(page_url).content.decode()
    assert client.post(cancel_url).status_code == 403
    assert Job.objects.get(pk=evaluation.job_id).status == JobStatus.QUEUED

    client.force_login(member_with_role(Role.ENGINEER))
    assert 'data-testid="eval-cancel"' in client.get(page_url).content.decode()
    assert client.get(cancel_url).status_code == 405
    assert client.post(cancel_url).status_code == 302
    assert Job.objects.get(pk=evaluation.job_id).status == JobStatus.CANCELLED


def test_a_running_evaluation_shows_its_time_left_and_stops_cooperatively(client_for, owner, ready):  # type: ignore[no-untyped-def]
    project, version, base = ready
    evaluation = queued_evaluation(project, owner, version, base)
    job = job_services.job_claim(job_id=evaluation.job_id)
    assert job is not None
    client = client_for(owner)
    page_url = reverse("evaluations:evaluation", args=[evaluation.pk])
    assert "time left: measuring" in client.get(page_url).content.decode()

    Job.objects.filter(pk=job.pk).update(started_at=timezone.now() - timedelta(seconds=100))
    job.refresh_from_db()
    job_services.job_progress(job=job, done=10, total=20)
    html = client.get(page_url).content.decode()
    assert "about 2 minutes left at the rate so far (0.10 answers/s)" in html

    client.post(reverse("evaluations:evaluation_cancel", args=[evaluation.pk]))
    job.refresh_from_db()
    assert job.status == JobStatus.RUNNING and job.cancel_requested
    assert 'data-testid="eval-cancelling"' in client.get(page_url).content.decode()
    with pytest.raises(job_services.JobCancelled):
        job_services.job_progress(job=job, done=11)
