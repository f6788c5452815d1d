"""The concrete settings a fine-tune runs with: the spec's choices, filled in from its preset,
the dataset size and the hardware (``resolve_hyperparameters``), and what to give up after a
CUDA out-of-memory (``smaller_after_oom``)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from worker.gpu_sizing import GpuPlan, plan_gpu_training
from worker.model_loading import DeviceFacts, cuda_batch_size, read_model_shape
from worker.training_spec import METHODS, PRESETS, TrainingConfigError, TrainSpec

__all__ = [
    "CUDA_LOG_EVERY_STEPS",
    "SMALL_STUDENT_LORA_LR_FACTOR",
    "SMALL_STUDENT_PARAMETERS",
    "Hyperparameters",
    "count_parameters",
    "cpu_has_native_bf16",
    "gpu_plan_for",
    "resolve_hyperparameters",
    "smaller_after_oom",
]


@dataclass(frozen=True)
class Hyperparameters:
    """The concrete settings a run uses, after the preset, dataset size and hardware."""

    preset: str | None
    method: str
    device: str
    epochs: float
    total_steps: int
    learning_rate: float
    batch_size: int
    grad_accum: int
    warmup_ratio: float
    lora_r: int | None
    lora_alpha: int | None
    lora_dropout: float | None
    lora_target_modules: list[str] | str | None
    max_length: int
    checkpoint_every_steps: int
    eval_every_steps: int | None
    gradient_checkpointing: bool
    bf16: bool
    seed: int
    # CUDA without native bf16 (e.g. T4, V100): fp16 mixed precision instead.
    fp16: bool = False
    # Progress events every this many steps. On a GPU each one waits for the device to
    # catch up (the loss is read back), so they are spaced out there.
    log_every_steps: int = 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Preset:
    epochs: float
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    lr_lora: float  # learning rate for LoRA/QLoRA
    lr_full: float
    cpu_step_cap: int | None


# Small datasets get more passes (see _epochs_for). The CPU caps bound a run's steps; how long
# they take depends on the machine (a 135M student measured ~5 samples/s on 2 idle EPYC cores in
# fp32, ~12 in bf16, far less on a busy or older CPU): the forms show the estimate for this worker.
_PRESETS: dict[str, _Preset] = {
    "quick": _Preset(1.0, 8, 16, 0.0, 2e-4, 2e-5, 150),
    "balanced": _Preset(2.0, 16, 32, 0.05, 2e-4, 2e-5, 600),
    "thorough": _Preset(3.0, 32, 64, 0.05, 1e-4, 1e-5, None),
}


# LoRA on a small student (under half a billion parameters) takes a higher learning rate than
# the 2e-4 that suits billion-parameter models. Measured: SmolLM2-135M, LoRA r=8, 600 BANKING77
# rows (77 intents, no label list in the prompt), 113 steps of 8 on 2 CPU cores, greedy answers
# on 300 held-out rows: 2e-4 -> 5 %, 1e-3 -> 36 %, 2e-3 -> 46 %, 4e-3 -> 53 %; 1e-3 for twice
# the steps -> 61 %. 10x (2e-3 for quick/balanced) stays clear of the edge for longer runs.
SMALL_STUDENT_PARAMETERS = 500_000_000
SMALL_STUDENT_LORA_LR_FACTOR = 10.0

# GPU runs: a step event every this many steps (each one reads the loss back from the GPU).
CUDA_LOG_EVERY_STEPS = 10


def count_parameters(model_dir: str | Path) -> int | None:
    """Parameters stored in a model folder's safetensors files, read from their headers only
    (no weights loaded); None when the folder has none."""
    folder = Path(model_dir) if str(model_dir) else None
    if folder is None or not folder.is_dir():
        return None
    total = 0
    found = False
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with path.open("rb") as fh:
                size = int.from_bytes(fh.read(8), "little")
                if not 0 < size < 100_000_000:
                    return None
                header = json.loads(fh.read(size))
        except (OSError, ValueError):
            return None
        for name, entry in header.items():
            if name != "__metadata__" and isinstance(entry, dict):
                total += math.prod(int(d) for d in entry.get("shape", []))
                found = True
    return total if found else None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX tiles). Measured on
    SmolLM2-135M LoRA, 2 cores (bench/train_throughput.py --ablations): bf16 autocast ran 1.3x
    fp32 on an AVX512-BF16 EPYC, while on CPUs without it bf16 is emulated and slower."""
    try:
        import torch
    except ImportError:
        return False
    cpu: Any = torch.cpu
    try:
        return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())
    except AttributeError:  # an older torch without the probes
        return False


