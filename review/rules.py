"""Auto rules: "approve when no check flagged it", "reject when the judge scored it ≤ 2". Rules
are validated by the engine (worker.checks), kept in order, and applied to unreviewed outputs
that no person is assigned to; each output gets the first matching rule's decision."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Exists, OuterRef

from projects.models import Project
from review.audit import actor_name, audit_record
from review.bulk import BATCH, apply_many, locked_states
from review.decisions import ACTIONS
from review.models import AuditAction, DecisionKind, ReviewAssignment, ReviewRule
from teachers.models import ReviewStatus, TeacherOutput
from worker import checks


def rule_title(definition: dict[str, Any]) -> str:
    """A rule in plain words: "approve when no flags and confidence ≥ 0.9"."""
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


def rule_create(*, project: Project, user: User, name: str, definition: Any) -> ReviewRule:
    try:
        rule = checks.validate_rule(definition)
    except checks.RuleError as exc:
        raise ValidationError({"definition": str(exc)}) from None
    name = name.strip() or rule_title(rule.to_dict())
    with transaction.atomic():
        last = ReviewRule.objects.filter(project=project).order_by("-position").first()
        created = ReviewRule.objects.create(
            project=project,
            name=name[:120],
            definition=rule.to_dict(),
            position=(last.position + 1) if last else 0,
            created_by=user,
        )
        audit_record(
            project=project,
            actor=user,
            action=AuditAction.RULE_CHANGED,
            rule=created,
            summary=f"{actor_name(user)} added the auto rule {name!r}: {rule_title(created.definition)}",
            after=created.definition,
        )
    return created


def rule_delete(*, project: Project, user: User, rule: ReviewRule) -> None:
    with transaction.atomic():
        audit_record(
            project=project,
            actor=user,
            action=AuditAction.RULE_CHANGED,
            summary=f"{actor_name(user)} deleted the auto rule {rule.name!r}",
            before=rule.definition,
            detail={"rule_id": rule.pk, "name": rule.name},
        )
        rule.delete()


def _matches(project: Project, rules: list[checks.Rule]) -> dict[int, list[int]]:
    """Output ids by the index of the first rule that matches them, over the unreviewed outputs
    not in conflict and not assigned to a person."""
    candidates = (
        TeacherOutput.objects.filter(
            project=project, review_status=ReviewStatus.UNREVIEWED, review_conflict=False
        )
        .exclude(Exists(ReviewAssignment.objects.filter(output=OuterRef("pk"))))
        .values_list("pk", "raw_text", "confidence", "judge_score", "flag_codes")
    )
    matched: dict[int, list[int]] = defaultdict(list)
    for pk, raw, confidence, judge_score, codes in candidates.iterator(chunk_size=BATCH):
        item = checks.OutputToCheck(
            output_id=pk, raw=raw, confidence=confidence, judge_score=judge_score
        )
        flags = [checks.Flag(code, "") for code in codes or []]
        hit = checks.first_matching_rule(rules, item, flags)
        if hit is not None:
            matched[hit[0]].append(pk)
    return matched


def rules_apply(*, project: Project, user: User | None) -> dict[str, int]:
    """Apply the active auto rules, in order, to unreviewed outputs (not in conflict, not
    assigned to a person). Each output gets the first matching rule's decision, recorded as the
    rule's, with one audit event per rule. `user` is who ran them (None for a job nobody owns)."""
    rules = list(
        ReviewRule.objects.filter(project=project, is_active=True).order_by("position", "id")
    )
    applied: dict[str, int] = {}
    if not rules:
        return applied
    with transaction.atomic():
        matched = _matches(project, [checks.validate_rule(r.definition) for r in rules])
        for index, ids in sorted(matched.items()):
            rule = rules[index]
            rows = locked_states(
                TeacherOutput.objects.filter(pk__in=ids, review_status=ReviewStatus.UNREVIEWED)
            )
            if not rows:
                continue
            status = ACTIONS[rule.action]
            apply_many(
                project=project,
                actor=user,
                rows=rows,
                status=status,
                edited_value=None,
                kind=DecisionKind.RULE,
                rule=rule,
                reason=f"auto rule {rule.name!r}",
            )
            audit_record(
                project=project,
                actor=user,
                action=AuditAction.RULE_APPLIED,
                rule=rule,
                summary=(
                    f"Auto rule {rule.name!r} {status} {len(rows):,} outputs "
                    f"({rule_title(rule.definition)})"
                    + (f", run by {actor_name(user)}" if getattr(user, "pk", None) else "")
                ),
                before={"status_counts": {ReviewStatus.UNREVIEWED: len(rows)}},
                after={"status_counts": {status: len(rows)}},
                detail={"rule": rule.definition, "output_ids": [pk for pk, _ in rows]},
            )
            applied[rule.name] = len(rows)
    return applied
