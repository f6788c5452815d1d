"""Forms for review automation, assignment and freezing. Validation that needs the database or
the engine lives in the services; these only shape what the user typed."""

from __future__ import annotations

from typing import Any

from django import forms


class FreezeForm(forms.Form):
    name = forms.CharField(max_length=120, help_text="e.g. v1-banking-intents")
    seed = forms.IntegerField(initial=0, min_value=0)
    train = forms.FloatField(initial=0.8, min_value=0, max_value=1)
    validation = forms.FloatField(initial=0.1, min_value=0, max_value=1)
    test = forms.FloatField(initial=0.1, min_value=0, max_value=1)
    include_references = forms.BooleanField(
        required=False,
        label="Include inputs with a human reference output (real rows)",
        help_text="For such an input the reference is taught, not the teacher's answer",
    )
    real_ratio = forms.FloatField(
        required=False,
        min_value=0,
        max_value=1,
        label="Share of real rows",
        help_text="0-1; the side in excess is sampled down with the seed. Empty keeps every row.",
    )
    max_synthetic_train_share = forms.FloatField(
        required=False,
        initial=0.5,
        min_value=0,
        max_value=1,
        label="Most synthetic inputs in train",
        help_text="0-1: the largest share of the training split whose inputs a teacher wrote "
        "(synthetic inputs); the excess is sampled down with the seed. They are never in "
        "validation or test. Empty: no cap.",
    )
    stratify = forms.BooleanField(
        required=False, initial=True, label="Stratify splits by label (label tasks)"
    )
    group_near_duplicates = forms.BooleanField(
        required=False,
        initial=True,
        label="Keep near-duplicate inputs in one split",
        help_text="Off: near-duplicates may straddle splits and are listed in the leakage report",
    )
    near_duplicate_threshold = forms.FloatField(
        initial=0.8,
        min_value=0.01,
        max_value=1,
        label="Near-duplicate similarity",
        help_text="Word-set Jaccard similarity at or above which two inputs are near-duplicates",
    )

    def freeze_options(self) -> Any:
        """The freeze's options from the cleaned form (the page and the API both start a
        freeze this way). Raises ValidationError from dataset_versions.services.freeze_options."""
        from dataset_versions.services import freeze_options

        data = self.cleaned_data
        return freeze_options(
            name=data["name"],
            seed=data["seed"] or 0,
            train=data["train"],
            validation=data["validation"],
            test=data["test"],
            include_references=data["include_references"],
            real_ratio=data["real_ratio"],
            stratify=data["stratify"],
            near_duplicate_threshold=data["near_duplicate_threshold"],
            group_near_duplicates=data["group_near_duplicates"],
            max_synthetic_train_share=data.get("max_synthetic_train_share"),
        )
