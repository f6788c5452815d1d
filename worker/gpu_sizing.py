"""How a LoRA/QLoRA fine-tune of a 0.5-8B student is laid out on one GPU: LoRA on a bf16 base or
QLoRA on a 4-bit base, the adapter's rank, the micro-batch, the gradient accumulation, gradient
checkpointing and the longest sequence, each with the reason a page can show.

A pure function of (parameter count, the decoder's shape, the GPU's memory, the sequence length,
the dataset's planned samples): no torch, no GPU, so the choices for a 7B student on a 12 GB GPU
can be checked on a laptop (tests/worker/test_gpu_sizing.py uses the published config.json shapes
of Qwen2.5-0.5B, Llama 3.2 3B, Phi-3 Mini and Mistral 7B).

The memory model, per part (bytes):

- base weights: 2 per parameter in bf16/fp16 (LoRA); QLoRA keeps the transformer blocks' linear
  layers in NF4 with double-quantised constants (~4.13 bits = 0.516 bytes per weight) and the
  embeddings, head and norms in half precision (bitsandbytes quantises nn.Linear only);
- adapter: its fp32 weights, gradients and Adam's two moments, 16 bytes per adapter parameter;
- activations kept for backward, per token: ``ModelShape.activation_bytes_per_token`` without
  gradient checkpointing; with it, each layer's input (hidden size x 2 bytes) plus one layer's
  full set (the layer being recomputed);
- the plan may use PLAN_SHARE of the GPU's memory: the CUDA context, the allocator's cache and
  fragmentation, and the loss's logits take the rest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from worker.model_loading import ModelShape

__all__ = [
    "BF16_BYTES",
    "MIN_MAX_LENGTH",
    "PLAN_SHARE",
    "QLORA_BYTES_PER_WEIGHT",
    "GpuPlan",
    "adapter_parameters",
    "estimate_parameters",
    "lora_rank_for",
    "plan_gpu_training",
]

# GPU memory is sold and reported (nvidia-smi) in binary units: a "12 GB" card has 12 GiB.
GB = 2**30
BF16_BYTES = 2
# NF4 (4 bits) + one fp8 absmax per 64 weights + one fp32 constant per 256 absmaxes
# (double quantisation, Dettmers et al. 2023): 4 + 8/64 + 32/(64*256) = 4.127 bits.
QLORA_BYTES_PER_WEIGHT = 4.127 / 8
ADAPTER_STATE_BYTES = 16  # fp32 weight + fp32 grad + Adam's two fp32 moments
PLAN_SHARE = 0.8
# Batch sizes a plan picks between (powers of two), and the optimiser steps a run should still
# take (same numbers as worker.model_loading.cuda_batch_size, which plans for small students).
MIN_EFFECTIVE_BATCH = 16
MAX_BATCH = 128
MIN_STEPS = 100
# The shortest sequence a plan shrinks max_length to before it gives up on the GPU.
MIN_MAX_LENGTH = 256
# Without gradient checkpointing a micro-batch this small leaves the GPU waiting on launches;
# recomputing activations (~30 % more compute) for a 4x larger micro-batch is the better trade.
MIN_MICRO_BATCH = 4
# Students from this size get twice the preset's LoRA rank (see lora_rank_for).
LARGE_STUDENT_PARAMETERS = 4_000_000_000


@dataclass(frozen=True)
class GpuPlan:
    """What a GPU run uses, and why (``reasons``: one sentence per choice, for the form)."""

    method: str  # "lora" | "qlora"
    lora_r: int
    lora_alpha: int
    lora_target_modules: str
    batch_size: int
    grad_accum: int
    max_length: int
    gradient_checkpointing: bool
    n_parameters: int
    weights_bytes: int  # the base as loaded (bf16, or 4-bit for QLoRA)
    bf16_weights_bytes: int
    gpu_memory_bytes: int
    fits: bool  # False: not even one sequence of MIN_MAX_LENGTH tokens fits
    reasons: list[str] = field(default_factory=list)

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.grad_accum

    def summary(self) -> str:
        method = "QLoRA (4-bit base)" if self.method == "qlora" else "LoRA (bf16 base)"
        return (
            f"{method}, rank {self.lora_r} on {self.lora_target_modules}, batch "
            f"{self.batch_size} x {self.grad_accum} accumulation, up to {self.max_length} tokens"
            + (", gradient checkpointing" if self.gradient_checkpointing else "")
        )


def estimate_parameters(shape: ModelShape, *, tied_embeddings: bool) -> int:
    """Parameters of a decoder from its shape (blocks, embeddings, head unless tied, norms),
    for a folder whose safetensors headers cannot be read."""
    embeddings = shape.vocab_size * shape.hidden_size
    head = 0 if tied_embeddings else embeddings
    norms = shape.hidden_size * (2 * shape.num_layers + 1)
    return shape.block_parameters() + embeddings + head + norms


def adapter_parameters(shape: ModelShape, rank: int) -> int:
    """Parameters of a rank-``rank`` LoRA on every linear layer of the blocks ("all-linear":
    q, k, v, o, gate, up, down; r x (in + out) each)."""
    kv = shape.num_kv_heads * shape.head_dim
    h, inter = shape.hidden_size, shape.intermediate_size
    per_layer = (h + h) * 2 + (h + kv) * 2 + (h + inter) * 2 + (inter + h)
    return shape.num_layers * rank * per_layer


def lora_rank_for(n_parameters: int, preset_rank: int) -> int:
    """The preset's rank (8 / 16 / 32), doubled from LARGE_STUDENT_PARAMETERS up. Why: the
    CPU preset's ranks were measured on a 135M student; the QLoRA paper trained its 7B-65B
    students with r=64 on all linear layers (so "thorough" on a 7B model is their recipe), and the
    adapter of a bigger model costs little next to its base (Mistral 7B, r=32: 84M parameters,
    1.3 GB of optimiser state next to 13.5 GB of bf16 weights)."""
    return preset_rank * 2 if n_parameters >= LARGE_STUDENT_PARAMETERS else preset_rank


def _activation_bytes_per_token(shape: ModelShape, *, checkpointing: bool) -> int:
    if not checkpointing:
        return shape.activation_bytes_per_token()
    one_layer = shape.activation_bytes_per_token() // max(shape.num_layers, 1)
    return shape.num_layers * shape.hidden_size * BF16_BYTES + one_layer


def _weights_bytes(shape: ModelShape, n_parameters: int, method: str) -> int:
    if method != "qlora":
        return n_parameters * BF16_BYTES
    linear = shape.block_parameters()
    rest = max(n_parameters - linear, 0)
    return int(linear * QLORA_BYTES_PER_WEIGHT + rest * BF16_BYTES)


def _power_of_two_at_most(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


def _gb(n_bytes: float) -> str:
    return f"{n_bytes / GB:.1f} GB"


def _size(n_parameters: int) -> str:
    if n_parameters >= 1e9:
        return f"{n_parameters / 1e9:.1f}B parameters"
    return f"{n_parameters / 1e6:.0f}M parameters"


def plan_gpu_training(
    *,
    shape: ModelShape,
    n_parameters: int | None,
    gpu_memory_bytes: int,
    max_length: int = 1024,
    method: str = "auto",
    preset_rank: int = 16,
    samples_to_train: float | None = None,
    tied_embeddings: bool = False,
) -> GpuPlan:
    """The plan for a LoRA-family run on a GPU with ``gpu_memory_bytes``.

    ``method``: "auto" (LoRA when the bf16 base, its adapter and one checkpointed sequence of
    ``max_length`` tokens fit in PLAN_SHARE of the memory, else QLoRA), or "lora"/"qlora" to
    plan for that one. ``samples_to_train``: epochs x examples (None: a fixed step count); the
    effective batch is MIN_EFFECTIVE_BATCH, or larger when the data still gives MIN_STEPS steps,
    up to MAX_BATCH, reached by gradient accumulation where the memory allows a smaller
    micro-batch. ``max_length`` shrinks (by halves, not below MIN_MAX_LENGTH) when one sequence
    of it does not fit even with gradient checkpointing."""
    params = n_parameters or estimate_parameters(shape, tied_embeddings=tied_embeddings)
    budget_total = gpu_memory_bytes * PLAN_SHARE
    rank = lora_rank_for(params, preset_rank)
    state = adapter_parameters(shape, rank) * ADAPTER_STATE_BYTES
    bf16_weights = params * BF16_BYTES
    reasons: list[str] = []
    if method == "auto":
        method = _auto_method(
            shape,
            params=params,
            state=state,
            max_length=max_length,
            gpu_memory_bytes=gpu_memory_bytes,
            reasons=reasons,
        )
    weights = _weights_bytes(shape, params, method)
    reasons.append(_rank_reason(rank, preset_rank))
    free = budget_total - weights - state
    checkpointing, per_token, max_length, fits = _fit_sequences(
        shape, free=free, max_length=max_length, reasons=reasons
    )
    micro, accum = _batch_and_accumulation(
        free=free,
        per_token=per_token,
        max_length=max_length,
        fits=fits,
        samples_to_train=samples_to_train,
        reasons=reasons,
    )
    if not fits:
        reasons.append(
            f"Does not fit: even one {max_length}-token sequence needs more than the "
            f"{_gb(max(free, 0))} left after the weights; use a GPU with more memory."
        )
    return GpuPlan(
        method=method,
        lora_r=rank,
        lora_alpha=2 * rank,
        lora_target_modules="all-linear",
        batch_size=micro,
        grad_accum=accum,
        max_length=max_length,
        gradient_checkpointing=checkpointing,
        n_parameters=params,
        weights_bytes=weights,
        bf16_weights_bytes=bf16_weights,
        gpu_memory_bytes=gpu_memory_bytes,
        fits=fits,
        reasons=reasons,
    )


def _auto_method(
    shape: ModelShape,
    *,
    params: int,
    state: int,
    max_length: int,
    gpu_memory_bytes: int,
    reasons: list[str],
) -> str:
    """LoRA ("lora") when the bf16 base, its adapter state and one checkpointed sequence fit in
    the run's share of the memory, else QLoRA ("qlora"); appends the reason the user reads."""
    budget_total = gpu_memory_bytes * PLAN_SHARE
    bf16_weights = params * BF16_BYTES
    one_seq_gc = _activation_bytes_per_token(shape, checkpointing=True) * max_length
    bf16_need = bf16_weights + state + one_seq_gc
    memory = f"this GPU has {_gb(gpu_memory_bytes)}"
    method = "lora" if bf16_need <= budget_total else "qlora"
    if method == "qlora":
        reasons.append(
            f"QLoRA: {_size(params)} in bf16 need ~{_gb(bf16_weights)} "
            f"(~{_gb(bf16_need)} to train), {memory} "
            f"(a run plans for {PLAN_SHARE:.0%} of it); a 4-bit base takes "
            f"~{_gb(_weights_bytes(shape, params, 'qlora'))}."
        )
    else:
        reasons.append(
            f"LoRA on a bf16 base: {_size(params)} need ~{_gb(bf16_weights)} in bf16 "
            f"(~{_gb(bf16_need)} to train), within the {_gb(budget_total)} a run plans for "
            f"on this {_gb(gpu_memory_bytes)} GPU."
        )
    return method


