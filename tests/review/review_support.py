"""Helpers for the review and dataset tests: a project with teacher outputs to review."""

from __future__ import annotations

from typing import Any

from teachers.models import TeacherOutput
from tests.factories import InputRowFactory, TeacherOutputFactory, TeacherRunFactory

LABELS = ["card_arrival", "lost_or_stolen_card", "top_up_failed"]


def make_outputs(
    project: Any,
    answers: list[str],
    *,
    texts: list[str] | None = None,
    confidences: list[float | None] | None = None,
    references: list[str | None] | None = None,
) -> list[TeacherOutput]:
    """One input and one teacher output per answer, all from one teacher run."""
    run = TeacherRunFactory(project=project)
    outputs = []
    for i, answer in enumerate(answers):
        text = texts[i] if texts else f"ticket {i}: where is my new card?"
        row = InputRowFactory(
            project=project,
            data={"text": text},
            reference_output=references[i] if references else None,
        )
        outputs.append(
            TeacherOutputFactory(
                project=project,
                run=run,
                input=row,
                raw_text=answer,
                confidence=confidences[i] if confidences else None,
            )
        )
    return outputs


def decide(client: Any, output: TeacherOutput, action: str, **extra: Any) -> Any:
    """POST a decision the way the queue's script does (it asks for the card back)."""
    from django.urls import reverse

    output.refresh_from_db()
    return client.post(
        reverse("review:review_decide", args=[output.project_id, output.pk]),
        {"action": action, "seen_version": output.review_version, **extra},
        HTTP_X_REVIEW_FRAGMENT="1",
    )