def _epochs_for(base: float, n_train: int) -> float:
    if n_train < 300:
        return base * 2
    if n_train < 1000:
        return base * 1.5
    if n_train > 20000:
        return max(1.0, base / 2)
    return base


def resolve_hyperparameters(
    spec: TrainSpec,
    *,
    n_train: int,
    device: str,
    gpu: DeviceFacts | None = None,
    longest_tokens: int | None = None,
) -> Hyperparameters:
    """Fill the spec's unset hyperparameters from its preset, the dataset size and the device.

    ``device`` is "cpu" or "cuda" (see ``resolve_device``). ``gpu``: the GPU's facts, where
    known (the training child reads them); with them a CUDA LoRA/QLoRA run takes its LoRA rank,
    micro-batch, gradient accumulation, gradient checkpointing ("auto") and max_length from
    ``worker.gpu_sizing.plan_gpu_training`` (the batch for sequences of ``longest_tokens``,
    else ``max_length``), full fine-tuning its batch from ``cuda_batch_size``; fp16 on GPUs
    without bf16. Without them a CUDA run assumes bf16 and a batch of 16. What the user set
    always wins. Raises TrainingConfigError.
    """
    preset = _check_spec(spec, n_train=n_train, device=device)
    on_cuda = device == "cuda"
    epochs = spec.epochs if spec.epochs is not None else _epochs_for(preset.epochs, n_train)
    plan = (
        gpu_plan_for(
            spec,
            preset_rank=preset.lora_r,
            n_train=n_train,
            epochs=epochs,
            gpu=gpu,
            longest_tokens=longest_tokens,
        )
        if on_cuda
        else None
    )
    batch_size, grad_accum, max_length = _batch_accum_and_length(
        spec,
        plan,
        n_train=n_train,
        on_cuda=on_cuda,
        gpu=gpu,
        epochs=epochs,
        longest_tokens=longest_tokens,
    )
    total_steps = _total_steps(
        spec,
        preset,
        epochs=epochs,
        n_train=n_train,
        examples_per_step=batch_size * grad_accum,
        on_cuda=on_cuda,
    )
    learning_rate = _learning_rate(spec, preset)
    checkpoint_every, eval_every = _checkpoint_and_eval_every(spec, total_steps=total_steps)
    bf16, fp16 = _precision(spec, on_cuda=on_cuda, gpu=gpu)
    lora_r, lora_alpha, lora_dropout, lora_target_modules = _lora_settings(spec, preset, plan)
    return Hyperparameters(
        preset=spec.preset,
        method=spec.method,
        device=device,
        epochs=epochs,
        total_steps=total_steps,
        learning_rate=learning_rate,
        batch_size=batch_size,
        grad_accum=grad_accum,
        warmup_ratio=0.05,
        lora_r=lora_r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        lora_target_modules=lora_target_modules,
        max_length=max_length,
        checkpoint_every_steps=checkpoint_every,
        eval_every_steps=eval_every,
        gradient_checkpointing=_gradient_checkpointing(spec, plan),
        bf16=bf16,
        seed=spec.seed,
        fp16=fp16,
        log_every_steps=CUDA_LOG_EVERY_STEPS if on_cuda else 1,
    )


def _batch_accum_and_length(
    spec: TrainSpec,
    plan: GpuPlan | None,
    *,
    n_train: int,
    on_cuda: bool,
    gpu: DeviceFacts | None,
    epochs: float,
    longest_tokens: int | None,
) -> tuple[int, int, int]:
    """(micro-batch, gradient accumulation, max_length): the user's values, else the GPU plan's
    (its accumulation only when the user set neither batch nor accumulation: a batch they chose
    is what they meant per step), else the device's defaults."""
    grad_accum = spec.grad_accum if spec.grad_accum is not None else 1
    if plan is not None and spec.batch_size is None and spec.grad_accum is None:
        grad_accum = plan.grad_accum
    max_length = spec.max_length or (plan.max_length if plan else (1024 if on_cuda else 512))
    batch_size = (
        _batch_size(
            spec,
            n_train=n_train,
            on_cuda=on_cuda,
            gpu=gpu,
            epochs=epochs,
            grad_accum=grad_accum,
            tokens_per_example=min(longest_tokens or max_length, max_length),
        )
        if plan is None or spec.batch_size is not None
        else plan.batch_size
    )
    return batch_size, grad_accum, max_length


