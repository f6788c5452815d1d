"""The audit trail's writes: every review change records one AuditEvent, in the same transaction
as the change, with the output's review state before and after it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib.auth.models import User

from projects.models import Project
from review.models import AuditEvent, ReviewRule
from teachers.models import TeacherOutput

#: The output fields a review state is made of, in the order `review_state` takes them.
STATE_FIELDS = (
    "review_status",
    "edited_value",
    "reviewed_by_id",
    "reviewed_at",
    "decided_by_rule_id",
    "review_conflict",
    "review_version",
)


def review_state(
    status: str,
    edited_value: Any,
    reviewed_by: int | None,
    reviewed_at: datetime | None,
    decided_by_rule: int | None,
    conflict: bool,
    version: int,
) -> dict[str, Any]:
    """An output's review state as JSON: what a decision records as "before", and what an undo
    puts back."""
    return {
        "status": status,
        "edited_value": edited_value,
        "reviewed_by": reviewed_by,
        "reviewed_at": reviewed_at.isoformat() if reviewed_at else None,
        "decided_by_rule": decided_by_rule,
        "conflict": conflict,
        "version": version,
    }


def output_state(output: TeacherOutput) -> dict[str, Any]:
    return review_state(*(getattr(output, name) for name in STATE_FIELDS))


def actor_name(user: User | None) -> str:
    return getattr(user, "username", "") or "someone"


def audit_record(
    *,
    project: Project,
    actor: User | None,
    action: str,
    summary: str,
    output: TeacherOutput | None = None,
    before: Any = None,
    after: Any = None,
    detail: dict[str, Any] | None = None,
    rule: ReviewRule | None = None,
    dataset_version: Any = None,
) -> AuditEvent:
    """Record one event. Later stages write to the same trail: the dataset freeze passes its
    `dataset_version` (a dataset_versions.DatasetVersion, typed loosely because that app is a
    later stage and is not imported here)."""
    return AuditEvent.objects.create(
        project=project,
        actor=actor if getattr(actor, "pk", None) else None,
        action=action,
        output=output,
        rule=rule,
        dataset_version=dataset_version,
        summary=summary[:500],
        before=before,
        after=after,
        detail=detail or {},
    )
