from __future__ import annotations

from django.conf import settings
from django.db import models


class ServingMode(models.TextChoices):
    HOURLY = "hourly", "Self-hosted: a machine at an hourly price"
    TOKENS = "tokens", "Managed: a price per token"


class ReportSettings(models.Model):
    """The user's prices and targets for a project's go/no-go report, and its share link."""

    project = models.OneToOneField(
        "projects.Project", on_delete=models.CASCADE, related_name="report_settings"
    )
    evaluation = models.ForeignKey(
        "evaluations.Evaluation", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    serving_mode = models.CharField(
        max_length=8, choices=ServingMode.choices, default=ServingMode.HOURLY
    )
    serving_hourly_usd = models.DecimalField(max_digits=10, decimal_places=4, default=0.5)
    managed_input_usd_per_mtok = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    managed_output_usd_per_mtok = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    training_hourly_usd = models.DecimalField(max_digits=10, decimal_places=4, default=2)
    # When the teacher's outputs were imported (no metered calls): the user's figure.
    teacher_usd_per_1k = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    monthly_volume = models.PositiveBigIntegerField(default=100_000)
    quality_target_percent = models.PositiveSmallIntegerField(default=95)
    share_token = models.CharField(max_length=64, null=True, blank=True, unique=True)
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "jobs_reportsettings"

    def __str__(self) -> str:
        return f"report settings of {self.project}"