def _total_steps(
    spec: TrainSpec,
    preset: _Preset,
    *,
    epochs: float,
    n_train: int,
    examples_per_step: int,
    on_cuda: bool,
) -> int:
    """The user's max_steps, else the epochs' steps; a CPU run on the preset's epochs stops at
    the preset's step cap so it ends in reasonable time (explicit epochs are taken as meant)."""
    if spec.max_steps is not None:
        return spec.max_steps
    total_steps = math.ceil(epochs * n_train / examples_per_step)
    if not on_cuda and preset.cpu_step_cap is not None and spec.epochs is None:
        total_steps = min(total_steps, preset.cpu_step_cap)
    return total_steps


def _checkpoint_and_eval_every(spec: TrainSpec, *, total_steps: int) -> tuple[int, int | None]:
    """(steps between checkpoints, steps between evaluations): the user's, else about ten
    checkpoints (at most 200 steps apart) and five evaluations a run; no evaluation without
    eval rows."""
    if spec.checkpoint_every_steps is not None and spec.checkpoint_every_steps < 1:
        raise TrainingConfigError("must be at least 1", field="checkpoint_every_steps")
    checkpoint_every = spec.checkpoint_every_steps or max(1, min(200, round(total_steps / 10)))
    has_eval = bool(spec.eval_examples) or spec.eval_fraction > 0
    eval_every = (spec.eval_every_steps or max(1, total_steps // 5)) if has_eval else None
    return checkpoint_every, eval_every


def _lora_settings(
    spec: TrainSpec, preset: _Preset, plan: GpuPlan | None
) -> tuple[int | None, int | None, float | None, list[str] | str | None]:
    """(rank, alpha, dropout, target modules): the user's, else the GPU plan's, else the
    preset's; all None for full fine-tuning, which has no adapter."""
    if spec.method == "full":
        return None, None, None, None
    return (
        spec.lora_r or (plan.lora_r if plan else preset.lora_r),
        spec.lora_alpha or (plan.lora_alpha if plan else preset.lora_alpha),
        spec.lora_dropout if spec.lora_dropout is not None else preset.lora_dropout,
        spec.lora_target_modules or "all-linear",
    )


def _gradient_checkpointing(spec: TrainSpec, plan: GpuPlan | None) -> bool:
    # CPU: activations are cheap in RAM and recomputing them costs ~30%. CUDA: off at
    # first; an out-of-memory retry turns it on before shrinking the batch.
    # On a GPU with a plan, "auto" follows it (on when few sequences fit without it).
    return spec.gradient_checkpointing == "on" or (
        spec.gradient_checkpointing == "auto" and plan is not None and plan.gradient_checkpointing
    )


def gpu_plan_for(
    spec: TrainSpec,
    *,
    preset_rank: int,
    n_train: int,
    epochs: float,
    gpu: DeviceFacts | None,
    longest_tokens: int | None = None,
) -> GpuPlan | None:
    """The LoRA/QLoRA plan (worker.gpu_sizing) for this spec on this GPU; None for full
    fine-tuning, an unknown GPU, or a base folder without a readable config.json. Its
    ``max_length`` is sized for the spec's max_length (1024 by default) and so stays the same
    once the data's longest sequence is known; the batch is sized for the longest sequence.
    Raises TrainingConfigError (field ``method``) when nothing fits."""
    if spec.method == "full" or gpu is None or gpu.kind != "cuda" or not spec.base_model:
        return None
    shape = read_model_shape(spec.base_model)
    if shape is None or gpu.total_memory_bytes <= 0:
        return None
    n_parameters = count_parameters(spec.base_model)
    planned = None if spec.max_steps is not None else epochs * n_train
    common: dict[str, Any] = {
        "shape": shape,
        "n_parameters": n_parameters,
        "gpu_memory_bytes": gpu.total_memory_bytes,
        "method": spec.method,
        "preset_rank": preset_rank,
        "samples_to_train": planned,
    }
    plan = plan_gpu_training(max_length=spec.max_length or 1024, **common)
    if not plan.fits:
        raise TrainingConfigError(" ".join(plan.reasons[:1] + plan.reasons[-1:]), field="method")
    if longest_tokens and longest_tokens < plan.max_length:
        by_data = plan_gpu_training(max_length=longest_tokens, **common)
        plan = replace(
            by_data,
            max_length=plan.max_length,
            reasons=plan.reasons,
        )
    return plan


def _check_spec(spec: TrainSpec, *, n_train: int, device: str) -> _Preset:
    """The spec's preset, after the checks that need no arithmetic. Raises TrainingConfigError."""
    if spec.method not in METHODS:
        raise TrainingConfigError(f"must be one of {', '.join(METHODS)}", field="method")
    if spec.method == "qlora" and device != "cuda":
        raise TrainingConfigError(
            "QLoRA needs a CUDA GPU: it loads the base model in 4-bit with bitsandbytes, which "
            "this CPU-only worker cannot do. Choose LoRA (same adapter, full-precision base) or "
            "run the job on a GPU worker."
        )
    preset = spec.preset or "balanced"
    if preset not in _PRESETS:
        raise TrainingConfigError(f"must be one of {', '.join(PRESETS)}", field="preset")
    if n_train < 1:
        raise TrainingConfigError("there is nothing to train on", field="train_examples")
    for name in ("batch_size", "grad_accum", "lora_r", "lora_alpha", "max_length", "max_steps"):
        value = getattr(spec, name)
        if value is not None and value < 1:
            raise TrainingConfigError("must be at least 1", field=name)
    if spec.epochs is not None and spec.epochs <= 0:
        raise TrainingConfigError("must be more than 0", field="epochs")
    if spec.lora_dropout is not None and not 0 <= spec.lora_dropout < 1:
        raise TrainingConfigError("must be between 0 and 1", field="lora_dropout")
    return _PRESETS[preset]


def _batch_size(
    spec: TrainSpec,
    *,
    n_train: int,
    on_cuda: bool,
    gpu: DeviceFacts | None,
    epochs: float,
    grad_accum: int,
    tokens_per_example: int,
) -> int:
    """The spec's batch size; else on a known GPU what fits its memory; else 16 (GPU) or 8."""
    if spec.batch_size is not None:
        return spec.batch_size
    if on_cuda and gpu is not None and gpu.kind == "cuda":
        # A fixed step count does not shrink with the batch; an epoch count does.
        planned = None if spec.max_steps is not None else epochs * n_train / grad_accum
        return cuda_batch_size(
            gpu,
            shape=read_model_shape(spec.base_model) if spec.base_model else None,
            n_parameters=count_parameters(spec.base_model) if spec.base_model else None,
            method=spec.method,
            tokens_per_example=tokens_per_example,
            samples_to_train=planned,
        )
    return 16 if on_cuda else 8


def _learning_rate(spec: TrainSpec, preset: _Preset) -> float:
    """The spec's learning rate, else the preset's (LoRA on a small student: 10x)."""
    learning_rate = spec.learning_rate
    if learning_rate is None:
        learning_rate = preset.lr_full if spec.method == "full" else preset.lr_lora
        if spec.method != "full" and spec.base_model:
            n_params = count_parameters(spec.base_model)
            if n_params is not None and n_params < SMALL_STUDENT_PARAMETERS:
                learning_rate = preset.lr_lora * SMALL_STUDENT_LORA_LR_FACTOR
    if not 0 < learning_rate < 1:
        raise TrainingConfigError("must be between 0 and 1", field="learning_rate")
    return learning_rate


def _precision(spec: TrainSpec, *, on_cuda: bool, gpu: DeviceFacts | None) -> tuple[bool, bool]:
    """(bf16, fp16): CUDA bf16 where the GPU has it, else fp16; CPU per ``cpu_bf16``."""
    if spec.cpu_bf16 not in ("auto", "on", "off"):
        raise TrainingConfigError("must be auto, on or off", field="cpu_bf16")
    if on_cuda:
        bf16 = gpu.bf16 if gpu is not None and gpu.kind == "cuda" else True
        return bf16, not bf16
    if spec.cpu_bf16 == "auto":
        return cpu_has_native_bf16(), False
    return spec.cpu_bf16 == "on", False


def smaller_after_oom(hp: Hyperparameters) -> Hyperparameters:
    """The settings to retry with after a CUDA out-of-memory: first recompute activations
    (gradient checkpointing), then halve the micro-batch and double the accumulation, so the
    effective batch and the step count stay the same. Raises TrainingConfigError (field
    ``batch_size``) when there is nothing left to give up."""
    if not hp.gradient_checkpointing:
        return replace(hp, gradient_checkpointing=True)
    if hp.batch_size == 1:
        raise TrainingConfigError(
            "out of GPU memory even with batch size 1 and gradient checkpointing; "
            "lower max_length or use QLoRA",
            field="batch_size",
        )
    return replace(hp, batch_size=hp.batch_size // 2, grad_accum=hp.grad_accum * 2)
