"""Review progress: outputs by status, overall and per reviewer (with what each has left of
their assignment)."""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.db.models import Count, Exists, OuterRef, Q

from projects.models import Project
from review.models import (
    ReviewAssignment,
    ReviewDecision,
)
from teachers.models import ReviewStatus, TeacherOutput


@dataclass
class ReviewerProgress:
    username: str
    reviewed: int = 0
    approved: int = 0
    rejected: int = 0
    edited: int = 0
    remaining: int = 0  # assigned to them and not yet decided by them


@dataclass
class ReviewProgress:
    total: int
    unreviewed: int
    approved: int
    rejected: int
    edited: int
    conflicts: int
    by_rules: int
    per_reviewer: list[ReviewerProgress]

    @property
    def reviewed(self) -> int:
        return self.total - self.unreviewed

    @property
    def percent(self) -> int:
        return int(100 * self.reviewed / self.total) if self.total else 0


def review_progress(*, project: Project) -> ReviewProgress:
    outputs = TeacherOutput.objects.filter(project=project)
    by_status = dict(outputs.values_list("review_status").annotate(n=Count("id")).order_by())
    conflicts = outputs.filter(review_conflict=True).count()
    by_rules = outputs.filter(decided_by_rule__isnull=False).count()
    people: dict[int, ReviewerProgress] = {}
    user_model = get_user_model()
    names = dict(
        user_model.objects.filter(
            Q(pk__in=outputs.filter(reviewed_by__isnull=False).values("reviewed_by"))
            | Q(pk__in=ReviewAssignment.objects.filter(project=project).values("reviewer"))
        ).values_list("pk", "username")
    )
    for uid, name in names.items():
        people[uid] = ReviewerProgress(username=name)
    for uid, status, n in (
        outputs.filter(reviewed_by__isnull=False)
        .values_list("reviewed_by", "review_status")
        .annotate(n=Count("id"))
        .order_by()
    ):
        person = people[uid]
        person.reviewed += n
        setattr(person, status, getattr(person, status) + n)
    remaining = (
        ReviewAssignment.objects.filter(project=project)
        .exclude(
            Exists(
                ReviewDecision.objects.filter(
                    output=OuterRef("output"), reviewer=OuterRef("reviewer"), undone_at__isnull=True
                )
            )
        )
        .values_list("reviewer")
        .annotate(n=Count("id"))
        .order_by()
    )
    for uid, n in remaining:
        people[uid].remaining = n
    return ReviewProgress(
        total=sum(by_status.values()),
        unreviewed=by_status.get(ReviewStatus.UNREVIEWED, 0),
        approved=by_status.get(ReviewStatus.APPROVED, 0),
        rejected=by_status.get(ReviewStatus.REJECTED, 0),
        edited=by_status.get(ReviewStatus.EDITED, 0),
        conflicts=conflicts,
        by_rules=by_rules,
        per_reviewer=sorted(people.values(), key=lambda p: p.username),
    )
