"""The start form's "learn more than the answer" part: rationales and soft labels."""

from __future__ import annotations

from typing import Any

from django import forms

from finetunes.signals import TrainingSignals
from worker.training_signals import DEFAULT_SOFT_LABEL_TEMPERATURE


class TrainingSignalsForm(forms.Form):
    rationale_training = forms.ChoiceField(
        label="Teacher's rationales",
        choices=[
            ("off", "Answers only"),
            ("second_task", "Answer + rationale (a second, “[rationale]” task per example)"),
        ],
        initial="off",
        required=False,
        help_text="Distilling step-by-step: the student also learns to write the teacher's "
        "reason when asked with the “[rationale]” prefix. It is never asked so when serving or "
        "evaluated, so it still answers with the label/JSON only, as fast as before. Training "
        "sees up to twice as many examples: about 3x the training time in "
        "bench/distill_signals.py, where templated reasons (a stand-in for a real teacher's) "
        "gave +5 points of accuracy, within noise (95 % interval -1 to +11).",
    )
    soft_label_weight = forms.FloatField(
        label="Soft labels: KL weight",
        min_value=0,
        max_value=1,
        required=False,
        help_text="Label tasks: mix the cross-entropy on the approved label with a KL term "
        "toward the teacher's distribution over the labels (0 = off). Rows a reviewer edited "
        "are taught one-hot.",
    )
    soft_label_temperature = forms.FloatField(
        label="Soft labels: temperature",
        min_value=0.25,
        max_value=10,
        required=False,
        help_text="Above 1 flattens the teacher's distribution so its runner-up labels teach more",
    )

    def __init__(self, *args: Any, signals: TrainingSignals, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.signals = signals
        counts = f"{signals.with_rationale:,} of {signals.n_train:,} training rows have one."
        field = self.fields["rationale_training"]
        if signals.rationale_unavailable:
            field.disabled = True
            field.help_text = f"Unavailable: {signals.rationale_unavailable}."
        else:
            field.help_text = f"{field.help_text} {counts}"
        for name in ("soft_label_weight", "soft_label_temperature"):
            if signals.soft_labels_unavailable:
                self.fields[name].disabled = True
                self.fields[name].help_text = f"Unavailable: {signals.soft_labels_unavailable}."
        if not signals.soft_labels_unavailable:
            self.fields["soft_label_weight"].help_text += (
                f" {signals.with_distribution:,} of {signals.n_train:,} training rows carry the "
                "teacher's distribution. Off by default: measured on small students with an "
                "over-confident teacher (bench/distill_signals.py), weight 0.5 at temperature 2 "
                "lowered accuracy by 7 points; try a small weight (0.1-0.3) at temperature 1 and "
                "compare the evaluations."
            )
            self.fields["soft_label_temperature"].initial = DEFAULT_SOFT_LABEL_TEMPERATURE

    def hyperparameters(self) -> dict[str, Any]:
        """The chosen options as TrainSpec hyperparameters (only what is set and available)."""
        data = self.cleaned_data
        chosen: dict[str, Any] = {}
        if not self.signals.rationale_unavailable and data.get("rationale_training") not in (
            None,
            "",
            "off",
        ):
            chosen["rationale_training"] = data["rationale_training"]
        weight = data.get("soft_label_weight")
        if not self.signals.soft_labels_unavailable and weight:
            chosen["soft_label_weight"] = float(weight)
            temperature = data.get("soft_label_temperature")
            chosen["soft_label_temperature"] = float(
                temperature if temperature else DEFAULT_SOFT_LABEL_TEMPERATURE
            )
        return chosen
