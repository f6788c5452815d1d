"""One reviewer's decisions on one output: approve, reject or edit it, undo the last decision,
comment, and an owner's resolution of a conflict. Every one writes an AuditEvent in the same
transaction as the change it records.

Concurrency: a decision locks the output row (SELECT ... FOR UPDATE) and is accepted only
against the `review_version` the reviewer saw; the version is bumped by every change. Twenty
people pressing "approve" at the same moment therefore produce one decision and one audit row;
the others are told who decided first.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from projects.models import Project
from review.agreement import decision_key
from review.audit import actor_name, audit_record, output_state
from review.cards import pretty_value
from review.models import (
    AuditAction,
    DecisionKind,
    ReviewAssignment,
    ReviewComment,
    ReviewDecision,
)
from teachers.models import ReviewStatus, TeacherOutput
from worker.taskspec import TaskSpec, canonical_output, parse_output

ACTIONS = {
    "approve": ReviewStatus.APPROVED,
    "reject": ReviewStatus.REJECTED,
    "edit": ReviewStatus.EDITED,
}

#: A decision's reason is kept up to this many characters.
REASON_LIMIT = 2000

#: The review fields a decision changes on its output.
DECISION_FIELDS = [
    "review_status",
    "edited_value",
    "reviewed_by",
    "reviewed_at",
    "decided_by_rule",
    "review_conflict",
    "review_version",
]


class DecisionConflict(Exception):
    """Someone else changed the output after this reviewer loaded it; nothing was written."""

    def __init__(self, message: str, output: TeacherOutput) -> None:
        super().__init__(message)
        self.message = message
        self.output = output


def edit_value_parse(spec: TaskSpec, text: str) -> Any:
    """The value an edit stores, validated against the task spec (label set / JSON Schema)."""
    parsed = parse_output(spec, text)
    if not parsed.ok:
        raise ValidationError({"value": parsed.error or "this value is not valid for the task"})
    return parsed.value


def same_as_teacher(spec: TaskSpec, output: TeacherOutput, value: Any) -> bool:
    if output.parsed is None or output.parse_error:
        return False
    return canonical_output(spec, output.parsed) == canonical_output(spec, value)


def describe_decision(status: str, edited_value: Any, spec: TaskSpec) -> str:
    if status == ReviewStatus.EDITED:
        shown = pretty_value(spec, edited_value).replace("\n", " ")
        return f"edited to {shown[:120]!r}"
    return str(status)


def _requested(spec: TaskSpec, action: str, value: str) -> tuple[str, Any]:
    """The status and edited value an action asks for (an edit validated against the spec)."""
    if action not in ACTIONS:
        raise ValidationError({"action": f"unknown action {action!r}"})
    edited_value = edit_value_parse(spec, value) if action == "edit" else None
    return ACTIONS[action], edited_value


def _settled(
    spec: TaskSpec, output: TeacherOutput, status: str, edited_value: Any
) -> tuple[str, Any]:
    """An "edit" that says what the teacher said is an approval."""
    if status == ReviewStatus.EDITED and same_as_teacher(spec, output, edited_value):
        return ReviewStatus.APPROVED, None
    return status, edited_value


def _set_decision(output: TeacherOutput, user: User, status: str, edited_value: Any) -> None:
    output.review_status = status
    output.edited_value = edited_value
    output.reviewed_by = user
    output.reviewed_at = timezone.now()
    output.decided_by_rule = None


# Single decisions ------------------------------------------------------------------------------


def _is_second_opinion(output: TeacherOutput, user: User) -> bool:
    """Whether this is the second of two assigned reviewers deciding an output the first one
    already decided: their decision is recorded, and compared, without replacing the first."""
    mine = ReviewDecision.objects.filter(
        output=output, reviewer=user, undone_at__isnull=True, kind=DecisionKind.MANUAL
    ).exists()
    assignees = set(
        ReviewAssignment.objects.filter(output=output).values_list("reviewer_id", flat=True)
    )
    return (
        len(assignees) > 1
        and user.pk in assignees
        and not mine
        and output.review_status != ReviewStatus.UNREVIEWED
        and output.reviewed_by_id != user.pk
    )


def _refuse_if_changed(output: TeacherOutput, seen_version: int, *, second_opinion: bool) -> None:
    """DecisionConflict when the output is in conflict, or changed since the reviewer saw it
    (a second opinion is expected to find it decided)."""
    if second_opinion:
        return
    if output.review_conflict:
        raise DecisionConflict(
            "Reviewers disagree on this output; an owner resolves it on the agreement page.",
            output,
        )
    if output.review_version == seen_version:
        return
    if output.review_status == ReviewStatus.UNREVIEWED:
        message = "This output changed since you opened it (a decision was undone)."
    else:
        decided = output.reviewed_by.username if output.reviewed_by else "an auto rule"
        message = (
            f"{decided} decided this output first ({output.get_review_status_display().lower()}); "
            "your decision was not saved."
        )
    raise DecisionConflict(message, output)


def _decision_summary(
    user: User, output: TeacherOutput, what: str, reason: str, *, second_opinion: bool
) -> str:
    if second_opinion:
        verdict = "disagrees, conflict for an owner" if output.review_conflict else "agrees"
        summary = (
            f"{actor_name(user)} gave a second review of output #{output.pk}: {what} — {verdict}"
        )
    else:
        summary = f"{actor_name(user)} {what} output #{output.pk}"
    if reason:
        summary += f" (reason: {reason[:200]})"
    return summary


def output_decide(
    *,
    project: Project,
    user: User,
    output_id: int,
    action: str,
    seen_version: int,
    value: str = "",
    reason: str = "",
) -> TeacherOutput:
    """Approve, reject or edit one output, as the reviewer who saw `seen_version` of it.

    Raises ValidationError for a bad action or an edit the task spec refuses, DecisionConflict
    when someone else changed the output since (nothing is written then)."""
    spec = project.task_spec()
    status, edited_value = _requested(spec, action, value)
    reason = reason.strip()[:REASON_LIMIT]
    with transaction.atomic():
        output = (
            TeacherOutput.objects.select_for_update(of=("self",))
            .select_related("reviewed_by")
            .get(pk=output_id, project=project)
        )
        status, edited_value = _settled(spec, output, status, edited_value)
        second_opinion = _is_second_opinion(output, user)
        _refuse_if_changed(output, seen_version, second_opinion=second_opinion)
        before = output_state(output)
        if second_opinion:
            first = decision_key(spec, output.review_status, output.edited_value)
            output.review_conflict = first != decision_key(spec, status, edited_value)
        else:
            _set_decision(output, user, status, edited_value)
        output.review_version += 1
        output.save(update_fields=DECISION_FIELDS)
        ReviewDecision.objects.create(
            project=project,
            output=output,
            reviewer=user,
            kind=DecisionKind.MANUAL,
            status=status,
            edited_value=edited_value,
            reason=reason,
            counts_for_output=not second_opinion,
            before=before,
            version_after=output.review_version,
        )
        what = describe_decision(status, edited_value, spec)
        audit_record(
            project=project,
            actor=user,
            action=AuditAction.DECISION,
            output=output,
            summary=_decision_summary(user, output, what, reason, second_opinion=second_opinion),
            before=before,
            after=output_state(output),
            detail={"reason": reason, "second_opinion": second_opinion},
        )
    return output


def decision_undo_last(*, project: Project, user: User) -> TeacherOutput:
    """Undo this reviewer's last decision in the project (the `u` key).

    Refused when someone changed the output after it: the reviewer decides again instead."""
    last = (
        ReviewDecision.objects.filter(
            project=project, reviewer=user, kind=DecisionKind.MANUAL, undone_at__isnull=True
        )
        .order_by("-id")
        .first()
    )
    if last is None:
        raise ValidationError("You have no decision to undo in this project.")
    with transaction.atomic():
        output = TeacherOutput.objects.select_for_update().get(pk=last.output_id, project=project)
        decision = ReviewDecision.objects.select_for_update().get(pk=last.pk)
        if decision.undone_at is not None:
            raise ValidationError("That decision was already undone.")
        # Undone later decisions put the output back where this one left it; any other later
        # decision (someone else's, a bulk action, a rule) means the state moved on.
        if ReviewDecision.objects.filter(
            output=output, pk__gt=decision.pk, undone_at__isnull=True
        ).exists():
            raise DecisionConflict(
                f"Output #{output.pk} changed after your decision; decide it again instead of undoing.",
                output,
            )
        before = output_state(output)
        previous = decision.before
        if decision.counts_for_output:
            output.review_status = previous["status"]
            output.edited_value = previous["edited_value"]
            output.reviewed_by_id = previous["reviewed_by"]
            output.reviewed_at = (
                datetime.fromisoformat(previous["reviewed_at"]) if previous["reviewed_at"] else None
            )
            output.decided_by_rule_id = previous.get("decided_by_rule")
        output.review_conflict = previous["conflict"]
        output.review_version += 1
        output.save()
        decision.undone_at = timezone.now()
        decision.save(update_fields=["undone_at"])
        audit_record(
            project=project,
            actor=user,
            action=AuditAction.UNDO,
            output=output,
            summary=f"{actor_name(user)} undid their decision ({decision.status}) on output #{output.pk}",
            before=before,
            after=output_state(output),
            detail={"decision_id": decision.pk},
        )
    return output


def comment_add(*, project: Project, user: User, output_id: int, text: str) -> ReviewComment:
    text = text.strip()
    if not text:
        raise ValidationError({"text": "write something first"})
    if len(text) > 5000:
        raise ValidationError({"text": "a comment is at most 5,000 characters"})
    output = TeacherOutput.objects.get(pk=output_id, project=project)
    with transaction.atomic():
        comment = ReviewComment.objects.create(
            project=project, output=output, author=user, text=text
        )
        audit_record(
            project=project,
            actor=user,
            action=AuditAction.COMMENT,
            output=output,
            summary=f"{actor_name(user)} commented on output #{output.pk}: {text[:200]}",
            after={"comment": text},
        )
    return comment


MAX_RATIONALE_CHARS = 5000


def rationale_edit(*, project: Project, user: User, output_id: int, text: str) -> TeacherOutput:
    """A reviewer's correction of the teacher's reason. The answer's review is untouched: the
    reason is taught (rationale training) but never checked or scored. Audited."""
    text = text.strip()
    if len(text) > MAX_RATIONALE_CHARS:
        raise ValidationError(
            {"rationale": f"a rationale is at most {MAX_RATIONALE_CHARS:,} characters"}
        )
    with transaction.atomic():
        output = TeacherOutput.objects.select_for_update().get(pk=output_id, project=project)
        before = output.rationale
        if before == text:
            return output
        output.rationale = text
        output.save(update_fields=["rationale"])
        audit_record(
            project=project,
            actor=user,
            action=AuditAction.DECISION,
            output=output,
            summary=f"{actor_name(user)} edited the rationale of output #{output.pk}",
            before={"rationale": before},
            after={"rationale": text},
        )
    return output


# Conflicts --------------------------------------------------------------------------------------


def conflict_resolve(
    *, project: Project, user: User, output_id: int, action: str, value: str = ""
) -> TeacherOutput:
    """An owner settles a disagreement: approve, reject, or an edit (validated like any edit)."""
    spec = project.task_spec()
    status, edited_value = _requested(spec, action, value)
    with transaction.atomic():
        output = TeacherOutput.objects.select_for_update().get(pk=output_id, project=project)
        if not output.review_conflict:
            raise ValidationError(f"Output #{output.pk} is not in conflict (any more).")
        status, edited_value = _settled(spec, output, status, edited_value)
        before = output_state(output)
        _set_decision(output, user, status, edited_value)
        output.review_conflict = False
        output.review_version += 1
        output.save()
        ReviewDecision.objects.create(
            project=project,
            output=output,
            reviewer=user,
            kind=DecisionKind.RESOLUTION,
            status=status,
            edited_value=edited_value,
            before=before,
            version_after=output.review_version,
        )
        audit_record(
            project=project,
            actor=user,
            action=AuditAction.RESOLUTION,
            output=output,
            summary=f"{actor_name(user)} resolved the conflict on output #{output.pk}: "
            + describe_decision(status, edited_value, spec),
            before=before,
            after=output_state(output),
        )
    return output
