"""Helpers for the fine-tuning tests: a frozen dataset version of short tickets, the tiny model
registered as a team's base student, and a worker that takes gpu-queue jobs on one thread."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

from django.conf import settings

from dataset_versions import services as dataset_services
from dataset_versions.models import DatasetVersion
from finetunes import services as finetune_services
from finetunes.models import FineTune, StudentModel
from jobs import storage
from jobs.models import Job
from projects.models import Project
from teachers.models import ReviewStatus, TeacherOutput
from tests.factories import ProjectFactory
from tests.review.review_support import make_outputs

LABELS = ["card_arrival", "lost_or_stolen_card", "top_up_limits"]
TICKETS = [
    ("my card has not arrived yet", "card_arrival"),
    ("I lost my card, please freeze it", "lost_or_stolen_card"),
    ("Is there a limit on top ups?", "top_up_limits"),
]

# One thread per training process: the CI box is shared, and fine-tuning the tiny model is
# dominated by per-step overhead anyway.
WORKER_ENV = {"DISTILLERY_TRAINING_THREADS": "1"}


def frozen_version(team: Any, owner: Any, *, n: int = 24, name: str = "v1") -> DatasetVersion:
    """A label project with ``n`` approved teacher answers, frozen 70/20/10."""
    project: Project = ProjectFactory(
        team=team,
        created_by=owner,
        name="Ticket intents",
        label_set=list(LABELS),
        instruction_template="Message: {{ text }}",
        system_prompt="Classify the customer message into one intent.",
    )
    texts = [f"{TICKETS[i % 3][0]} ({i})" for i in range(n)]
    answers = [TICKETS[i % 3][1] for i in range(n)]
    make_outputs(project, answers, texts=texts)
    TeacherOutput.objects.filter(project=project).update(review_status=ReviewStatus.APPROVED)
    return dataset_services.dataset_version_create(
        project=project,
        user=owner,
        options=dataset_services.freeze_options(
            name=name, train=0.7, validation=0.2, test=0.1, group_near_duplicates=False
        ),
    )


def tiny_student(team: Any, tiny_model_dir: Path, name: str = "tiny-llama") -> StudentModel:
    """The tiny random model copied into the data directory and registered for ``team``."""
    dest = Path(settings.DATA_DIR) / "models" / f"{name}-{uuid.uuid4().hex[:8]}"
    shutil.copytree(tiny_model_dir, dest)
    return finetune_services.student_register_base(team=team, user=None, path=dest, name=name)


def start(version: DatasetVersion, owner: Any, student: StudentModel, **hyper: Any) -> FineTune:
    settings_ = finetune_services.FineTuneSettings(
        method=hyper.pop("method", "lora"),
        preset=hyper.pop("preset", "quick"),
        student=student,
        hyperparameters={"batch_size": 4, "learning_rate": 1e-2, **hyper},
    )
    return finetune_services.fine_tune_start(
        project=version.project, version=version, user=owner, settings=settings_
    )


def job_of(fine_tune: FineTune) -> Job:
    return Job.objects.get(pk=fine_tune.job_id)


def status_of(fine_tune: FineTune) -> str:
    return job_of(fine_tune).status


def output_dir(fine_tune: FineTune) -> Path:
    fine_tune.refresh_from_db()
    return storage.data_path(fine_tune.output_dir)
