"""Agreement between reviewers on the outputs two of them decided (percent and Cohen's kappa
per pair), and the outputs in conflict, each with the decisions an owner chooses between."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth import get_user_model

from projects.models import Project
from review.cards import teacher_value_text
from review.models import (
    DecisionKind,
    ReviewDecision,
)
from review.queue import with_review_details
from teachers.models import ReviewStatus, TeacherOutput
from worker.datasets import overlap_agreement
from worker.taskspec import TaskSpec, canonical_output


def decision_key(spec: TaskSpec, status: str, edited_value: Any) -> str:
    """What two reviewers must both have said to agree: approve, reject, or the same edit."""
    if status == ReviewStatus.EDITED:
        return "edited:" + canonical_output(spec, edited_value)
    return status


@dataclass
class PairRow:
    reviewer_a: str
    reviewer_b: str
    n: int
    agreed: int
    percent: float | None
    kappa: float | None
    conflicts: list[int]


@dataclass
class ConflictRow:
    output: TeacherOutput
    decisions: list[ReviewDecision]
    teacher_text: str
    options: list[tuple[str, str]] = field(default_factory=list)  # (value, label) for edits


def review_agreement(*, project: Project) -> tuple[list[PairRow], list[ConflictRow]]:
    """Per pair of reviewers: percent agreement and Cohen's kappa on the outputs both decided,
    and the outputs currently in conflict, with each reviewer's decision."""
    spec = project.task_spec()
    decisions = (
        ReviewDecision.objects.filter(
            project=project,
            reviewer__isnull=False,
            undone_at__isnull=True,
            kind=DecisionKind.MANUAL,
        )
        .order_by("id")
        .values_list("output_id", "reviewer_id", "status", "edited_value")
    )
    triples = [(o, r, decision_key(spec, s, v)) for o, r, s, v in decisions]
    names = dict(
        get_user_model()
        .objects.filter(pk__in={r for _, r, _ in triples})
        .values_list("pk", "username")
    )
    pairs = [
        PairRow(
            reviewer_a=names.get(int(p.reviewer_a), "?"),
            reviewer_b=names.get(int(p.reviewer_b), "?"),
            n=p.agreement.n,
            agreed=p.agreement.agreed,
            percent=p.agreement.percent,
            kappa=p.agreement.kappa,
            conflicts=[int(i) for i in p.conflicts],
        )
        for p in overlap_agreement(triples)
    ]
    conflicts = []
    for output in with_review_details(
        TeacherOutput.objects.filter(project=project, review_conflict=True)
    ).order_by("id")[:500]:
        active = [
            d
            for d in output.decisions.all()
            if d.undone_at is None and d.reviewer_id and d.kind == DecisionKind.MANUAL
        ]
        latest: dict[int, ReviewDecision] = {}
        for d in active:
            latest[d.reviewer_id] = d  # type: ignore[index]
        row = ConflictRow(
            output=output,
            decisions=list(latest.values()),
            teacher_text=teacher_value_text(spec, output),
        )
        for d in row.decisions:
            if d.status == ReviewStatus.EDITED:
                text = canonical_output(spec, d.edited_value)
                if all(text != v for v, _ in row.options):
                    row.options.append(
                        (text, f"use {d.reviewer.username if d.reviewer else '?'}'s edit")
                    )
        conflicts.append(row)
    return pairs, conflicts
