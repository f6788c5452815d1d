"""What a fine-tune is asked to do (``TrainSpec``), what it came to (``TrainResult``), and the
error raised when a spec cannot be trained as asked (``TrainingConfigError``)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from worker.training_data import TrainExample

__all__ = [
    "DEVICES",
    "HYPERPARAMETER_FIELDS",
    "METHODS",
    "PRESETS",
    "Device",
    "Method",
    "Preset",
    "Status",
    "TrainResult",
    "TrainSpec",
    "TrainingConfigError",
    "split_eval",
]

Method = Literal["lora", "qlora", "full"]
Preset = Literal["quick", "balanced", "thorough"]
Device = Literal["auto", "cpu", "cuda"]
Status = Literal["succeeded", "cancelled", "interrupted", "failed"]
METHODS: tuple[Method, ...] = ("lora", "qlora", "full")
PRESETS: tuple[Preset, ...] = ("quick", "balanced", "thorough")
DEVICES: tuple[Device, ...] = ("auto", "cpu", "cuda")


class TrainingConfigError(ValueError):
    """The spec cannot be trained as asked (on this hardware). ``field`` names the setting at
    fault (the form field a page shows the error on), or is None when no one setting is;
    ``message`` says what is wrong, without the field. ``str()`` is "field: message"."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


# Marks a TrainSpec field a user may set on the start form (listed in HYPERPARAMETER_FIELDS).
_HYPERPARAMETER = {"hyperparameter": True}


@dataclass
class TrainSpec:
    """What to train. ``None`` hyperparameters come from the preset (see ``resolve_hyperparameters``)."""

    base_model: str  # a local folder with a transformers model + tokenizer
    output_dir: str
    train_examples: list[TrainExample]
    eval_examples: list[TrainExample] = field(default_factory=list)
    eval_fraction: float = 0.0  # with no eval_examples: hold out this share of the train set
    method: Method = "lora"
    preset: Preset | None = None  # None: "balanced"
    epochs: float | None = field(default=None, metadata=_HYPERPARAMETER)
    max_steps: int | None = field(default=None, metadata=_HYPERPARAMETER)  # overrides epochs
    learning_rate: float | None = field(default=None, metadata=_HYPERPARAMETER)
    batch_size: int | None = field(default=None, metadata=_HYPERPARAMETER)
    grad_accum: int | None = field(default=None, metadata=_HYPERPARAMETER)
    lora_r: int | None = field(default=None, metadata=_HYPERPARAMETER)
    lora_alpha: int | None = field(default=None, metadata=_HYPERPARAMETER)
    lora_dropout: float | None = field(default=None, metadata=_HYPERPARAMETER)
    # "all-linear" by default
    lora_target_modules: list[str] | str | None = field(default=None, metadata=_HYPERPARAMETER)
    max_length: int | None = field(default=None, metadata=_HYPERPARAMETER)
    seed: int = field(default=0, metadata=_HYPERPARAMETER)
    checkpoint_every_steps: int | None = field(default=None, metadata=_HYPERPARAMETER)
    eval_every_steps: int | None = field(default=None, metadata=_HYPERPARAMETER)
    keep_checkpoints: int = 2
    device: Device = "auto"
    gradient_checkpointing: Literal["auto", "on", "off"] = "auto"
    # CPU only: bf16 autocast. "auto": on where the CPU does bf16 in hardware (AVX512-BF16, AMX),
    # where it beats fp32; elsewhere it is emulated and several times slower (CUDA: always bf16).
    cpu_bf16: Literal["auto", "on", "off"] = "auto"
    threads: int | None = None  # CPU threads; None: the cores this process may use
    # Label tasks: keep the "answer with one of these labels: ..." paragraph in the student's
    # prompt (False: train and serve without it; see worker.taskspec.without_label_list). The
    # choice is stored with the model (TRAINING_META_FILE) so inference renders the same prompt.
    label_list_in_prompt: bool = field(default=True, metadata=_HYPERPARAMETER)
    # Rationale distillation (worker.training_signals): "second_task" adds a "[rationale]"
    # example per training row that carries the teacher's reason; "off" trains on answers only.
    rationale_training: Literal["off", "second_task"] = field(
        default="off", metadata=_HYPERPARAMETER
    )
    # Soft labels (label tasks): weight of the KL term toward the teacher's label distribution
    # (0: off, plain cross-entropy) and its temperature.
    soft_label_weight: float = field(default=0.0, metadata=_HYPERPARAMETER)
    soft_label_temperature: float = field(default=1.0, metadata=_HYPERPARAMETER)
    merge: bool = True
    max_oom_retries: int = 3

    def settings_json(self) -> dict[str, Any]:
        """Everything but the examples (those go to JSONL files)."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("train_examples", "eval_examples")
        }


# The settings a user may choose on the start form (the rest of a spec is the engine's).
HYPERPARAMETER_FIELDS: tuple[str, ...] = tuple(
    f.name for f in fields(TrainSpec) if f.metadata.get("hyperparameter")
)


@dataclass
class TrainResult:
    status: Status
    step: int = 0
    total_steps: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    adapter_dir: str | None = None  # adapter + tokenizer (LoRA/QLoRA)
    merged_dir: str | None = None  # merged safetensors model + tokenizer
    last_checkpoint: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainResult:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def split_eval(spec: TrainSpec) -> tuple[list[TrainExample], list[TrainExample]]:
    """(train, eval): the spec's eval examples, or a seeded ``eval_fraction`` of the train set."""
    if spec.eval_examples or spec.eval_fraction <= 0:
        return list(spec.train_examples), list(spec.eval_examples)
    if not 0 < spec.eval_fraction < 1:
        raise TrainingConfigError("must be between 0 and 1", field="eval_fraction")
    order = list(range(len(spec.train_examples)))
    random.Random(spec.seed).shuffle(order)
    n_eval = max(1, round(len(order) * spec.eval_fraction))
    if n_eval >= len(order):
        raise TrainingConfigError("it leaves no example to train on", field="eval_fraction")
    held = set(order[:n_eval])
    train = [e for i, e in enumerate(spec.train_examples) if i not in held]
    evals = [e for i, e in enumerate(spec.train_examples) if i in held]
    return train, evals
