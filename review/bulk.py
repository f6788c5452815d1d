"""Decisions over many outputs at once: a bulk approve/reject over a queue filter, and one
output's decision applied to every identical unreviewed output. Both confirm a count first and
write nothing when the count changed meanwhile; the rows are locked, one decision is written per
output, and one audit event for the whole action."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F, QuerySet
from django.utils import timezone

from projects.models import Project
from review.audit import STATE_FIELDS, actor_name, audit_record, review_state
from review.decisions import ACTIONS, REASON_LIMIT, describe_decision
from review.models import AuditAction, DecisionKind, ReviewDecision, ReviewRule
from review.queue import ReviewFilters, outputs_for_review
from teachers.models import ReviewStatus, TeacherOutput

#: Rows per UPDATE / INSERT / fetch when many outputs change at once.
BATCH = 5000

BULK_ACTIONS = ("approve", "reject")


def locked_states(rows: QuerySet[TeacherOutput]) -> list[tuple[int, dict[str, Any]]]:
    """Lock `rows` and return each one's id and review state."""
    locked = rows.select_for_update(of=("self",)).values_list("pk", *STATE_FIELDS)
    return [(pk, review_state(*state)) for pk, *state in locked.order_by("pk")]


def apply_many(
    *,
    project: Project,
    actor: User | None,
    rows: Sequence[tuple[int, dict[str, Any]]],
    status: str,
    edited_value: Any,
    kind: str,
    reason: str = "",
    rule: ReviewRule | None = None,
) -> None:
    """Write one decision per (output id, before-state) and move the outputs, in batches."""
    now = timezone.now()
    reviewer = actor if kind != DecisionKind.RULE else None
    ids = [pk for pk, _ in rows]
    for start in range(0, len(ids), BATCH):
        TeacherOutput.objects.filter(pk__in=ids[start : start + BATCH]).update(
            review_status=status,
            edited_value=edited_value,
            reviewed_by=reviewer,
            reviewed_at=now,
            decided_by_rule=rule,
            review_version=F("review_version") + 1,
        )
    ReviewDecision.objects.bulk_create(
        [
            ReviewDecision(
                project=project,
                output_id=pk,
                reviewer=reviewer,
                kind=kind,
                status=status,
                edited_value=edited_value,
                reason=reason,
                rule=rule,
                before=before,
                version_after=before["version"] + 1,
            )
            for pk, before in rows
        ],
        batch_size=BATCH,
    )


# Bulk over a filter -----------------------------------------------------------------------------


def _bulk_candidates(
    *, project: Project, user: User, filters: ReviewFilters, action: str
) -> QuerySet[TeacherOutput]:
    rows = outputs_for_review(project=project, user=user, filters=filters.without_sort()).filter(
        review_conflict=False
    )
    if action == "approve":
        return rows.exclude(review_status__in=[ReviewStatus.APPROVED, ReviewStatus.EDITED])
    return rows.exclude(review_status=ReviewStatus.REJECTED)


def _check_bulk_action(action: str) -> None:
    if action not in BULK_ACTIONS:
        raise ValidationError({"action": "bulk actions are approve or reject"})


def bulk_count(*, project: Project, user: User, filters: ReviewFilters, action: str) -> int:
    """How many outputs a bulk action over this filter would change (the confirmation's count)."""
    _check_bulk_action(action)
    return _bulk_candidates(project=project, user=user, filters=filters, action=action).count()


def bulk_decide(
    *,
    project: Project,
    user: User,
    filters: ReviewFilters,
    action: str,
    expected_count: int,
    reason: str = "",
) -> int:
    """Approve or reject every output the filter matches (that the action would change).

    `expected_count` is the count the confirmation showed; if the filter now matches a different
    number (someone reviewed meanwhile), nothing is written and ValidationError asks again."""
    _check_bulk_action(action)
    status = ACTIONS[action]
    reason = reason.strip()[:REASON_LIMIT]
    with transaction.atomic():
        rows = locked_states(
            _bulk_candidates(project=project, user=user, filters=filters, action=action)
        )
        if len(rows) != expected_count:
            raise ValidationError(
                f"The filter now matches {len(rows):,} outputs to {action}, not {expected_count:,} "
                "(someone reviewed meanwhile). Check the new count and confirm again."
            )
        if not rows:
            raise ValidationError("Nothing to change: no output matches this filter.")
        apply_many(
            project=project,
            actor=user,
            rows=rows,
            status=status,
            edited_value=None,
            kind=DecisionKind.BULK,
            reason=reason,
        )
        before_counts = Counter(before["status"] for _, before in rows)
        audit_record(
            project=project,
            actor=user,
            action=AuditAction.BULK,
            summary=(
                f"{actor_name(user)} bulk-{action}d {len(rows):,} outputs matching: "
                + "; ".join(filters.describe())
            ),
            before={"status_counts": dict(before_counts)},
            after={"status_counts": {status: len(rows)}},
            detail={
                "filters": filters.as_dict(),
                "count": len(rows),
                "output_ids": [pk for pk, _ in rows],
                "reason": reason,
            },
        )
    return len(rows)


# Identical outputs ------------------------------------------------------------------------------


def _identical_candidates(*, project: Project, output: TeacherOutput) -> QuerySet[TeacherOutput]:
    return TeacherOutput.objects.filter(
        project=project,
        raw_text=output.raw_text,
        review_status=ReviewStatus.UNREVIEWED,
        review_conflict=False,
    ).exclude(pk=output.pk)


def identical_count(*, project: Project, output: TeacherOutput) -> int:
    """How many other, still unreviewed outputs say exactly what this one says."""
    return _identical_candidates(project=project, output=output).count()


def correction_apply_to_identical(
    *, project: Project, user: User, output_id: int, expected_count: int
) -> int:
    """Give every unreviewed output identical to this one (same teacher answer, character for
    character) the decision this one got: the same edit, approval or rejection."""
    spec = project.task_spec()
    with transaction.atomic():
        source = TeacherOutput.objects.select_for_update().get(pk=output_id, project=project)
        if source.review_status == ReviewStatus.UNREVIEWED:
            raise ValidationError("Decide this output first; its decision is what gets applied.")
        rows = locked_states(_identical_candidates(project=project, output=source))
        if len(rows) != expected_count:
            raise ValidationError(
                f"{len(rows):,} identical outputs are waiting now, not {expected_count:,}. "
                "Check the new count and confirm again."
            )
        if not rows:
            raise ValidationError("No other unreviewed output is identical to this one.")
        apply_many(
            project=project,
            actor=user,
            rows=rows,
            status=source.review_status,
            edited_value=source.edited_value,
            kind=DecisionKind.CORRECTION,
            reason=f"same decision as output #{source.pk}",
        )
        what = describe_decision(source.review_status, source.edited_value, spec)
        audit_record(
            project=project,
            actor=user,
            action=AuditAction.CORRECTION,
            output=source,
            summary=(
                f"{actor_name(user)} applied output #{source.pk}'s decision ({what}) to "
                f"{len(rows):,} identical outputs"
            ),
            before={"status_counts": {ReviewStatus.UNREVIEWED: len(rows)}},
            after={"status": source.review_status, "edited_value": source.edited_value},
            detail={"source_output": source.pk, "output_ids": [pk for pk, _ in rows]},
        )
    return len(rows)
