"""Loading local Hugging Face models, and the device-dependent choices that go with it.

Every model Distillery loads (training, merging, evaluation, a local teacher) goes through
``load_causal_lm`` / ``load_tokenizer``, which never reach a model hub:

- ``use_kernels=False``: transformers 5 turns "hub kernels" on by default and, on CUDA, swaps
  layers (RoPE, RMSNorm, activations) for kernels it downloads from the Hub at load time; on a
  machine without network access the load fails ("Version 2 of 'kernels-community/rotary' is
  not available in the local cache").
- ``local_files_only=True`` and ``trust_remote_code=False``: a folder's own files only, and no
  Python shipped with a model.
- attention is "sdpa" or "eager", never a Hub kernel name (which would be downloaded).

A training child runs with ``hub_free_env`` (USE_HUB_KERNELS=0, HF_HUB_OFFLINE=1, ...) as well.

The device decisions (dtype, 4-bit config, device map, attention, batch size for the GPU) are
pure functions of ``DeviceFacts`` so they can be checked without a GPU; ``cuda_facts`` reads the
facts from the machine (it initialises CUDA: call it only in the process that will use the GPU).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

# Environment for any process that loads models: no downloads, no hub kernels.
HUB_FREE_ENV: dict[str, str] = {
    "USE_HUB_KERNELS": "0",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}

# Attention implementations that run from torch alone. Anything else ("flash_attention_2" without
# the package, "kernels-community/...") makes transformers fetch a kernel from the Hub.
LOCAL_ATTENTION = ("sdpa", "eager")

DType = Literal["float32", "bfloat16", "float16"]


class ModelLoadError(ValueError):
    """A load was asked for in a way that could reach a hub; ``field`` names the argument."""

    def __init__(self, message: str, *, field: str):
        super().__init__(message)
        self.field = field


def hub_free_env(base: Mapping[str, str]) -> dict[str, str]:
    """``base`` with the hub switched off (the settings win over whatever ``base`` says)."""
    env = dict(base)
    env.update(HUB_FREE_ENV)
    return env


def from_pretrained_kwargs(
    *,
    dtype: DType | Literal["auto"] | None = None,
    device_map: Mapping[str, int | str] | None = None,
    attention: str | None = None,
    quantization: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The keyword arguments ``load_causal_lm`` gives ``from_pretrained`` (torch-free: dtype and
    the 4-bit settings are still names and plain values here)."""
    if attention is not None and attention not in LOCAL_ATTENTION:
        raise ModelLoadError(
            f"attention: {attention!r} would load a kernel from a hub; use one of "
            f"{', '.join(LOCAL_ATTENTION)}",
            field="attention",
        )
    kwargs: dict[str, Any] = {
        "local_files_only": True,
        "trust_remote_code": False,
        "use_kernels": False,
    }
    if dtype is not None:
        kwargs["dtype"] = dtype
    if device_map is not None:
        kwargs["device_map"] = dict(device_map)
    if attention is not None:
        kwargs["attn_implementation"] = attention
    if quantization is not None:
        kwargs["quantization_config"] = dict(quantization)
    return kwargs


def load_causal_lm(
    path: str | Path,
    *,
    dtype: DType | Literal["auto"] | None = "float32",
    device_map: Mapping[str, int | str] | None = None,
    attention: str | None = None,
    quantization: Mapping[str, Any] | None = None,
    **extra: Any,
) -> Any:
    """A causal LM from a local folder, without hub kernels, remote code or downloads.

    ``dtype``: a torch dtype's name, "auto" (the checkpoint's own) or None (transformers'
    default).
    ``quantization``: BitsAndBytesConfig arguments (see ``qlora_quantization``). ``extra`` goes
    to ``from_pretrained`` as is (e.g. ``gguf_file``).
    """
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = from_pretrained_kwargs(
        dtype=dtype, device_map=device_map, attention=attention, quantization=quantization
    )
    if dtype is not None and dtype != "auto":
        kwargs["dtype"] = getattr(torch, dtype)
    if quantization is not None:
        import transformers

        settings = dict(quantization)
        compute = settings.get("bnb_4bit_compute_dtype")
        if isinstance(compute, str):
            settings["bnb_4bit_compute_dtype"] = getattr(torch, compute)
        bnb_config: Any = transformers.BitsAndBytesConfig
        kwargs["quantization_config"] = bnb_config(**settings)
    kwargs.update(extra)
    return AutoModelForCausalLM.from_pretrained(str(path), **kwargs)


