from __future__ import annotations

from typing import Any

from django import forms

from gateway.models import GatewayPolicy
from gateway.services import POLICY_FIELDS
from projects.models import Project
from serving.models import ServedModel
from teams.models import ProviderCredential


class PolicyForm(forms.ModelForm):  # type: ignore[type-arg]
    class Meta:
        model = GatewayPolicy
        fields = list(POLICY_FIELDS)  # the audited fields, named once in the services
        labels = {
            "credential": "Teacher credential",
            "served_model": "Served student",
            "student_timeout_ms": "Student timeout (ms)",
            "canary_percent": "Canary share (%)",
            "cascade_threshold": "Cascade confidence threshold",
            "record_inputs": "Record real inputs and teacher answers into the project",
            "sample_rate": "Sampling rate (0 to 1)",
            "retention_days": "Keep the request log (days)",
            "agreement_target_percent": "Agreement target (%)",
            "monthly_budget_usd": "Monthly teacher budget (USD)",
            "budget_fallback_to_student": "Over budget: let the student answer",
        }

    def __init__(self, *args: Any, project: Project, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        credential = self.fields["credential"]
        served = self.fields["served_model"]
        assert isinstance(credential, forms.ModelChoiceField)
        assert isinstance(served, forms.ModelChoiceField)
        credential.queryset = ProviderCredential.objects.filter(team=project.team)
        served.queryset = ServedModel.objects.filter(team=project.team, project=project)

    def clean_sample_rate(self) -> float:
        value = float(self.cleaned_data["sample_rate"])
        if not 0 <= value <= 1:
            raise forms.ValidationError("a share between 0 and 1")
        return value

    def clean_canary_percent(self) -> int:
        value = int(self.cleaned_data["canary_percent"])
        if not 0 <= value <= 100:
            raise forms.ValidationError("a percentage between 0 and 100")
        return value

    def clean_cascade_threshold(self) -> float:
        value = float(self.cleaned_data["cascade_threshold"])
        if not 0 <= value <= 1:
            raise forms.ValidationError("a probability between 0 and 1")
        return value
