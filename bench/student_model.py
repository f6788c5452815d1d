"""The student the benchmarks use: SmolLM2-135M-Instruct, or a random model of its shape.

``prepare_student`` returns the prepared SmolLM2 folder (worker.base_models.ensure_smollm2).
With ``random_init=True`` and no weights to be had (no GGUF, no network), it builds a model of
SmolLM2-135M's shape with random weights instead, once, next to where the real one would be:
throughput and memory are the real model's; accuracy is meaningless. The tokenizer is the real
one where any copy of it is at hand (a prepared folder or the GGUF); otherwise a byte-level BPE
trained on the benchmark's own texts stands in (``tokenizer`` says which), so token counts per
example differ from SmolLM2's.

Also: peak dense bf16 FLOP/s per GPU for the MFU estimate.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

# SmolLM2-135M-Instruct's architecture (its config.json).
SMOLLM2_SHAPE: dict[str, Any] = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
    "initializer_range": 0.041666666666666664,
}
RANDOM_MARK = "distillery_random_init.json"

# Dense bf16 tensor-core peak (no sparsity), FLOP/s, by a substring of the device name.
PEAK_BF16_FLOPS: list[tuple[str, float]] = [
    ("H200", 989e12),
    ("H100", 989e12),  # SXM; the PCIe card is ~756e12
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("V100", 125e12),  # fp16 (no bf16)
    ("T4", 65e12),  # fp16 (no bf16)
]


def data_root() -> Path:
    return Path(os.environ.get("DISTILLERY_DATA_DIR") or REPO / ".data")


def peak_flops(device_name: str) -> tuple[float, str]:
    """(peak FLOP/s, what it is) for a GPU name; (0, ...) when unknown."""
    for key, flops in PEAK_BF16_FLOPS:
        if key.lower() in device_name.lower():
            return flops, f"{key} dense bf16 {flops / 1e12:.0f} TFLOP/s"
    return 0.0, f"unknown peak for {device_name!r}"


def prepare_student(
    model_dir: Path,
    *,
    source: Path | None,
    download: bool,
    random_init: bool,
    texts: Iterable[str] = (),
) -> tuple[Path, dict[str, Any]]:
    """(model folder, what it is): the real SmolLM2, or with ``random_init`` and no weights to
    be had, a random model of its shape (built once in ``<model_dir>-random``)."""
    from worker.base_models import BaseModelError, ensure_smollm2, is_prepared

    try:
        path = ensure_smollm2(model_dir, source=source, download=download)
        return path, {"weights": "SmolLM2-135M-Instruct", "tokenizer": "real"}
    except BaseModelError as exc:
        if not random_init:
            raise SystemExit(f"{exc}\n(--random-init: a random model of the same shape)") from exc
        reason = str(exc)
    random_dir = model_dir.with_name(model_dir.name + "-random")
    mark = random_dir / RANDOM_MARK
    if not mark.is_file():
        tokenizer_from = model_dir if is_prepared(model_dir) else source
        _build_random(random_dir, tokenizer_from, list(texts))
    info = json.loads(mark.read_text())
    info["why"] = reason[:200]
    print(
        f"WARNING: random weights of SmolLM2-135M's shape ({info['tokenizer']} tokenizer): "
        "speed and memory are meaningful, accuracy is not",
        flush=True,
    )
    return random_dir, info


def _build_random(dest: Path, tokenizer_from: Path | None, texts: list[str]) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer, kind = _real_tokenizer(tokenizer_from)
    if tokenizer is None:
        from tests.helpers.tiny_model import build_tiny_model

        stand_in = dest.with_name(dest.name + "-tokenizer")
        build_tiny_model(stand_in, vocab_texts=texts or None, vocab_size=8192, hidden_size=8)
        from worker.model_loading import load_tokenizer

        tokenizer, kind = load_tokenizer(stand_in), "stand-in byte-level BPE (8k)"
    dest.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(dest)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
        **SMOLLM2_SHAPE,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(dest)
    (dest / RANDOM_MARK).write_text(
        json.dumps({"weights": "random (SmolLM2-135M shape)", "tokenizer": kind}) + "\n"
    )


def _real_tokenizer(source: Path | None) -> tuple[Any, str]:
    """SmolLM2's tokenizer from a prepared folder or a GGUF file, if one is at hand."""
    from worker.model_loading import load_tokenizer

    if source is None:
        return None, ""
    source = Path(source)
    try:
        if source.is_dir() and (source / "tokenizer.json").is_file():
            return load_tokenizer(source), "real"
        if source.suffix == ".gguf":
            return load_tokenizer(source.parent, gguf_file=source.name), "real"
    except (OSError, ValueError):
        pass
    return None, ""


#: The LoRA shape both training recipes of the benchmarks use.
LORA = {"r": 8, "alpha": 16, "dropout": 0.05}