def load_tokenizer(path: str | Path, **extra: Any) -> Any:
    """The tokenizer of a local model folder (no downloads, no remote code)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        str(path), local_files_only=True, trust_remote_code=False, **extra
    )


# --------------------------------------------------------------------------- device decisions


@dataclass(frozen=True)
class DeviceFacts:
    """What the device choices depend on. ``bf16``: the device computes bf16 natively."""

    kind: Literal["cpu", "cuda"]
    bf16: bool = False
    total_memory_bytes: int = 0  # GPU memory (cuda only)
    name: str = ""
    index: int = 0  # CUDA device index


def cuda_facts(index: int | None = None) -> DeviceFacts:
    """The current CUDA device's facts (initialises CUDA in this process)."""
    import torch

    i = torch.cuda.current_device() if index is None else index
    props = torch.cuda.get_device_properties(i)
    return DeviceFacts(
        kind="cuda",
        bf16=bool(torch.cuda.is_bf16_supported()),
        total_memory_bytes=int(props.total_memory),
        name=str(props.name),
        index=i,
    )


def cuda_dtype(facts: DeviceFacts) -> DType:
    """Half precision on a GPU: bf16 where it is native (Ampere and later), else fp16."""
    return "bfloat16" if facts.bf16 else "float16"


def training_weights_dtype(method: str, facts: DeviceFacts, *, cpu_bf16: bool) -> DType:
    """The dtype the base weights are loaded in for training.

    CUDA with bf16: bf16 for every method. CUDA without: a LoRA/QLoRA's frozen base in fp16,
    but full fine-tuning keeps fp32 weights (fp16 mixed precision cannot step fp16 parameters).
    CPU: fp32, except the frozen base of a LoRA under bf16 autocast (``cpu_bf16``).
    """
    if facts.kind == "cuda":
        if facts.bf16:
            return "bfloat16"
        return "float32" if method == "full" else "float16"
    return "bfloat16" if cpu_bf16 and method == "lora" else "float32"


def qlora_quantization(facts: DeviceFacts) -> dict[str, Any]:
    """BitsAndBytesConfig arguments for QLoRA: 4-bit NF4, double quantisation, half-precision
    compute (bf16 where the GPU has it)."""
    return {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": cuda_dtype(facts),
    }


def device_map_for(facts: DeviceFacts) -> dict[str, int] | None:
    """Load straight onto the GPU (no CPU copy first); None on CPU."""
    return {"": facts.index} if facts.kind == "cuda" else None


# On CPU, attention as plain matrix products beats PyTorch's fused SDPA kernel on short
# sequences and loses on long ones. Measured per layer, forward + backward under bf16 autocast,
# 2 cores, ~512 tokens a batch (SmolLM2 shapes: 9 heads of 64): 32 tokens 0.7 vs 3.3 ms,
# 64: 2.3 vs 9.2, 128: 6.4 vs 7.3, 256: 9.8 vs 7.3, 512: 20 vs 12. Eager also keeps the
# attention matrix for backward, which only short sequences can afford.
CPU_EAGER_ATTENTION_MAX_TOKENS = 160


def attention_for(facts: DeviceFacts, longest_tokens: int) -> str:
    """SDPA on CUDA (fused kernels); on CPU eager for short sequences, SDPA for long ones."""
    if facts.kind == "cpu" and longest_tokens <= CPU_EAGER_ATTENTION_MAX_TOKENS:
        return "eager"
    return "sdpa"


# --------------------------------------------------------------------------- model shape


@dataclass(frozen=True)
class ModelShape:
    """A decoder's sizes, read from its config.json (no weights loaded)."""

    hidden_size: int
    num_layers: int
    intermediate_size: int
    vocab_size: int
    num_heads: int
    num_kv_heads: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // max(self.num_heads, 1)

    def block_parameters(self) -> int:
        """Parameters of the transformer blocks (attention + MLP), without embeddings/head."""
        kv = self.num_kv_heads * self.head_dim
        attention = 2 * self.hidden_size * self.hidden_size + 2 * self.hidden_size * kv
        mlp = 3 * self.hidden_size * self.intermediate_size
        return self.num_layers * (attention + mlp)

    def activation_bytes_per_token(self) -> int:
        """Activations kept for backward, per token, in half precision, without gradient
        checkpointing (a generous estimate: ~18 hidden-sized and 4 intermediate-sized tensors
        per layer; SDPA does not store the attention matrix)."""
        return self.num_layers * (18 * self.hidden_size + 4 * self.intermediate_size) * 2


