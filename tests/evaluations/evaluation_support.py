"""Helpers for the evaluation tests: a label project whose teacher answered through the loopback
provider, a frozen version, and the tiny model placed where workers may load models from."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from django.conf import settings

from dataset_versions import services as dataset_services
from dataset_versions.models import DatasetVersion
from evaluations.models import Evaluation
from projects.models import InputRow, Project
from teachers.models import ReviewStatus, TeacherOutput
from tests.factories import ProjectFactory
from tests.fakes.provider_server import FakeRequest
from tests.teachers.teacher_support import LABELS, add_inputs, execute, openai_credential, start

TEXTS = [
    ("my card has not arrived yet", "card_arrival"),
    ("I lost my card, please freeze it", "lost_or_stolen_card"),
    ("my top up failed", "top_up_failed"),
    ("where is my new card?", "card_arrival"),
    ("someone stole my card", "lost_or_stolen_card"),
    ("the top up is not working", "top_up_failed"),
    ("my card still has not come", "card_arrival"),
    ("the top up was declined", "top_up_failed"),
    ("card missing in the post", "card_arrival"),
    ("I think my card was stolen", "lost_or_stolen_card"),
    ("top up did not go through", "top_up_failed"),
    ("how long until my card arrives", "card_arrival"),
]


def truth_of(text: str) -> str:
    for t, label in TEXTS:
        if t in text:
            return label
    return LABELS[0]


def ticket_of(prompt: str) -> str:
    """The ticket text inside a rendered prompt (before the label instructions)."""
    return prompt.split("\n\n")[0].split(":", 1)[-1].strip()


def teacher_responder(wrong_on: set[str] | None = None):  # type: ignore[no-untyped-def]
    """Answers the true label, except for tickets containing one of ``wrong_on``."""

    def respond(request: FakeRequest) -> str:
        text = ticket_of(request.last_user_text)
        if wrong_on and any(w in text for w in wrong_on):
            return "top_up_failed" if truth_of(text) != "top_up_failed" else "card_arrival"
        return truth_of(text)

    return respond


def label_project_with_references(
    team: Any, owner: Any, *, references: bool = True, n: int = len(TEXTS)
) -> Project:
    project = ProjectFactory(team=team, created_by=owner, name="Tickets", label_set=list(LABELS))
    texts = [t for t, _ in TEXTS[:n]]
    add_inputs(project, texts, [label for _, label in TEXTS[:n]] if references else None)
    return project


def run_teacher(project: Project, owner: Any, server: Any, **settings_: Any) -> Any:
    credential = openai_credential(project.team, owner, server)
    run = execute(start(project, owner, credential, **settings_))
    assert run.job.status == "succeeded", run.job.error
    return run


def approve_all(project: Project) -> None:
    TeacherOutput.objects.filter(project=project).update(review_status=ReviewStatus.APPROVED)


def freeze(project: Project, owner: Any, name: str = "v1", test: float = 0.5) -> DatasetVersion:
    return dataset_services.dataset_version_create(
        project=project,
        user=owner,
        options=dataset_services.freeze_options(
            name=name, train=1 - test, validation=0.0, test=test, include_references=False
        ),
    )


def place_model(source: Path, name: str) -> str:
    """Copy a model under DATA_DIR/models (where workers may load from); returns the relative
    path a form would hold."""
    dest = Path(settings.DATA_DIR) / "models" / name
    if not dest.exists():
        shutil.copytree(source, dest)
    return f"models/{name}"


def input_texts(evaluation: Evaluation) -> list[str]:
    return [e.inputs["text"] for e in evaluation.examples.order_by("position")]


def reference_of(input_id: int) -> str | None:
    return InputRow.objects.get(pk=input_id).reference_output


def finished_evaluation(
    project: Project,
    owner: Any,
    rows: list[tuple[str, str, str, str]],
    *,
    student_model: Any = None,
    student_performance: dict[str, Any] | None = None,
) -> Evaluation:
    """A finished evaluation with fixed answers: rows of (ticket, reference, teacher's answer,
    distilled student's answer), scored by the real scoring code."""
    from evaluations import services as evaluation_services
    from evaluations.models import EvalCandidate, EvalExample, EvalOutput
    from jobs.models import Job
    from worker.taskspec import build_messages, canonical_output, parse_output

    spec = project.task_spec()
    job = Job.objects.create(
        team=project.team,
        project=project,
        kind="evaluation",
        status="succeeded",
        queue="gpu",
        created_by=owner,
    )
    evaluation = Evaluation.objects.create(
        job=job,
        project=project,
        name="fixed answers",
        options=evaluation_services.EvalOptions().as_json(),
        created_by=owner,
    )
    teacher = EvalCandidate.objects.create(
        evaluation=evaluation,
        position=0,
        role="teacher",
        source="stored",
        name="Teacher model",
        status="done",
    )
    student = EvalCandidate.objects.create(
        evaluation=evaluation,
        position=1,
        role="distilled",
        source="local",
        name="Distilled student",
        status="done",
        student_model=student_model,
        performance=student_performance or {},
    )
    for position, (text, reference, teacher_answer, student_answer) in enumerate(rows):
        example = EvalExample.objects.create(
            evaluation=evaluation,
            position=position,
            inputs={"text": text},
            messages=build_messages(spec, {"text": text}),
            reference=reference,
            reference_source="human",
            reference_label=reference,
        )
        for candidate, answer in ((teacher, teacher_answer), (student, student_answer)):
            parsed = parse_output(spec, answer)
            EvalOutput.objects.create(
                example=example,
                candidate=candidate,
                raw_text=answer,
                parsed=parsed.value,
                parse_error=parsed.error,
                canonical=None if parsed.value is None else canonical_output(spec, parsed.value),
            )
    evaluation_services.evaluation_score(evaluation=evaluation)
    evaluation.refresh_from_db()
    return evaluation


# (ticket, reference, teacher, student): what each filter should find is written next to it.
FIXED_ROWS = [
    ("my card has not arrived yet", "card_arrival", "card_arrival", "card_arrival"),  # all right
    ("where is my new card?", "card_arrival", "card_arrival", "top_up_failed"),  # student wrong
    ("I lost my card", "lost_or_stolen_card", "top_up_failed", "lost_or_stolen_card"),  # teacher
    ("top up declined", "top_up_failed", "lost_or_stolen_card", "lost_or_stolen_card"),  # both
    ("my top up failed", "top_up_failed", "top_up_failed", "no idea, sorry"),  # unparseable
]
