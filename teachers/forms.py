from __future__ import annotations

from decimal import Decimal
from typing import Any, cast

from django import forms
from django.core.exceptions import ValidationError

from teachers.models import TeacherRunMode
from teachers.services import RunSettings, resolve_local_model_path
from teams.models import ProviderCredential, Team

LOCAL = "local"


class TeacherRunForm(forms.Form):
    teacher = forms.ChoiceField(
        label="Teacher",
        help_text="One of the team's credentials, or a Hugging Face model on the workers' disk",
    )
    model = forms.CharField(
        max_length=200,
        required=False,
        help_text="e.g. gpt-4o-mini, claude-sonnet-4-5 (the price table prices it)",
    )
    local_model_path = forms.CharField(
        label="Local model directory",
        max_length=500,
        required=False,
        help_text="Only for a local model: a directory inside the data directory",
    )
    selection = forms.ChoiceField(
        label="Inputs",
        choices=[
            ("all", "All inputs"),
            ("sample", "A random sample"),
            ("filter", "Inputs containing a text"),
        ],
        initial="all",
    )
    sample_size = forms.IntegerField(label="Sample size", min_value=1, required=False)
    seed = forms.IntegerField(
        label="Sample seed", initial=0, required=False, help_text="Same seed, same sample"
    )
    filter_text = forms.CharField(label="Containing", max_length=200, required=False)
    temperature = forms.FloatField(min_value=0, max_value=2, initial=0.0)
    max_tokens = forms.IntegerField(min_value=1, max_value=100_000, initial=256)
    samples_per_input = forms.IntegerField(
        min_value=1,
        max_value=20,
        initial=1,
        help_text="More than 1 asks several times per input (self-consistency)",
    )
    concurrency = forms.IntegerField(min_value=1, max_value=256, initial=8)
    budget_usd = forms.DecimalField(
        label="Budget cap (USD)",
        min_value=Decimal("0.0001"),
        max_digits=12,
        decimal_places=4,
        required=False,
        help_text="The run stops before it would spend more",
    )
    mode = forms.ChoiceField(
        choices=[
            (TeacherRunMode.LIVE, "Live calls"),
            (TeacherRunMode.BATCH, "Batch API (about half price, results within 24 h)"),
        ],
        initial=TeacherRunMode.LIVE,
    )

    def __init__(
        self, *args: Any, team: Team, credentials: list[ProviderCredential], **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.team = team
        self.credentials = {str(c.pk): c for c in credentials}
        choices = [(str(c.pk), f"{c.name} ({c.get_provider_display()})") for c in credentials]
        choices.append((LOCAL, "Local Hugging Face model"))
        cast(forms.ChoiceField, self.fields["teacher"]).choices = choices

    TEACHER_FIELDS = ("teacher", "model", "local_model_path", "mode")

    @property
    def teacher_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in self.TEACHER_FIELDS]

    @property
    def run_fields(self) -> list[forms.BoundField]:
        return [self[name] for name in self.fields if name not in self.TEACHER_FIELDS]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("teacher") == LOCAL:
            if not (data.get("local_model_path") or "").strip():
                self.add_error("local_model_path", "give the local model's directory")
            else:
                try:
                    # Only a folder of this team's own area (or the shared models/ folder).
                    resolve_local_model_path(data["local_model_path"], team=self.team)
                except ValidationError as exc:
                    self.add_error(None, exc)
        elif not (data.get("model") or "").strip():
            self.add_error("model", "name the model, e.g. gpt-4o-mini")
        if data.get("selection") == "sample" and not data.get("sample_size"):
            self.add_error("sample_size", "how many inputs to sample")
        if data.get("selection") == "filter" and not (data.get("filter_text") or "").strip():
            self.add_error("filter_text", "the text the inputs must contain")
        return data

    def run_settings(self) -> RunSettings:
        data = self.cleaned_data
        kind = data["selection"]
        selection: dict[str, Any] = {"kind": kind}
        if kind == "sample":
            selection.update(n=data["sample_size"], seed=data.get("seed") or 0)
        elif kind == "filter":
            selection["q"] = data["filter_text"].strip()
        local = data["teacher"] == LOCAL
        return RunSettings(
            model=(data.get("model") or "").strip(),
            credential=None if local else self.credentials[data["teacher"]],
            local_model_path=(data.get("local_model_path") or "").strip() if local else "",
            temperature=data["temperature"],
            max_tokens=data["max_tokens"],
            samples_per_input=data["samples_per_input"],
            concurrency=data["concurrency"],
            budget_usd=data.get("budget_usd"),
            mode=data["mode"],
            selection=selection,
        )


