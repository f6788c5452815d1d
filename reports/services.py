"""Writes for the go/no-go report: the user's prices and targets, and the read-only share link."""

from __future__ import annotations

import secrets
from decimal import Decimal

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError

from evaluations.models import Evaluation, EvaluationKind
from projects.models import Project
from reports.models import ReportSettings, ServingMode

MAX_MONTHLY_VOLUME = 10**12


def report_settings_update(
    *,
    project: Project,
    user: User,
    serving_mode: str,
    serving_hourly_usd: Decimal,
    managed_input_usd_per_mtok: Decimal,
    managed_output_usd_per_mtok: Decimal,
    training_hourly_usd: Decimal,
    teacher_usd_per_1k: Decimal | None,
    monthly_volume: int,
    quality_target_percent: int,
    evaluation: Evaluation | None = None,
) -> ReportSettings:
    """Save the report's prices and targets (engineers and owners). Raises ValidationError."""
    if serving_mode not in ServingMode.values:
        raise ValidationError({"serving_mode": "choose self-hosted (hourly) or managed (tokens)"})
    for name, value in (
        ("serving_hourly_usd", serving_hourly_usd),
        ("managed_input_usd_per_mtok", managed_input_usd_per_mtok),
        ("managed_output_usd_per_mtok", managed_output_usd_per_mtok),
        ("training_hourly_usd", training_hourly_usd),
        ("teacher_usd_per_1k", teacher_usd_per_1k),
    ):
        if value is not None and value < 0:
            raise ValidationError({name: "a price cannot be negative"})
    if not 0 <= monthly_volume <= MAX_MONTHLY_VOLUME:
        raise ValidationError({"monthly_volume": "a monthly volume between 0 and 10^12 requests"})
    if not 1 <= quality_target_percent <= 200:
        raise ValidationError({"quality_target_percent": "a target between 1 and 200 %"})
    if evaluation is not None and (
        evaluation.project_id != project.pk or evaluation.kind != EvaluationKind.EVALUATION
    ):
        raise ValidationError({"evaluation": "choose one of this project's evaluations"})
    settings, _ = ReportSettings.objects.update_or_create(
        project=project,
        defaults={
            "serving_mode": serving_mode,
            "serving_hourly_usd": serving_hourly_usd,
            "managed_input_usd_per_mtok": managed_input_usd_per_mtok,
            "managed_output_usd_per_mtok": managed_output_usd_per_mtok,
            "training_hourly_usd": training_hourly_usd,
            "teacher_usd_per_1k": teacher_usd_per_1k,
            "monthly_volume": monthly_volume,
            "quality_target_percent": quality_target_percent,
            "evaluation": evaluation,
            "updated_by": user,
        },
    )
    return settings


def report_share_enable(*, project: Project, user: User) -> ReportSettings:
    """Create (or replace) the secret link to the read-only report. Anyone holding the link can
    read the report, so replacing it revokes the old one."""
    settings, _ = ReportSettings.objects.get_or_create(project=project)
    settings.share_token = secrets.token_urlsafe(32)
    settings.updated_by = user
    settings.save(update_fields=["share_token", "updated_by", "updated_at"])
    return settings


def report_share_disable(*, project: Project, user: User) -> ReportSettings:
    settings, _ = ReportSettings.objects.get_or_create(project=project)
    settings.share_token = None
    settings.updated_by = user
    settings.save(update_fields=["share_token", "updated_by", "updated_at"])
    return settings
