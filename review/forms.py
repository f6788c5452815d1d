"""Forms for review automation, assignment and freezing. Validation that needs the database or
the engine lives in the services; these only shape what the user typed."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.models import User
from django.db.models import QuerySet

from review.models import JudgeScale
from teams.models import ProviderCredential
from worker.checks import FLAG_CODES

FLAG_CHOICES = list(FLAG_CODES.items())


class RuleForm(forms.Form):
    name = forms.CharField(max_length=120, required=False, help_text="Optional; a title is made up")
    action = forms.ChoiceField(choices=[("approve", "Approve"), ("reject", "Reject")])
    unflagged = forms.ChoiceField(
        choices=[
            ("", "Flags don't matter"),
            ("yes", "Has no flag at all"),
            ("no", "Has some flag"),
        ],
        required=False,
        label="Flags",
    )
    flag = forms.MultipleChoiceField(
        choices=FLAG_CHOICES,
        required=False,
        label="Has one of these flags",
        widget=forms.CheckboxSelectMultiple,
    )
    without_flag = forms.MultipleChoiceField(
        choices=FLAG_CHOICES,
        required=False,
        label="Has none of these flags",
        widget=forms.CheckboxSelectMultiple,
    )
    min_confidence = forms.FloatField(required=False, min_value=0, max_value=1)
    max_confidence = forms.FloatField(required=False, min_value=0, max_value=1)
    min_judge_score = forms.FloatField(
        required=False, min_value=0, max_value=1, help_text="Judge score normalised to 0-1"
    )
    max_judge_score = forms.FloatField(required=False, min_value=0, max_value=1)

    def definition(self) -> dict[str, Any]:
        data = self.cleaned_data
        when: dict[str, Any] = {}
        if data.get("unflagged") == "yes":
            when["unflagged"] = True
        elif data.get("unflagged") == "no":
            when["unflagged"] = False
        for key in ("flag", "without_flag"):
            if data.get(key):
                when[key] = list(data[key])
        for key in ("min_confidence", "max_confidence", "min_judge_score", "max_judge_score"):
            if data.get(key) is not None:
                when[key] = data[key]
        return {"action": data["action"], "when": when}


class JudgeSettingsForm(forms.Form):
    rubric = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 5}),
        required=False,
        help_text="What a good answer looks like, in your words. The judge scores each output against it.",
    )
    scale = forms.ChoiceField(choices=JudgeScale.choices)
    pass_score = forms.FloatField(
        required=False,
        help_text="Outputs scoring below this are flagged (default: 4 on 1-5, 0.7 on 0-1)",
    )
    credential = forms.ModelChoiceField(queryset=ProviderCredential.objects.none(), required=False)
    model = forms.CharField(max_length=200, required=False, help_text="e.g. gpt-4o-mini")

    def __init__(
        self, *args: Any, credentials: QuerySet[ProviderCredential], **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.fields["credential"].queryset = credentials  # type: ignore[attr-defined]


class ChecksForm(forms.Form):
    judge = forms.BooleanField(required=False, label="Also ask the LLM judge (paid calls)")
    apply_rules = forms.BooleanField(
        required=False, initial=True, label="Then apply the auto rules"
    )


class AssignForm(forms.Form):
    reviewers = forms.MultipleChoiceField(choices=[], widget=forms.CheckboxSelectMultiple)
    overlap_percent = forms.FloatField(
        min_value=0,
        max_value=100,
        initial=10,
        label="Overlap (%)",
        help_text="This share of outputs goes to two reviewers, to measure agreement",
    )
    seed = forms.IntegerField(initial=0, min_value=0)

    def __init__(self, *args: Any, reviewers: list[User], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["reviewers"].choices = [(str(u.pk), u.username) for u in reviewers]  # type: ignore[attr-defined]