class TeacherImportForm(forms.Form):
    file = forms.FileField(
        allow_empty_file=True,
        help_text=(
            "JSONL of OpenAI chat request/response logs, or a CSV with a column per input field "
            "and an output column"
        ),
    )
    output_column = forms.CharField(
        max_length=100,
        initial="output",
        required=False,
        help_text="CSV only: the column that holds the teacher's answer",
    )
    model = forms.CharField(
        max_length=200,
        required=False,
        help_text="The model that wrote these outputs (JSONL logs name it themselves)",
    )


class PriceForm(forms.Form):
    model = forms.CharField(max_length=120, help_text="A model id or prefix, e.g. gpt-4o-mini")
    input_usd_per_mtok = forms.DecimalField(
        label="Input USD per 1M tokens", min_value=0, max_digits=12, decimal_places=6
    )
    output_usd_per_mtok = forms.DecimalField(
        label="Output USD per 1M tokens", min_value=0, max_digits=12, decimal_places=6
    )
    batch_multiplier = forms.DecimalField(
        label="Batch multiplier",
        min_value=0,
        max_value=1,
        max_digits=4,
        decimal_places=3,
        initial=Decimal("0.5"),
        help_text="The fraction of the price charged in batch mode (0.5 = half price)",
    )


class SynthesisForm(forms.Form):
    """New inputs written by a teacher in the style of seed rows (teachers.synthesis)."""

    credential = forms.ChoiceField(label="Teacher", help_text="One of the team's credentials")
    model = forms.CharField(
        max_length=200, help_text="e.g. gpt-4o-mini (the price table prices it)"
    )
    seed_inputs = forms.MultipleChoiceField(
        label="Seed rows",
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Real inputs the new ones should look like (up to 8 are shown per call, in turn)",
    )
    seed_ids = forms.CharField(
        label="More seed rows by number",
        max_length=2000,
        required=False,
        help_text="Input numbers separated by commas, for rows not listed above",
    )
    count = forms.IntegerField(label="New inputs to ask for", min_value=1, initial=50)
    per_call = forms.IntegerField(label="Inputs per call", min_value=1, initial=10)
    topics = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3}),
        required=False,
        help_text="Optional, one per line: each call is about the next topic in turn",
    )
    label_targets = forms.MultipleChoiceField(
        label="Labels that are short",
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Optional: ask for inputs whose right answer is one of these labels, in turn",
    )
    temperature = forms.FloatField(min_value=0, max_value=2, initial=1.0)
    max_tokens = forms.IntegerField(min_value=1, initial=2000, help_text="Per call")
    concurrency = forms.IntegerField(min_value=1, initial=4)
    budget_usd = forms.DecimalField(
        label="Budget cap (USD)",
        max_digits=12,
        decimal_places=4,
        required=False,
        help_text="The job stops when the ledger reaches it; inputs already received are kept",
    )

    def __init__(
        self,
        *args: Any,
        credentials: list[ProviderCredential],
        seeds: list[tuple[int, str]],
        labels: list[tuple[str, str]],
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.credentials = {str(c.pk): c for c in credentials}
        cast(forms.ChoiceField, self.fields["credential"]).choices = [
            (str(c.pk), f"{c.name} ({c.get_provider_display()})") for c in credentials
        ]
        cast(forms.ChoiceField, self.fields["seed_inputs"]).choices = [
            (str(pk), f"#{pk}: {text}") for pk, text in seeds
        ]
        if labels:
            cast(forms.ChoiceField, self.fields["label_targets"]).choices = labels
        else:
            del self.fields["label_targets"]

    def clean_seed_ids(self) -> list[int]:
        text = self.cleaned_data.get("seed_ids", "")
        ids = []
        for part in text.replace(";", ",").split(","):
            part = part.strip().lstrip("#")
            if not part:
                continue
            if not part.isdigit():
                raise ValidationError(f"{part!r} is not an input number")
            ids.append(int(part))
        return ids

    def synthesis_settings(self) -> Any:
        from teachers.synthesis import SynthesisSettings

        data = self.cleaned_data
        seeds = sorted({int(pk) for pk in data.get("seed_inputs") or []} | set(data["seed_ids"]))
        topics = [t.strip() for t in (data.get("topics") or "").splitlines() if t.strip()]
        return SynthesisSettings(
            credential=self.credentials.get(data["credential"]),
            model=data["model"].strip(),
            seed_input_ids=seeds,
            count=data["count"],
            per_call=data["per_call"],
            topics=[t[:200] for t in topics],
            label_targets=list(data.get("label_targets") or []),
            temperature=data["temperature"],
            max_tokens=data["max_tokens"],
            concurrency=data["concurrency"],
            budget_usd=data.get("budget_usd"),
        )
