"""Assignment: the unreviewed outputs split among reviewers, with an overlap reviewed by two, so
their agreement can be measured (review/agreement.py)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import transaction

from projects.models import Project
from review.audit import actor_name, audit_record
from review.bulk import BATCH
from review.models import AuditAction, ReviewAssignment
from teachers.models import ReviewStatus, TeacherOutput
from worker.datasets import DatasetError, assign_reviewers


def _check_plan(reviewers: Sequence[User], overlap_percent: float) -> None:
    if not reviewers:
        raise ValidationError({"reviewers": "choose at least one reviewer"})
    if not 0 <= overlap_percent <= 100:
        raise ValidationError({"overlap_percent": "between 0 and 100"})
    if len(reviewers) < 2 and overlap_percent > 0:
        raise ValidationError({"overlap_percent": "overlap needs at least two reviewers"})


def assignments_create(
    *,
    project: Project,
    user: User,
    reviewers: Sequence[User],
    overlap_percent: float,
    seed: int = 0,
) -> dict[str, Any]:
    """Split the unreviewed outputs among `reviewers`; `overlap_percent` of them go to two
    reviewers, so agreement can be measured. Replaces earlier assignments of those outputs."""
    _check_plan(reviewers, overlap_percent)
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
            batch_size=BATCH,
        )
        per_reviewer = Counter(r for chosen in plan.values() for r in chosen)
        names = {r.pk: r.username for r in reviewers}
        result = {
            "outputs": len(ids),
            "overlap_outputs": sum(1 for chosen in plan.values() if len(chosen) > 1),
            "per_reviewer": {names[int(k)]: v for k, v in sorted(per_reviewer.items())},
            "overlap_percent": overlap_percent,
            "seed": seed,
        }
        audit_record(
            project=project,
            actor=user,
            action=AuditAction.ASSIGNMENT,
            summary=(
                f"{actor_name(user)} assigned {len(ids):,} unreviewed outputs to "
                f"{', '.join(names.values())} with {overlap_percent:g} % overlap"
            ),
            after=result,
        )
    return result
