from __future__ import annotations

import re
from typing import Any, cast

from django import forms
from django.core.exceptions import ValidationError

from finetunes.estimates import preset_estimates
from finetunes.gpu_plans import AUTO
from finetunes.models import FineTuneMethod, StudentModel
from finetunes.registry import resolve_local_model
from finetunes.services import QLORA_NEEDS_GPU, FineTuneSettings, preset_table
from teams.models import Team
from worker.training import PRESETS

#: How the start form names each of the engine's presets (which presets there are is its own).
#: How long one takes depends on the data, the student and the worker: the form shows its steps
#: and the estimate for this worker (finetunes.estimates), never a time of its own.
PRESET_LABELS = {
    "quick": "Quick — the fewest steps and a small adapter",
    "balanced": "Balanced",
    "thorough": "Thorough — more epochs and a larger adapter",
}

LOCAL = "local"
HF = "hf"
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


class FineTuneForm(forms.Form):
    student = forms.ChoiceField(
        label="Student model",
        help_text="A model from the team's registry, a folder in the shared data directory, or a "
        "Hugging Face model id already in this server's cache",
    )
    local_path = forms.CharField(
        label="Local model folder",
        max_length=500,
        required=False,
        help_text="Only for a local folder: a path inside the data directory",
    )
    hf_model_id = forms.CharField(
        label="Hugging Face model id",
        max_length=200,
        required=False,
        help_text="Only for a model id, e.g. HuggingFaceTB/SmolLM2-360M-Instruct (from the "
        "local cache: nothing is downloaded)",
    )
    method = forms.ChoiceField(
        choices=[
            (AUTO, "Automatic — LoRA, or QLoRA when the student does not fit in bf16"),
            *FineTuneMethod.choices,
        ],
        initial=AUTO,
        help_text="LoRA trains a small adapter: the right choice for students that fit in the "
        "GPU's memory in bf16 (every student under a few billion parameters on a modern GPU, and "
        "any student on a CPU). QLoRA does the same on a 4-bit base, for students too big for "
        "bf16; it needs a CUDA GPU. Automatic picks between them from the student's size and the "
        "GPU's memory (the table below says what it picks and why). Full fine-tuning changes "
        "every weight (slow, needs more memory).",
    )
    preset = forms.ChoiceField(
        choices=[(preset, PRESET_LABELS[preset]) for preset in PRESETS],
        initial="balanced",
        help_text="Fills in every hyperparameter you leave empty below",
    )
    label_list_in_prompt = forms.BooleanField(
        label="Keep the label list in the student's prompt",
        required=False,
        initial=False,
        help_text="Off (recommended): the student learns the labels from the approved answers "
        "and reads only the instruction and the input — a much shorter prompt, so it trains "
        "and answers several times faster. The choice is stored with the model, and its "
        "evaluation asks it the same way.",
    )
    epochs = forms.FloatField(min_value=0.01, max_value=100, required=False)
    max_steps = forms.IntegerField(
        label="Max steps",
        min_value=1,
        max_value=1_000_000,
        required=False,
        help_text="Overrides epochs",
    )
    learning_rate = forms.FloatField(
        label="Learning rate", min_value=1e-8, max_value=0.5, required=False
    )
    batch_size = forms.IntegerField(label="Batch size", min_value=1, max_value=1024, required=False)
    grad_accum = forms.IntegerField(
        label="Gradient accumulation", min_value=1, max_value=1024, required=False
    )
    lora_r = forms.IntegerField(label="LoRA rank (r)", min_value=1, max_value=1024, required=False)
    lora_alpha = forms.IntegerField(label="LoRA alpha", min_value=1, max_value=4096, required=False)
    lora_dropout = forms.FloatField(
        label="LoRA dropout", min_value=0, max_value=0.9, required=False
    )
    lora_targets = forms.CharField(
        label="LoRA target modules",
        max_length=300,
        required=False,
        help_text="all-linear, or module names separated by commas (q_proj, v_proj)",
    )
    max_length = forms.IntegerField(
        label="Max length (tokens)",
        min_value=16,
        max_value=32768,
        required=False,
        help_text="Longer examples are cut in the middle of the prompt",
    )
    checkpoint_every_steps = forms.IntegerField(
        label="Checkpoint every (steps)", min_value=1, max_value=1_000_000, required=False
    )

    HYPERPARAMETER_FIELDS = (
        "epochs",
        "max_steps",
        "learning_rate",
        "batch_size",
        "grad_accum",
        "lora_r",
        "lora_alpha",
        "lora_dropout",
        "lora_targets",
        "max_length",
        "checkpoint_every_steps",
    )

    def __init__(
        self,
        *args: Any,
        team: Team,
        students: list[StudentModel],
        has_gpu: bool,
        suggested_preset: str = "balanced",
        label_task: bool = False,
        n_train: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.team = team
        self.label_task = label_task
        if not label_task:
            del self.fields["label_list_in_prompt"]
        self.students = {str(s.pk): s for s in students}
        self.has_gpu = has_gpu
        choices = [(str(s.pk), f"{s.name} ({s.get_kind_display().lower()})") for s in students]
        choices += [(LOCAL, "A local folder…"), (HF, "A Hugging Face model id…")]
        cast(forms.ChoiceField, self.fields["student"]).choices = choices
        if len(students) == 1:  # the only registered student starts chosen
            self.fields["student"].initial = str(students[0].pk)
        self.fields["preset"].initial = suggested_preset
        if n_train is not None:
            cast(forms.ChoiceField, self.fields["preset"]).choices = self._preset_choices(n_train)
        if not has_gpu:
            self.fields["method"].help_text += " No GPU worker has reported in."

    def _preset_choices(self, n_train: int) -> list[tuple[str, str]]:
        """Each preset named with its steps for this dataset and, where a worker is known, the
        time it takes there for the first student offered (LoRA)."""
        table = preset_estimates(
            presets=preset_table(n_train=n_train, gpu=self.has_gpu),
            students=list(self.students.values())[:1],
            gpu=self.has_gpu,
            method=FineTuneMethod.LORA,
        )
        choices = []
        for row in table["rows"]:
            text = f"{PRESET_LABELS[row['preset']]} · {row['steps']:,} steps"
            estimate = row["estimates"][0] if row["estimates"] else None
            if estimate is not None:
                kind = " (first-run estimate)" if estimate.first_run else ""
                text += f", {estimate.about} on {estimate.hardware.describe()}{kind}"
            choices.append((row["preset"], text))
        return choices

    @property
    def student_fields(self) -> list[Any]:
        names = ["student", "local_path", "hf_model_id", "method", "preset"]
        if self.label_task:
            names.append("label_list_in_prompt")
        return [self[name] for name in names]

    @property
    def hyperparameter_fields(self) -> list[Any]:
        return [self[name] for name in self.HYPERPARAMETER_FIELDS]

    def clean_lora_targets(self) -> str | list[str] | None:
        text: str = self.cleaned_data.get("lora_targets", "").strip()
        if not text:
            return None
        if text == "all-linear":
            return text
        names = [n.strip() for n in text.split(",") if n.strip()]
        bad = [n for n in names if not _MODULE_NAME.match(n)]
        if bad or not names:
            raise forms.ValidationError(
                "give all-linear or module names separated by commas, e.g. q_proj, v_proj "
                f"(not {', '.join(bad) or text})"
            )
        return names

    def clean(self) -> dict[str, Any]:
        data = super().clean() or self.cleaned_data
        choice = data.get("student")
        if choice == LOCAL and not data.get("local_path", "").strip():
            self.add_error("local_path", "give the model's folder")
        elif choice == LOCAL:
            try:
                # Only a folder of this team's own area (or the shared models/ folder).
                resolve_local_model(data["local_path"], team=self.team)
            except ValidationError as exc:
                self.add_error(None, exc)
        if choice == HF and not data.get("hf_model_id", "").strip():
            self.add_error("hf_model_id", "give the model id")
        if data.get("method") == FineTuneMethod.QLORA and not self.has_gpu:
            self.add_error("method", QLORA_NEEDS_GPU)
        if data.get("method") == FineTuneMethod.FULL:
            for name in ("lora_r", "lora_alpha", "lora_dropout", "lora_targets"):
                if data.get(name) not in (None, ""):
                    self.add_error(name, "full fine-tuning has no LoRA settings; leave it empty")
        return data

    def fine_tune_settings(self) -> FineTuneSettings:
        data = self.cleaned_data
        hyper = {}
        for name in self.HYPERPARAMETER_FIELDS:
            value = data.get(name)
            if value not in (None, ""):
                hyper["lora_target_modules" if name == "lora_targets" else name] = value
        if self.label_task:
            hyper["label_list_in_prompt"] = bool(data.get("label_list_in_prompt"))
        choice = data["student"]
        return FineTuneSettings(
            method=data["method"],
            preset=data["preset"],
            student=self.students.get(choice),
            local_path=data.get("local_path", "") if choice == LOCAL else "",
            hf_model_id=data.get("hf_model_id", "") if choice == HF else "",
            hyperparameters=hyper,
        )


class RegisterStudentForm(forms.Form):
    name = forms.CharField(max_length=200, required=False, help_text="Defaults to the folder name")
    path = forms.CharField(
        label="Model folder",
        max_length=500,
        help_text="A Hugging Face model folder (config.json, safetensors, tokenizer) inside the "
        "data directory the web server and workers share",
    )