def _rank_reason(rank: int, preset_rank: int) -> str:
    """Why the run uses this LoRA rank (the preset's, or twice it for a large student)."""
    return f"LoRA rank {rank} on every linear layer of the blocks (all-linear): " + (
        f"twice the preset's {preset_rank} for a student of {LARGE_STUDENT_PARAMETERS / 1e9:.0f}B "
        "parameters or more."
        if rank != preset_rank
        else f"the preset's rank for a student under {LARGE_STUDENT_PARAMETERS / 1e9:.0f}B "
        "parameters."
    )


def _fit_sequences(
    shape: ModelShape, *, free: float, max_length: int, reasons: list[str]
) -> tuple[bool, int, int, bool]:
    """(gradient checkpointing, activation bytes per token, max_length, fits) for the memory
    left after the weights: checkpointing only when MIN_MICRO_BATCH sequences do not fit
    without it (it costs recompute), then halving max_length until one sequence fits."""
    checkpointing = False
    per_token = _activation_bytes_per_token(shape, checkpointing=False)
    if free < per_token * max_length * MIN_MICRO_BATCH:
        checkpointing = True
        per_token = _activation_bytes_per_token(shape, checkpointing=True)
        reasons.append(
            f"Gradient checkpointing: one {max_length}-token sequence keeps "
            f"~{_gb(shape.activation_bytes_per_token() * max_length)} of activations, and "
            f"{MIN_MICRO_BATCH} of them do not fit in the {_gb(max(free, 0))} left after the "
            "weights."
        )
    asked_length = max_length
    while free < per_token * max_length and max_length > MIN_MAX_LENGTH:
        max_length = max(MIN_MAX_LENGTH, max_length // 2)
    fits = free >= per_token * max_length
    if max_length != asked_length:
        reasons.append(
            f"Sequences cut to {max_length} tokens (from {asked_length}): a longer one does not "
            f"fit in the {_gb(max(free, 0))} left after the weights."
        )
    return checkpointing, per_token, max_length, fits


def _batch_and_accumulation(
    *,
    free: float,
    per_token: int,
    max_length: int,
    fits: bool,
    samples_to_train: float | None,
    reasons: list[str],
) -> tuple[int, int]:
    """(micro-batch, gradient accumulation): the largest power-of-two micro-batch the memory
    holds, accumulated up to the run's target batch (larger only while the data still gives
    MIN_STEPS steps)."""
    micro = _power_of_two_at_most(int(free // (per_token * max_length))) if fits else 1
    target = MAX_BATCH
    if samples_to_train is not None:
        by_steps = _power_of_two_at_most(max(1, int(samples_to_train // MIN_STEPS)))
        target = min(MAX_BATCH, max(MIN_EFFECTIVE_BATCH, by_steps))
    micro = min(micro, target, MAX_BATCH)
    accum = max(1, math.ceil(target / micro))
    reasons.append(
        f"Batch {micro} x {accum} accumulation = {micro * accum} examples per step: "
        f"{micro} sequence{'s' if micro != 1 else ''} of {max_length} tokens fit in the "
        f"{_gb(max(free, 0))} left after the weights"
        + (f", accumulated to the run's batch of {target}." if accum > 1 else ".")
    )
    return micro, accum
