"""The model a training child trains: loaded for the device and method, LoRA-wrapped, and
afterwards the adapter merged into a full-precision copy of the base."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from worker.hyperparameters import Hyperparameters
from worker.model_loading import (
    DeviceFacts,
    attention_for,
    cuda_dtype,
    device_map_for,
    load_causal_lm,
    qlora_quantization,
    training_weights_dtype,
)

__all__ = [
    "STAGING",
    "causal_lm",
    "cpu_attention",
    "load_model",
    "merge_adapter",
    "save_tokenizer",
    "skip_adapter_input_casts",
]

# Suffix of the folder a save is written to before it is renamed into place.
STAGING = ".staging"


def cpu_attention(longest_tokens: int) -> str | None:
    """The attention implementation for a CPU run whose longest sequence has this many tokens
    (None: the model's default, SDPA)."""
    choice = attention_for(DeviceFacts(kind="cpu"), longest_tokens)
    return choice if choice == "eager" else None


def load_model(
    base: str,
    hp: Hyperparameters,
    *,
    attention: str | None = None,
    facts: DeviceFacts | None = None,
) -> Any:
    """The model to train: fp32 on CPU, or with bf16 autocast (``hp.bf16``, entered in the
    trainer) the frozen base of a LoRA in bf16; on CUDA bf16 (fp16 where the GPU has no bf16;
    see ``worker.model_loading.training_weights_dtype``) with SDPA attention, 4-bit NF4 for
    QLoRA; LoRA-wrapped, with GapDropout for the adapters on CPU. Never reaches a hub."""
    if facts is None:
        facts = DeviceFacts(kind="cuda", bf16=hp.bf16) if hp.device == "cuda" else None
    on_cuda = facts is not None and facts.kind == "cuda"
    device_facts = facts if facts is not None else DeviceFacts(kind="cpu", bf16=hp.bf16)
    dtype = training_weights_dtype(hp.method, device_facts, cpu_bf16=hp.bf16)
    # A LoRA's base is frozen, and under autocast every forward would cast fp32 weights to the
    # half type again; every forward runs under autocast (DistilleryTrainer._autocast).
    autocast_frozen_base = hp.method == "lora" and dtype != "float32"
    model: Any = load_causal_lm(
        base,
        dtype=dtype,
        device_map=device_map_for(device_facts),
        attention="sdpa" if on_cuda else attention,
        quantization=qlora_quantization(device_facts) if hp.method == "qlora" else None,
    )
    model.config.use_cache = False
    if hp.method == "full":
        if hp.gradient_checkpointing:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        return model

    import peft
    from peft import LoraConfig, get_peft_model

    prepare_kbit: Any = peft.prepare_model_for_kbit_training

    if hp.method == "qlora":
        model = prepare_kbit(
            model,
            use_gradient_checkpointing=hp.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif hp.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    lora = LoraConfig(
        r=hp.lora_r or 8,
        lora_alpha=hp.lora_alpha or 16,
        lora_dropout=hp.lora_dropout or 0.0,
        target_modules=hp.lora_target_modules or "all-linear",
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    if not on_cuda:
        from worker.gap_dropout import use_gap_dropout

        use_gap_dropout(model)
    if autocast_frozen_base:
        # Every forward of this model runs under autocast (DistilleryTrainer._autocast).
        skip_adapter_input_casts(model)
    return model


def skip_adapter_input_casts(model: Any) -> None:
    """Stop peft casting each adapter's input to the adapter's dtype. With a bf16 base and fp32
    adapters under bf16 autocast, peft casts the input up to fp32 and autocast casts it back
    down for the product: two copies per adapter and forward (6 % of a CPU step). Only for a
    model whose every forward runs under autocast."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    tuners: list[Any] = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for tuner in tuners:
        tuner.cast_input_dtype_enabled = False


def causal_lm(model: Any) -> Any:
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def save_tokenizer(tokenizer: Any, dest: Path) -> None:
    tokenizer.save_pretrained(str(dest))


def merge_adapter(
    base: str, adapter_dir: Path, dest: Path, tokenizer: Any, hp: Hyperparameters
) -> None:
    """Merge the adapter into a full-precision copy of the base (never into 4-bit weights):
    the GPU's half type after a CUDA run, float32 after a CPU one."""
    from peft import PeftModel

    dtype = cuda_dtype(DeviceFacts(kind="cuda", bf16=hp.bf16)) if hp.device == "cuda" else None
    base_model = load_causal_lm(base, dtype=dtype or "float32")
    merged = PeftModel.from_pretrained(base_model, str(adapter_dir)).merge_and_unload()
    merged.config.use_cache = True
    staging = dest.with_name(dest.name + STAGING)
    shutil.rmtree(staging, ignore_errors=True)
    merged.save_pretrained(str(staging))
    save_tokenizer(tokenizer, staging)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(staging, dest)
