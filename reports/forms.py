"""The go/no-go report's settings form (prices the user sets, the monthly volume, the target)."""

from __future__ import annotations

from typing import Any

from django import forms

from evaluations.models import Evaluation, EvaluationKind
from projects.models import Project
from reports.models import ServingMode


class ReportSettingsForm(forms.Form):
    evaluation = forms.ModelChoiceField(
        queryset=Evaluation.objects.none(),
        required=False,
        empty_label="The latest finished evaluation",
        help_text="The evaluation whose measured figures the report uses.",
    )
    serving_mode = forms.ChoiceField(choices=ServingMode.choices, label="How the student is served")
    serving_hourly_usd = forms.DecimalField(
        min_value=0,
        max_digits=10,
        decimal_places=4,
        label="Serving machine, $ per hour",
        help_text="A GPU or CPU machine's hourly price (self-hosted serving).",
    )
    managed_input_usd_per_mtok = forms.DecimalField(
        min_value=0, max_digits=12, decimal_places=6, label="Managed: $ per 1M input tokens"
    )
    managed_output_usd_per_mtok = forms.DecimalField(
        min_value=0, max_digits=12, decimal_places=6, label="Managed: $ per 1M output tokens"
    )
    training_hourly_usd = forms.DecimalField(
        min_value=0, max_digits=10, decimal_places=4, label="Training machine, $ per hour"
    )
    teacher_usd_per_1k = forms.DecimalField(
        min_value=0,
        max_digits=12,
        decimal_places=6,
        required=False,
        label="Teacher, $ per 1,000 requests",
        help_text="Only used when no teacher call was metered (e.g. imported outputs).",
    )
    monthly_volume = forms.IntegerField(
        min_value=0, max_value=10**12, label="Requests per month (default for the calculator)"
    )
    quality_target_percent = forms.IntegerField(
        min_value=1, max_value=200, label="Quality target, % of the teacher"
    )

    def __init__(self, *args: Any, project: Project, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["evaluation"].queryset = project.evaluations.filter(  # type: ignore[attr-defined]
            kind=EvaluationKind.EVALUATION, job__status="succeeded"
        ).order_by("-created_at")