def read_model_shape(model_dir: str | Path) -> ModelShape | None:
    """The shape in ``model_dir/config.json``; None when there is none or it is not a decoder."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    config = config.get("text_config", config) if isinstance(config, dict) else {}
    try:
        hidden = int(config["hidden_size"])
        heads = int(config.get("num_attention_heads", 1))
        return ModelShape(
            hidden_size=hidden,
            num_layers=int(config["num_hidden_layers"]),
            intermediate_size=int(config.get("intermediate_size", 4 * hidden)),
            vocab_size=int(config.get("vocab_size", 0)),
            num_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
        )
    except (KeyError, TypeError, ValueError):
        return None


def training_flops_per_token(
    shape: ModelShape, *, adapter_parameters: int = 0, completion_fraction: float = 1.0
) -> float:
    """Model FLOPs of one trained token, forward + backward: 6 x the parameters on the path
    the token takes (the blocks, any LoRA adapters, and the LM head at the share of positions
    where our loss applies it: completion tokens only). The usual convention for MFU; for a
    LoRA the frozen weights' gradients are never formed, so the work done is ~2/3 of this."""
    head = shape.hidden_size * shape.vocab_size * completion_fraction
    return 6.0 * (shape.block_parameters() + adapter_parameters + head)


# --------------------------------------------------------------------------- GPU batch size

# Batch sizes a GPU run picks between (powers of two); the floor keeps small runs comparable
# to the CPU recipe, the ceiling keeps the optimiser's step count meaningful.
CUDA_MIN_BATCH = 16
CUDA_MAX_BATCH = 128
# A run should still take at least this many optimiser steps: a bigger batch on a small dataset
# would leave too few updates to learn from.
CUDA_MIN_STEPS = 100
# Share of the GPU's memory the training may plan for (the allocator, CUDA context and
# fragmentation take the rest).
CUDA_MEMORY_SHARE = 0.6


def cuda_batch_size(
    facts: DeviceFacts,
    *,
    shape: ModelShape | None,
    n_parameters: int | None,
    method: str,
    tokens_per_example: int,
    samples_to_train: float | None,
) -> int:
    """Per-device batch size for a GPU run: as large as the memory left after the weights
    and optimiser state allows (activations of ``tokens_per_example`` tokens each), a power of
    two up to CUDA_MAX_BATCH, and small enough (down to CUDA_MIN_BATCH) that
    ``samples_to_train`` (epochs x examples; None: a fixed step count) still makes
    CUDA_MIN_STEPS steps."""
    batch = CUDA_MAX_BATCH
    if shape is not None and facts.total_memory_bytes > 0:
        params = n_parameters or shape.block_parameters()
        # weights (+ gradients and Adam's two fp32 moments for full fine-tuning)
        per_param = {"full": 16.0, "qlora": 0.6}.get(method, 2.0)
        budget = facts.total_memory_bytes * CUDA_MEMORY_SHARE - params * per_param
        per_example = shape.activation_bytes_per_token() * max(tokens_per_example, 1)
        fits = int(budget // per_example) if budget > 0 else 0
        batch = min(batch, _power_of_two_at_most(max(fits, 1)))
    if samples_to_train is not None:
        by_steps = _power_of_two_at_most(max(1, int(samples_to_train // CUDA_MIN_STEPS)))
        batch = min(batch, max(CUDA_MIN_BATCH, by_steps))
    return max(1, batch)


def _power_of_two_at_most(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


def mfu(tokens_per_s: float, flops_per_token: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved training FLOP/s over the device's peak."""
    if peak_flops <= 0 or not math.isfinite(tokens_per_s):
        return 0.0
    return tokens_per_s * flops_per_token / peak_flops


__all__ = [
    "CPU_EAGER_ATTENTION_MAX_TOKENS",
    "HUB_FREE_ENV",
    "DeviceFacts",
    "ModelLoadError",
    "ModelShape",
    "attention_for",
    "cuda_batch_size",
    "cuda_dtype",
    "cuda_facts",
    "device_map_for",
    "from_pretrained_kwargs",
    "hub_free_env",
    "load_causal_lm",
    "load_tokenizer",
    "mfu",
    "qlora_quantization",
    "read_model_shape",
    "training_flops_per_token",
    "training_weights_dtype",
]
