"""Writes for review: decisions (single, bulk, by rule, by correction), undo, comments,
assignments, conflict resolution, automatic checks and the LLM judge. Every one of them writes
an AuditEvent in the same transaction as the change it records.

Concurrency: a decision locks the output row (SELECT ... FOR UPDATE) and is accepted only
against the `review_version` the reviewer saw; the version is bumped by every change. Twenty
people pressing "approve" at the same moment therefore produce one decision and one audit row;
the others are told who decided first.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Exists, F, OuterRef
from django.utils import timezone

from projects.models import Project
from review.models import (
    AuditAction,
    AuditEvent,
    DecisionKind,
    ReviewAssignment,
    ReviewComment,
    ReviewDecision,
    ReviewRule,
    ReviewSettings,
)
from review.selectors import ReviewFilters, decision_key, outputs_for_review, pretty_value
from teachers.checks import JUDGE_CODES, flags_replace, population_checks_run
from teachers.models import ReviewStatus, TeacherOutput
from worker import checks
from worker.datasets import DatasetError, assign_reviewers
from worker.taskspec import TaskSpec, canonical_output, parse_output

logger = logging.getLogger(__name__)

ACTIONS = {
    "approve": ReviewStatus.APPROVED,
    "reject": ReviewStatus.REJECTED,
    "edit": ReviewStatus.EDITED,
}


class DecisionConflict(Exception):
    """Someone else changed the output after this reviewer loaded it; nothing was written."""

    def __init__(self, message: str, output: TeacherOutput) -> None:
        super().__init__(message)
        self.message = message
        self.output = output


# Helpers ---------------------------------------------------------------------------------------


def _state(output: TeacherOutput) -> dict[str, Any]:
    return {
        "status": output.review_status,
        "edited_value": output.edited_value,
        "reviewed_by": output.reviewed_by_id,
        "reviewed_at": output.reviewed_at.isoformat() if output.reviewed_at else None,
        "decided_by_rule": output.decided_by_rule_id,
        "conflict": output.review_conflict,
        "version": output.review_version,
    }


def _audit(
    *,
    project: Project,
    actor: Any,
    action: str,
    summary: str,
    output: TeacherOutput | None = None,
    before: Any = None,
    after: Any = None,
    detail: dict[str, Any] | None = None,
    rule: ReviewRule | None = None,
    dataset_version: Any = None,
) -> AuditEvent:
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


def audit_record(**kwargs: Any) -> AuditEvent:
    """For other modules (dataset freeze) that record in the same trail."""
    return _audit(**kwargs)


def edit_value_parse(spec: TaskSpec, text: str) -> Any:
    """The value an edit stores, validated against the task spec (label set / JSON Schema)."""
    parsed = parse_output(spec, text)
    if not parsed.ok:
        raise ValidationError({"value": parsed.error or "this value is not valid for the task"})
    return parsed.value


def _same_as_teacher(spec: TaskSpec, output: TeacherOutput, value: Any) -> bool:
    if output.parsed is None or output.parse_error:
        return False
    return canonical_output(spec, output.parsed) == canonical_output(spec, value)


def _who(user: Any) -> str:
    return getattr(user, "username", "") or "someone"


def _describe(status: str, edited_value: Any, spec: TaskSpec) -> str:
    if status == ReviewStatus.EDITED:
        shown = pretty_value(spec, edited_value).replace("\n", " ")
        return f"edited to {shown[:120]!r}"
    return str(status)


# Single decisions ------------------------------------------------------------------------------


def output_decide(
    *,
    project: Project,
    user: Any,
    output_id: int,
    action: str,
    seen_version: int,
    value: str = "",
    reason: str = "",
) -> TeacherOutput:
    """Approve, reject or edit one output, as the reviewer who saw `seen_version` of it.

    Raises ValidationError for a bad action or an edit the task spec refuses, DecisionConflict
    when someone else changed the output since (nothing is written then)."""
    if action not in ACTIONS:
        raise ValidationError({"action": f"unknown action {action!r}"})
    spec = project.task_spec()
    status = ACTIONS[action]
    edited_value = None
    if action == "edit":
        edited_value = edit_value_parse(spec, value)
    reason = reason.strip()[:2000]
    with transaction.atomic():
        output = (
            TeacherOutput.objects.select_for_update(of=("self",))
            .select_related("reviewed_by")
            .get(pk=output_id, project=project)
        )
        if action == "edit" and _same_as_teacher(spec, output, edited_value):
            # An "edit" that says what the teacher said is an approval.
            status, edited_value = ReviewStatus.APPROVED, None
        mine = ReviewDecision.objects.filter(
            output=output, reviewer=user, undone_at__isnull=True, kind=DecisionKind.MANUAL
        ).exists()
        assignees = set(
            ReviewAssignment.objects.filter(output=output).values_list("reviewer_id", flat=True)
        )
        second_opinion = (
            len(assignees) > 1
            and user.pk in assignees
            and not mine
            and output.review_status != ReviewStatus.UNREVIEWED
            and output.reviewed_by_id != user.pk
        )
        if output.review_conflict and not second_opinion:
            raise DecisionConflict(
                "Reviewers disagree on this output; an owner resolves it on the agreement page.",
                output,
            )
        if not second_opinion and output.review_version != seen_version:
            decided = output.reviewed_by.username if output.reviewed_by else "an auto rule"
            if output.review_status == ReviewStatus.UNREVIEWED:
                message = "This output changed since you opened it (a decision was undone)."
            else:
                message = (
                    f"{decided} decided this output first ({output.get_review_status_display().lower()}); "
                    "your decision was not saved."
                )
            raise DecisionConflict(message, output)
        before = _state(output)
        if second_opinion:
            agrees = decision_key(spec, output.review_status, output.edited_value) == decision_key(
                spec, status, edited_value
            )
            output.review_conflict = not agrees
        else:
            output.review_status = status
            output.edited_value = edited_value
            output.reviewed_by = user
            output.reviewed_at = timezone.now()
            output.decided_by_rule = None
        output.review_version += 1
        output.save(
            update_fields=[
                "review_status",
                "edited_value",
                "reviewed_by",
                "reviewed_at",
                "decided_by_rule",
                "review_conflict",
                "review_version",
            ]
        )
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
        what = _describe(status, edited_value, spec)
        if second_opinion:
            summary = f"{_who(user)} gave a second review of output #{output.pk}: {what} — " + (
                "disagrees, conflict for an owner" if output.review_conflict else "agrees"
            )
        else:
            summary = f"{_who(user)} {what} output #{output.pk}"
        if reason:
            summary += f" (reason: {reason[:200]})"
        _audit(
            project=project,
            actor=user,
            action=AuditAction.DECISION,
            output=output,
            summary=summary,
            before=before,
            after=_state(output),
            detail={"reason": reason, "second_opinion": second_opinion},
        )
    return output


def decision_undo_last(*, project: Project, user: Any) -> TeacherOutput:
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
        before = _state(output)
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
        _audit(
            project=project,
            actor=user,
            action=AuditAction.UNDO,
            output=output,
            summary=f"{_who(user)} undid their decision ({decision.status}) on output #{output.pk}",
            before=before,
            after=_state(output),
            detail={"decision_id": decision.pk},
        )
    return output


def comment_add(*, project: Project, user: Any, output_id: int, text: str) -> ReviewComment:
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
        _audit(
            project=project,
            actor=user,
            action=AuditAction.COMMENT,
            output=output,
            summary=f"{_who(user)} commented on output #{output.pk}: {text[:200]}",
            after={"comment": text},
        )
    return comment


# Bulk and corrections --------------------------------------------------------------------------


def _bulk_candidates(*, project: Project, user: Any, filters: ReviewFilters, action: str) -> Any:
    rows = outputs_for_review(project=project, user=user, filters=filters.without_sort()).filter(
        review_conflict=False
    )
    if action == "approve":
        return rows.exclude(review_status__in=[ReviewStatus.APPROVED, ReviewStatus.EDITED])
    return rows.exclude(review_status=ReviewStatus.REJECTED)


def bulk_count(*, project: Project, user: Any, filters: ReviewFilters, action: str) -> int:
    """How many outputs a bulk action over this filter would change (the confirmation's count)."""
    if action not in ("approve", "reject"):
        raise ValidationError({"action": "bulk actions are approve or reject"})
    return int(_bulk_candidates(project=project, user=user, filters=filters, action=action).count())


def _apply_many(
    *,
    project: Project,
    actor: Any,
    rows: Sequence[tuple[int, dict[str, Any]]],
    status: str,
    edited_value: Any,
    kind: str,
    reason: str = "",
    rule: ReviewRule | None = None,
) -> None:
    """Write one decision per (output id, before-state) and move the outputs, in batches."""
    now = timezone.now()
    ids = [pk for pk, _ in rows]
    for start in range(0, len(ids), 5000):
        chunk = ids[start : start + 5000]
        TeacherOutput.objects.filter(pk__in=chunk).update(
            review_status=status,
            edited_value=edited_value,
            reviewed_by=actor if kind != DecisionKind.RULE else None,
            reviewed_at=now,
            decided_by_rule=rule,
            review_version=F("review_version") + 1,
        )
    ReviewDecision.objects.bulk_create(
        [
            ReviewDecision(
                project=project,
                output_id=pk,
                reviewer=actor if kind != DecisionKind.RULE else None,
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
        batch_size=5000,
    )


def _locked_states(rows: Any) -> list[tuple[int, dict[str, Any]]]:
    locked = rows.select_for_update(of=("self",)).values_list(
        "pk",
        "review_status",
        "edited_value",
        "reviewed_by_id",
        "reviewed_at",
        "decided_by_rule_id",
        "review_conflict",
        "review_version",
    )
    return [
        (
            pk,
            {
                "status": status,
                "edited_value": edited,
                "reviewed_by": by,
                "reviewed_at": at.isoformat() if at else None,
                "decided_by_rule": rule,
                "conflict": conflict,
                "version": version,
            },
        )
        for pk, status, edited, by, at, rule, conflict, version in locked.order_by("pk")
    ]


def bulk_decide(
    *,
    project: Project,
    user: Any,
    filters: ReviewFilters,
    action: str,
    expected_count: int,
    reason: str = "",
) -> int:
    """Approve or reject every output the filter matches (that the action would change).

    `expected_count` is the count the confirmation showed; if the filter now matches a different
    number (someone reviewed meanwhile), nothing is written and ValidationError asks again."""
    if action not in ("approve", "reject"):
        raise ValidationError({"action": "bulk actions are approve or reject"})
    status = ACTIONS[action]
    with transaction.atomic():
        rows = _locked_states(
            _bulk_candidates(project=project, user=user, filters=filters, action=action)
        )
        if len(rows) != expected_count:
            raise ValidationError(
                f"The filter now matches {len(rows):,} outputs to {action}, not {expected_count:,} "
                "(someone reviewed meanwhile). Check the new count and confirm again."
            )
        if not rows:
            raise ValidationError("Nothing to change: no output matches this filter.")
        _apply_many(
            project=project,
            actor=user,
            rows=rows,
            status=status,
            edited_value=None,
            kind=DecisionKind.BULK,
            reason=reason.strip()[:2000],
        )
        before_counts = Counter(before["status"] for _, before in rows)
        _audit(
            project=project,
            actor=user,
            action=AuditAction.BULK,
            summary=(
                f"{_who(user)} bulk-{action}d {len(rows):,} outputs matching: "
                + "; ".join(filters.describe())
            ),
            before={"status_counts": dict(before_counts)},
            after={"status_counts": {status: len(rows)}},
            detail={
                "filters": filters.as_dict(),
                "count": len(rows),
                "output_ids": [pk for pk, _ in rows],
                "reason": reason.strip()[:2000],
            },
        )
    return len(rows)


def _identical_candidates(*, project: Project, output: TeacherOutput) -> Any:
    return TeacherOutput.objects.filter(
        project=project,
        raw_text=output.raw_text,
        review_status=ReviewStatus.UNREVIEWED,
        review_conflict=False,
    ).exclude(pk=output.pk)


def identical_count(*, project: Project, output: TeacherOutput) -> int:
    """How many other, still unreviewed outputs say exactly what this one says."""
    return int(_identical_candidates(project=project, output=output).count())


def correction_apply_to_identical(
    *, project: Project, user: Any, output_id: int, expected_count: int
) -> int:
    """Give every unreviewed output identical to this one (same teacher answer, character for
    character) the decision this one got: the same edit, approval or rejection."""
    spec = project.task_spec()
    with transaction.atomic():
        source = TeacherOutput.objects.select_for_update().get(pk=output_id, project=project)
        if source.review_status == ReviewStatus.UNREVIEWED:
            raise ValidationError("Decide this output first; its decision is what gets applied.")
        rows = _locked_states(_identical_candidates(project=project, output=source))
        if len(rows) != expected_count:
            raise ValidationError(
                f"{len(rows):,} identical outputs are waiting now, not {expected_count:,}. "
                "Check the new count and confirm again."
            )
        if not rows:
            raise ValidationError("No other unreviewed output is identical to this one.")
        _apply_many(
            project=project,
            actor=user,
            rows=rows,
            status=source.review_status,
            edited_value=source.edited_value,
            kind=DecisionKind.CORRECTION,
            reason=f"same decision as output #{source.pk}",
        )
        what = _describe(source.review_status, source.edited_value, spec)
        _audit(
            project=project,
            actor=user,
            action=AuditAction.CORRECTION,
            output=source,
            summary=(
                f"{_who(user)} applied output #{source.pk}'s decision ({what}) to "
                f"{len(rows):,} identical outputs"
            ),
            before={"status_counts": {ReviewStatus.UNREVIEWED: len(rows)}},
            after={"status": source.review_status, "edited_value": source.edited_value},
            detail={"source_output": source.pk, "output_ids": [pk for pk, _ in rows]},
        )
    return len(rows)


# Conflicts --------------------------------------------------------------------------------------


def conflict_resolve(
    *, project: Project, user: Any, output_id: int, action: str, value: str = ""
) -> TeacherOutput:
    """An owner settles a disagreement: approve, reject, or an edit (validated like any edit)."""
    if action not in ACTIONS:
        raise ValidationError({"action": f"unknown action {action!r}"})
    spec = project.task_spec()
    edited_value = edit_value_parse(spec, value) if action == "edit" else None
    status = ACTIONS[action]
    with transaction.atomic():
        output = TeacherOutput.objects.select_for_update().get(pk=output_id, project=project)
        if not output.review_conflict:
            raise ValidationError(f"Output #{output.pk} is not in conflict (any more).")
        if action == "edit" and _same_as_teacher(spec, output, edited_value):
            status, edited_value = ReviewStatus.APPROVED, None
        before = _state(output)
        output.review_status = status
        output.edited_value = edited_value
        output.reviewed_by = user
        output.reviewed_at = timezone.now()
        output.decided_by_rule = None
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
        _audit(
            project=project,
            actor=user,
            action=AuditAction.RESOLUTION,
            output=output,
            summary=f"{_who(user)} resolved the conflict on output #{output.pk}: "
            + _describe(status, edited_value, spec),
            before=before,
            after=_state(output),
        )
    return output


# Assignment -------------------------------------------------------------------------------------


def assignments_create(
    *, project: Project, user: Any, reviewers: Sequence[Any], overlap_percent: float, seed: int = 0
) -> dict[str, Any]:
    """Split the unreviewed outputs among `reviewers`; `overlap_percent` of them go to two
    reviewers, so agreement can be measured. Replaces earlier assignments of those outputs."""
    if not reviewers:
        raise ValidationError({"reviewers": "choose at least one reviewer"})
    if not 0 <= overlap_percent <= 100:
        raise ValidationError({"overlap_percent": "between 0 and 100"})
    if len(reviewers) < 2 and overlap_percent > 0:
        raise ValidationError({"overlap_percent": "overlap needs at least two reviewers"})
    with transaction.atomic():
        ids = list(
            TeacherOutput.objects.filter(
                project=project, review_status=ReviewStatus.UNREVIEWED, review_conflict=False
            ).values_list("pk", flat=True)
        )
        if not ids:
            raise ValidationError("There are no unreviewed outputs to assign.")
        try:
            plan = assign_reviewers(
                ids, [r.pk for r in reviewers], overlap_percent / 100.0, seed=seed
            )
        except DatasetError as exc:
            raise ValidationError(str(exc)) from None
        ReviewAssignment.objects.filter(project=project, output_id__in=ids).delete()
        ReviewAssignment.objects.bulk_create(
            [
                ReviewAssignment(project=project, output_id=item, reviewer_id=reviewer)
                for item, chosen in plan.items()
                for reviewer in chosen
            ],
            batch_size=5000,
        )
        per_reviewer = Counter(r for chosen in plan.values() for r in chosen)
        names = {r.pk: r.username for r in reviewers}
        overlap_items = sum(1 for chosen in plan.values() if len(chosen) > 1)
        result = {
            "outputs": len(ids),
            "overlap_outputs": overlap_items,
            "per_reviewer": {names[k]: v for k, v in sorted(per_reviewer.items())},
            "overlap_percent": overlap_percent,
            "seed": seed,
        }
        _audit(
            project=project,
            actor=user,
            action=AuditAction.ASSIGNMENT,
            summary=(
                f"{_who(user)} assigned {len(ids):,} unreviewed outputs to "
                f"{', '.join(names.values())} with {overlap_percent:g} % overlap"
            ),
            after=result,
        )
    return result


# Auto rules ------------------------------------------------------------------------------------


def rule_create(*, project: Project, user: Any, name: str, definition: Any) -> ReviewRule:
    try:
        rule = checks.validate_rule(definition)
    except checks.RuleError as exc:
        raise ValidationError({"definition": str(exc)}) from None
    name = name.strip() or _rule_title(rule.to_dict())
    with transaction.atomic():
        last = ReviewRule.objects.filter(project=project).order_by("-position").first()
        created = ReviewRule.objects.create(
            project=project,
            name=name[:120],
            definition=rule.to_dict(),
            position=(last.position + 1) if last else 0,
            created_by=user,
        )
        _audit(
            project=project,
            actor=user,
            action=AuditAction.RULE_CHANGED,
            rule=created,
            summary=f"{_who(user)} added the auto rule {name!r}: {_rule_title(created.definition)}",
            after=created.definition,
        )
    return created


def rule_delete(*, project: Project, user: Any, rule: ReviewRule) -> None:
    with transaction.atomic():
        _audit(
            project=project,
            actor=user,
            action=AuditAction.RULE_CHANGED,
            summary=f"{_who(user)} deleted the auto rule {rule.name!r}",
            before=rule.definition,
            detail={"rule_id": rule.pk, "name": rule.name},
        )
        rule.delete()


def _rule_title(definition: dict[str, Any]) -> str:
    when = definition.get("when", {})
    parts = []
    if when.get("unflagged") is True:
        parts.append("no flags")
    if when.get("unflagged") is False:
        parts.append("any flag")
    if when.get("flag"):
        parts.append("flag " + " or ".join(checks.FLAG_CODES.get(c, c) for c in when["flag"]))
    if when.get("without_flag"):
        parts.append("no " + " / ".join(checks.FLAG_CODES.get(c, c) for c in when["without_flag"]))
    for key, words in (
        ("min_confidence", "confidence ≥"),
        ("max_confidence", "confidence ≤"),
        ("min_judge_score", "judge score ≥"),
        ("max_judge_score", "judge score ≤"),
    ):
        if key in when:
            parts.append(f"{words} {when[key]:g}")
    return f"{definition.get('action', '?')} when " + " and ".join(parts)


rule_title = _rule_title


def rules_apply(*, project: Project, user: Any) -> dict[str, int]:
    """Apply the active auto rules, in order, to unreviewed outputs (not in conflict, not
    assigned to a person). Each output gets the first matching rule's decision, recorded as the
    rule's, with one audit event per rule."""
    rules = list(
        ReviewRule.objects.filter(project=project, is_active=True).order_by("position", "id")
    )
    applied: dict[str, int] = {}
    if not rules:
        return applied
    typed = [checks.validate_rule(r.definition) for r in rules]
    with transaction.atomic():
        candidates = (
            TeacherOutput.objects.filter(
                project=project, review_status=ReviewStatus.UNREVIEWED, review_conflict=False
            )
            .exclude(Exists(ReviewAssignment.objects.filter(output=OuterRef("pk"))))
            .values_list("pk", "raw_text", "confidence", "judge_score", "flag_codes")
        )
        matched: dict[int, list[int]] = defaultdict(list)
        for pk, raw, confidence, judge_score, codes in candidates.iterator(chunk_size=5000):
            item = checks.OutputToCheck(
                output_id=pk, raw=raw, confidence=confidence, judge_score=judge_score
            )
            flags = [checks.Flag(code, "") for code in codes or []]
            hit = checks.first_matching_rule(typed, item, flags)
            if hit is not None:
                matched[hit[0]].append(pk)
        for index, ids in sorted(matched.items()):
            rule = rules[index]
            rows = _locked_states(
                TeacherOutput.objects.filter(pk__in=ids, review_status=ReviewStatus.UNREVIEWED)
            )
            if not rows:
                continue
            status = ACTIONS[rule.action]
            _apply_many(
                project=project,
                actor=user,
                rows=rows,
                status=status,
                edited_value=None,
                kind=DecisionKind.RULE,
                rule=rule,
                reason=f"auto rule {rule.name!r}",
            )
            _audit(
                project=project,
                actor=user,
                action=AuditAction.RULE_APPLIED,
                rule=rule,
                summary=(
                    f"Auto rule {rule.name!r} {status} {len(rows):,} outputs "
                    f"({_rule_title(rule.definition)})"
                    + (f", run by {_who(user)}" if getattr(user, "pk", None) else "")
                ),
                before={"status_counts": {ReviewStatus.UNREVIEWED: len(rows)}},
                after={"status_counts": {status: len(rows)}},
                detail={"rule": rule.definition, "output_ids": [pk for pk, _ in rows]},
            )
            applied[rule.name] = len(rows)
    return applied


# Automatic checks -------------------------------------------------------------------------------


# LLM judge --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JudgeSetup:
    rubric: checks.JudgeRubric
    credential_id: int
    model: str


def review_settings_for(*, project: Project) -> ReviewSettings:
    settings_row, _ = ReviewSettings.objects.get_or_create(project=project)
    return settings_row


def judge_settings_update(
    *,
    project: Project,
    user: Any,
    rubric: str,
    scale: str,
    pass_score: float | None,
    credential: Any,
    model: str,
) -> ReviewSettings:
    if credential is not None and credential.team_id != project.team_id:
        raise ValidationError({"credential": "choose one of this team's credentials"})
    if scale not in ("1-5", "0-1"):
        raise ValidationError({"scale": "the scale is 1-5 or 0-1"})
    low, high = (1.0, 5.0) if scale == "1-5" else (0.0, 1.0)
    if pass_score is not None and not low <= pass_score <= high:
        raise ValidationError({"pass_score": f"on the {scale} scale, between {low:g} and {high:g}"})
    row = review_settings_for(project=project)
    row.judge_rubric = rubric.strip()
    row.judge_scale = scale
    row.judge_pass_score = pass_score
    row.judge_credential = credential
    row.judge_model = model.strip()
    row.save()
    return row


def _judge_setup(project: Project) -> JudgeSetup:
    row = review_settings_for(project=project)
    if not row.judge_rubric:
        raise ValidationError("Write the judge's rubric first.")
    if row.judge_credential_id is None or not row.judge_model:
        raise ValidationError("Choose the judge's credential and model first.")
    return JudgeSetup(
        rubric=checks.JudgeRubric(
            text=row.judge_rubric,
            scale=row.judge_scale,  # type: ignore[arg-type]
            pass_score=row.judge_pass_score,
        ),
        credential_id=row.judge_credential_id,
        model=row.judge_model,
    )


def _judge_price(project: Project, model: str, provider: str) -> Any:
    """The team's price for the judge model (the same lookup as teacher runs)."""
    from teachers.services import price_for_model

    price = price_for_model(team=project.team, model=model, provider=provider)
    if price is None:
        raise ValidationError(
            f"No price for the judge model {model!r}: add it to the team's price table, so the "
            "judge's calls can be metered."
        )
    return price


def judge_run(
    *,
    project: Project,
    progress: Callable[[int, int, dict[str, Any]], None],
    scope: Any = None,
    chunk_size: int = 64,
) -> dict[str, Any]:
    """Ask the LLM judge about each unreviewed output (or `scope`) through the teacher engine
    (worker.teacher_runner), with the team's response cache, and record a score, a reason and
    judge flags. `progress(done, total, figures)` may raise to stop (cancel)."""
    from teachers.calls import TeamResponseCache, teacher_calls_run
    from teams.models import ProviderCredential
    from worker.teachers import TeacherRequest, TeacherResponse

    setup = _judge_setup(project)
    spec = project.task_spec()
    credential = ProviderCredential.objects.get(pk=setup.credential_id, team=project.team)
    price = _judge_price(project, setup.model, credential.provider)
    rows = (
        scope
        if scope is not None
        else TeacherOutput.objects.filter(project=project, review_status=ReviewStatus.UNREVIEWED)
    )
    rows = rows.filter(project=project).order_by("pk")
    total = rows.count()
    done = 0
    cost = Decimal(0)
    calls = cache_hits = failed = low = 0
    progress(0, total, {})
    config = credential.provider_config_dangerously()
    batch: list[TeacherOutput] = []

    def flush() -> None:
        nonlocal done, cost, calls, cache_hits, failed, low
        requests = []
        for output in batch:
            messages = checks.build_judge_messages(
                setup.rubric, spec, output.input.data, output.raw_text
            )
            requests.append(
                TeacherRequest(
                    custom_id=f"judge-{output.pk}",
                    messages=messages,
                    model=setup.model,
                    temperature=0.0,
                    max_tokens=400,
                    output_kind="text",
                )
            )
        cache = TeamResponseCache.load(team_id=project.team_id, config=config, requests=requests)
        answers: dict[str, TeacherResponse] = {}

        def on_result(request: Any, key: str, response: TeacherResponse, usd: Decimal) -> None:
            answers[request.custom_id] = response

        summary = teacher_calls_run(
            requests, config, price=price, concurrency=8, cache=cache, on_result=on_result
        )
        if summary.stopped is not None and not answers:
            raise RuntimeError(f"the judge could not be reached: {summary.stopped_reason}")
        cost += summary.cost_usd
        calls += summary.calls
        cache_hits += summary.cache_hits
        flags: dict[int, list[checks.Flag]] = {}
        updated = []
        for output in batch:
            response = answers.get(f"judge-{output.pk}")

            def call(_messages: list[dict[str, str]], response: Any = response) -> str:
                if response is None:
                    raise RuntimeError(summary.stopped_reason or "no answer")
                if not response.ok:
                    raise RuntimeError(response.error)
                return str(response.raw_text)

            verdict, found = checks.judge_output(
                call, setup.rubric, spec, output.input.data, output.raw_text
            )
            failed += int(verdict.score is None)
            low += int(any(f.code == checks.JUDGE_LOW_SCORE for f in found))
            output.judge_score = verdict.normalised
            output.judge_reason = (verdict.reason or verdict.error)[:5000]
            updated.append(output)
            flags[output.pk] = found
        with transaction.atomic():
            TeacherOutput.objects.bulk_update(updated, ["judge_score", "judge_reason"])
            flags_replace(
                project=project,
                codes=JUDGE_CODES,
                flags=flags,
                scope=TeacherOutput.objects.filter(pk__in=[o.pk for o in batch]),
            )
        done += len(batch)
        batch.clear()
        progress(done, total, {"judge cost": f"${cost:.4f}", "judged": done})

    for output in rows.select_related("input").iterator(chunk_size=chunk_size):
        batch.append(output)
        if len(batch) >= chunk_size:
            flush()
    if batch:
        flush()
    return {
        "judged": done,
        "judge_calls": calls,
        "judge_cache_hits": cache_hits,
        "judge_low_scores": low,
        "judge_errors": failed,
        "judge_cost_usd": f"{cost:.6f}",
    }


# The checks job -------------------------------------------------------------------------------


def checks_start(*, project: Project, user: Any, judge: bool, apply_rules: bool) -> Any:
    """Start the checks job: population checks, then (optionally) the judge and the rules."""
    from jobs.models import JobKind
    from jobs.services import job_create

    if not TeacherOutput.objects.filter(project=project).exists():
        raise ValidationError("There are no teacher outputs to check yet.")
    if judge:
        _judge_setup(project)  # refuse now, with the message, rather than fail in the worker
        row = review_settings_for(project=project)
        _judge_price(project, row.judge_model, row.judge_credential.provider)  # type: ignore[union-attr]
    return job_create(
        team=project.team,
        project=project,
        kind=JobKind.REVIEW_CHECKS,
        user=user,
        params={"judge": bool(judge), "apply_rules": bool(apply_rules)},
    )


def checks_job_run(
    *, job: Any, progress: Callable[[int, int, dict[str, Any]], None]
) -> dict[str, Any]:
    project = Project.objects.get(pk=job.project_id)
    result: dict[str, Any] = {}
    result.update(population_checks_run(project=project))
    if job.params.get("judge"):
        result.update(judge_run(project=project, progress=progress))
    if job.params.get("apply_rules"):
        applied = rules_apply(project=project, user=job.created_by)
        result["decided_by_rules"] = sum(applied.values())
    _audit(
        project=project,
        actor=job.created_by,
        action=AuditAction.CHECKS,
        summary=(
            f"Automatic checks ran over {result['outputs_checked']:,} outputs"
            + (" with the LLM judge" if job.params.get("judge") else "")
            + (
                f"; auto rules decided {result['decided_by_rules']:,}"
                if "decided_by_rules" in result
                else ""
            )
        ),
        after=result,
        detail={"job_id": job.pk},
    )
    return result
