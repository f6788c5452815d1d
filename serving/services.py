"""Writes of the serving app: switch a student's serving on and off (audited), its input-logging
setting, and the request log the serving process appends to."""

from __future__ import annotations

from collections.abc import Iterable

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from finetunes.models import StudentKind, StudentModel
from serving.models import ServedModel, ServingAction, ServingChange, ServingRequest


class ServingError(ValueError):
    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


def _free_slug(*, team_id: int, name: str) -> str:
    base = slugify(name)[:90].strip("-") or "student"
    taken = set(
        ServedModel.objects.filter(team_id=team_id, slug__startswith=base).values_list(
            "slug", flat=True
        )
    )
    slug, n = base, 2
    while slug in taken:
        slug, n = f"{base}-{n}", n + 1
    return slug


@transaction.atomic
def student_serve(*, student: StudentModel, user: User) -> ServedModel:
    """Serve a distilled student under a slug made from its name (kept if served before)."""
    if student.kind != StudentKind.DISTILLED or student.project_id is None:
        raise ServingError(
            "only a distilled student (trained on a project's task) can be served: the endpoint "
            "renders that task's prompt around each input",
            field="student",
        )
    served = ServedModel.objects.select_for_update().filter(student=student).first()
    now = timezone.now()
    if served is None:
        served = ServedModel.objects.create(
            team_id=student.team_id,
            student=student,
            project_id=student.project_id,
            slug=_free_slug(team_id=student.team_id, name=student.name),
            served_by=user,
            served_at=now,
        )
    elif served.active:
        return served
    else:
        served.active, served.served_by, served.served_at = True, user, now
        served.save(update_fields=["active", "served_by", "served_at"])
    ServingChange.objects.create(served_model=served, action=ServingAction.SERVE, user=user)
    return served


@transaction.atomic
def served_stop(*, served: ServedModel, user: User) -> ServedModel:
    if served.active:
        served.active = False
        served.save(update_fields=["active"])
        ServingChange.objects.create(served_model=served, action=ServingAction.STOP, user=user)
    return served


@transaction.atomic
def served_log_inputs_set(*, served: ServedModel, user: User, log_inputs: bool) -> ServedModel:
    if served.log_inputs != log_inputs:
        served.log_inputs = log_inputs
        served.save(update_fields=["log_inputs"])
        action = ServingAction.LOG_INPUTS_ON if log_inputs else ServingAction.LOG_INPUTS_OFF
        ServingChange.objects.create(served_model=served, action=action, user=user)
    return served


def serving_requests_record(*, entries: Iterable[ServingRequest]) -> int:
    """Append answered requests to the log in one insert (the serving process batches them)."""
    rows = list(entries)
    ServingRequest.objects.bulk_create(rows)
    return len(rows)
