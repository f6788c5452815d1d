"""The hardware local inference runs on, and the defaults it picks from it (dtype, batch size,
near-tie tolerance)."""

from __future__ import annotations

import platform
from dataclasses import dataclass

from worker.cores import usable_cores
from worker.model_loading import DeviceFacts, ModelShape, cuda_dtype

__all__ = [
    "CUDA_EVAL_BATCH_SIZE",
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_TIE_TOLERANCE",
    "Hardware",
    "available_cores",
    "cpu_name",
    "eval_batch_size",
    "eval_dtype",
]

DEFAULT_BATCH_SIZE = 16
# Margins (logits) below which a greedy choice is treated as a near-tie and recomputed one
# prompt at a time. Measured on SmolLM2-135M, 620-token BANKING77 prompts, CPU: a batch of 8
# vs one prompt at a time differs by at most 3e-5 (float32) and 0.44 (bfloat16) in any logit.
# float32 gets a 30x safety factor; bfloat16 is only just above its noise (rows of a model that
# answers with confident margins still take the fast path); float16 (3 more mantissa bits than
# bfloat16) is scaled from it, not measured.
DEFAULT_TIE_TOLERANCE = {"float32": 1e-3, "bfloat16": 0.5, "float16": 0.1}


@dataclass(frozen=True)
class Hardware:
    device: str  # "cpu" or "cuda"
    name: str  # CPU model or GPU name
    cores: int  # CPU cores available to this process
    threads: int  # torch intra-op threads
    dtype: str
    torch_version: str

    def describe(self) -> str:
        if self.device == "cuda":
            return f"{self.name} (GPU, {self.dtype})"
        return f"{self.name}, {self.cores} cores, {self.threads} threads ({self.dtype})"


def available_cores() -> int:
    """CPU cores this process may run on (affinity mask, capped by a cgroup CPU quota)."""
    return usable_cores()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover - not Linux
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


# Prompts per batch on a GPU: big batches keep it busy (one forward serves them all); the KV
# cache of 128 prompts of ~1,000 tokens is a few GB for a small student.
CUDA_EVAL_BATCH_SIZE = 128


def eval_dtype(facts: DeviceFacts) -> str:
    """The "auto" dtype: the GPU's half type (bf16 where native, else fp16); float32 on CPU."""
    return cuda_dtype(facts) if facts.kind == "cuda" else "float32"


# The prompt length a GPU batch is sized for (a KV cache per prompt of this many tokens).
EVAL_TOKENS_PER_PROMPT = 1024


def eval_batch_size(
    facts: DeviceFacts,
    *,
    shape: ModelShape | None = None,
    n_parameters: int | None = None,
    tokens_per_prompt: int = EVAL_TOKENS_PER_PROMPT,
) -> int:
    """Prompts per batch when a call names none: DEFAULT_BATCH_SIZE on CPU (bigger batches
    only pad more there), CUDA_EVAL_BATCH_SIZE on a GPU with 24 GB or more, half below; with
    the model's ``shape``, no more than the KV caches of ``tokens_per_prompt``-token prompts
    that fit next to its half-precision weights (a 7B student on a 24 GB GPU: 32)."""
    if facts.kind != "cuda":
        return DEFAULT_BATCH_SIZE
    batch = CUDA_EVAL_BATCH_SIZE
    if facts.total_memory_bytes and facts.total_memory_bytes < 24 * 2**30:
        batch = CUDA_EVAL_BATCH_SIZE // 2
    if shape is not None and facts.total_memory_bytes:
        from worker.gpu_sizing import PLAN_SHARE, estimate_parameters

        params = n_parameters or estimate_parameters(shape, tied_embeddings=False)
        free = facts.total_memory_bytes * PLAN_SHARE - params * 2
        # keys + values, every layer, half precision
        kv = 2 * shape.num_layers * shape.num_kv_heads * shape.head_dim * 2 * tokens_per_prompt
        fits = max(1, int(free // kv)) if free > 0 else 1
        batch = min(batch, 1 << (fits.bit_length() - 1))
    return batch
