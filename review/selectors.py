"""Reads for review, scoped by project (the caller resolved the project through the user's
team). The queue, its cards, progress and agreement live in their own modules and are
re-exported here, so views and other apps read everything from `review.selectors`; the review
settings, the rules and the audit trail are read here."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from django.contrib.auth import get_user_model
from django.db import connection
from django.db.models import Count, Q, QuerySet

from projects.models import Project
from review.agreement import ConflictRow, PairRow, decision_key, review_agreement
from review.cards import (
    OutputCard,
    card_for,
    diff_html,
    output_url,
    pretty_value,
    teacher_value_text,
)
from review.models import AuditAction, AuditEvent, ReviewRule, ReviewSettings
from review.progress import ReviewerProgress, ReviewProgress, review_progress
from review.queue import (
    COUNT_CAP,
    PAGE_SIZE,
    RARE_MATCHES,
    SORTS,
    STATUS_FILTERS,
    CappedPaginator,
    ReviewFilters,
    labels_in_use,
    outputs_for_review,
    review_output,
    reviewers_of,
    with_review_details,
)
from teachers.models import OutputFlag
from worker.checks import FLAG_CODES

__all__ = [
    "AUDIT_PAGE_SIZE",
    "COUNT_CAP",
    "PAGE_SIZE",
    "RARE_MATCHES",
    "SORTS",
    "STATUS_FILTERS",
    "AuditFilters",
    "CappedPaginator",
    "ConflictRow",
    "OutputCard",
    "PairRow",
    "ReviewFilters",
    "ReviewProgress",
    "ReviewerProgress",
    "audit_actors",
    "audit_events",
    "card_for",
    "decision_key",
    "diff_html",
    "flag_counts",
    "labels_in_use",
    "output_url",
    "outputs_for_review",
    "pretty_value",
    "review_agreement",
    "review_output",
    "review_progress",
    "review_settings",
    "reviewers_of",
    "rules_for",
    "teacher_value_text",
    "usernames_for",
    "with_review_details",
]


def review_settings(*, project: Project) -> ReviewSettings:
    """The project's review settings, unsaved defaults when none were saved (reads write nothing)."""
    return ReviewSettings.objects.filter(project=project).first() or ReviewSettings(project=project)


def rules_for(*, project: Project) -> QuerySet[ReviewRule]:
    return ReviewRule.objects.filter(project=project).order_by("position", "id")


AUDIT_PAGE_SIZE = 50


@dataclass(frozen=True)
class AuditFilters:
    action: str = ""
    actor: str = ""  # user id, or "system" for rules and jobs
    output: int | None = None

    @classmethod
    def from_query(cls, data: Mapping[str, Any]) -> AuditFilters:
        action = str(data.get("action", "") or "")
        actor = str(data.get("actor", "") or "")
        output_raw = str(data.get("output", "") or "").lstrip("#")
        return cls(
            action=action if action in AuditAction.values else "",
            actor=actor if actor == "system" or actor.isdigit() else "",
            output=int(output_raw) if output_raw.isdigit() else None,
        )

    def query_string(self) -> str:
        data = {"action": self.action, "actor": self.actor, "output": self.output or ""}
        return urlencode({k: v for k, v in data.items() if v})


def audit_events(*, project: Project, filters: AuditFilters) -> QuerySet[AuditEvent]:
    events = AuditEvent.objects.filter(project=project)
    if filters.action:
        events = events.filter(action=filters.action)
    if filters.actor == "system":
        events = events.filter(actor__isnull=True)
    elif filters.actor:
        events = events.filter(actor_id=int(filters.actor))
    if filters.output is not None:
        about = Q(output_id=filters.output)
        if connection.vendor == "postgresql":
            # Bulk actions, rules and corrections list the outputs they changed.
            about |= Q(detail__output_ids__contains=[filters.output])
        events = events.filter(about)
    return events.select_related("actor", "output", "rule", "dataset_version").order_by("-id")


def audit_actors(*, project: Project) -> list[tuple[int, str]]:
    return list(
        get_user_model()
        .objects.filter(
            pk__in=AuditEvent.objects.filter(project=project, actor__isnull=False).values("actor")
        )
        .order_by("username")
        .values_list("pk", "username")
    )


def flag_counts(*, project: Project) -> dict[str, int]:
    counts: Counter[str] = Counter(
        dict(
            OutputFlag.objects.filter(project=project)
            .values_list("code")
            .annotate(n=Count("id"))
            .order_by()
        )
    )
    return {code: counts.get(code, 0) for code in FLAG_CODES}


def usernames_for(ids: set[int]) -> dict[int, str]:
    found: dict[int, str] = defaultdict(str)
    found.update(get_user_model().objects.filter(pk__in=ids).values_list("pk", "username"))
    return found
