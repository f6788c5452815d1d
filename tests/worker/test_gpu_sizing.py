"""GPU sizing for 0.5-8B students (worker.gpu_sizing), checked on CPU with the published
config.json shapes of the seed's students; no weights, no downloads. The resolved settings of a
CUDA run (worker.hyperparameters) follow the plan for a model folder that holds such a
config.json and a safetensors header with the model's parameter count."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from worker.gpu_sizing import estimate_parameters, plan_gpu_training
from worker.model_loading import DeviceFacts, ModelShape, read_model_shape
from worker.training import TrainExample, TrainingConfigError, TrainSpec, resolve_hyperparameters

# The sizes that matter, as published in each model's config.json.
CONFIGS: dict[str, dict[str, Any]] = {
    # Qwen/Qwen2.5-0.5B-Instruct
    "qwen2.5-0.5b": {
        "model_type": "qwen2",
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
    },
    # meta-llama/Llama-3.2-3B-Instruct
    "llama-3.2-3b": {
        "model_type": "llama",
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 28,
        "num_attention_heads": 24,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "tie_word_embeddings": True,
    },
    # microsoft/Phi-3-mini-4k-instruct
    "phi-3-mini": {
        "model_type": "phi3",
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 32064,
        "tie_word_embeddings": False,
    },
    # mistralai/Mistral-7B-Instruct-v0.1
    "mistral-7b": {
        "model_type": "mistral",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 32000,
        "tie_word_embeddings": False,
    },
}
# Their published sizes (model cards): 0.49B, 3.21B, 3.82B, 7.24B.
PUBLISHED = {
    "qwen2.5-0.5b": 0.494e9,
    "llama-3.2-3b": 3.21e9,
    "phi-3-mini": 3.82e9,
    "mistral-7b": 7.24e9,
}
GB = 2**30  # as GPUs are sized


def _shape(name: str, tmp_path: Path) -> tuple[ModelShape, int]:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(CONFIGS[name]))
    shape = read_model_shape(folder)
    assert shape is not None
    return shape, estimate_parameters(
        shape, tied_embeddings=bool(CONFIGS[name]["tie_word_embeddings"])
    )


def _plan(name: str, tmp_path: Path, gpu_gb: float, **kw: Any) -> Any:
    shape, params = _shape(name, tmp_path)
    return plan_gpu_training(
        shape=shape,
        n_parameters=params,
        gpu_memory_bytes=int(gpu_gb * GB),
        samples_to_train=kw.pop("samples_to_train", 3000),
        **kw,
    )


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_parameter_counts_from_the_published_shapes(name: str, tmp_path: Path) -> None:
    _, params = _shape(name, tmp_path)
    assert params == pytest.approx(PUBLISHED[name], rel=0.01)


def test_mistral_7b_on_a_12_gb_gpu_is_qlora_and_says_why(tmp_path: Path) -> None:
    plan = _plan("mistral-7b", tmp_path, 12)
    assert plan.method == "qlora" and plan.fits
    assert plan.reasons[0].startswith("QLoRA: 7.2B parameters in bf16 need ~13.5 GB")
    assert "this GPU has 12.0 GB" in plan.reasons[0]
    # NF4 blocks + bf16 embeddings/head: ~4.1 GB, a third of the GPU.
    assert 3.8 * GB < plan.weights_bytes < 4.4 * GB
    # A 7B student gets twice the preset's rank, on every linear layer.
    assert (plan.lora_r, plan.lora_alpha, plan.lora_target_modules) == (32, 64, "all-linear")
    assert plan.gradient_checkpointing
    assert plan.effective_batch == 16 and plan.batch_size < 16 and plan.max_length == 1024


def test_mistral_7b_fits_in_bf16_from_24_gb(tmp_path: Path) -> None:
    for gb in (24, 40, 80):
        plan = _plan("mistral-7b", tmp_path, gb)
        assert plan.method == "lora", gb
        assert plan.reasons[0].startswith("LoRA on a bf16 base: 7.2B parameters need ~13.5 GB")
    # 24 GB: the weights leave ~4 GB, so activations are recomputed and the batch accumulated.
    on_24 = _plan("mistral-7b", tmp_path, 24)
    assert on_24.gradient_checkpointing and on_24.grad_accum > 1
    # 80 GB: enough for 4 full sequences at once without recomputing.
    on_80 = _plan("mistral-7b", tmp_path, 80)
    assert not on_80.gradient_checkpointing and on_80.batch_size >= 4


@pytest.mark.parametrize("name", ["llama-3.2-3b", "phi-3-mini"])
def test_3_to_4b_students_train_in_bf16_on_a_12_gb_gpu(name: str, tmp_path: Path) -> None:
    plan = _plan(name, tmp_path, 12)
    assert plan.method == "lora" and plan.fits and plan.gradient_checkpointing
    assert plan.lora_r == 16  # under 4B: the preset's rank
    assert plan.effective_batch == 16
    # An 8 GB GPU cannot hold a 3B base in bf16 next to its training: QLoRA.
    assert _plan(name, tmp_path, 8).method == "qlora"


def test_a_half_billion_student_needs_no_tricks(tmp_path: Path) -> None:
    plan = _plan("qwen2.5-0.5b", tmp_path, 24)
    assert plan.method == "lora" and not plan.gradient_checkpointing
    assert plan.batch_size >= 8 and plan.max_length == 1024
    # Lots of data: the effective batch grows to 128 (at least ~100 steps still), by accumulation.
    big = _plan("qwen2.5-0.5b", tmp_path, 24, samples_to_train=100_000)
    assert big.effective_batch == 128 and big.grad_accum == 128 // big.batch_size


def test_long_sequences_are_cut_to_what_fits_and_a_hopeless_gpu_says_so(tmp_path: Path) -> None:
    long = _plan("mistral-7b", tmp_path, 8, max_length=8192)
    assert long.method == "qlora" and long.fits
    assert long.max_length < 8192 and long.batch_size >= 1
    assert any("Sequences cut to" in r for r in long.reasons)
    hopeless = _plan("mistral-7b", tmp_path, 4)
    assert not hopeless.fits and "Does not fit" in hopeless.reasons[-1]


def _model_folder(name: str, tmp_path: Path) -> Path:
    """A folder as a team places it on the worker: config.json and a safetensors header whose
    tensor sizes add up to the model's parameters (no weight bytes)."""
    _shape_of, params = _shape(name, tmp_path)
    folder = tmp_path / name
    header = json.dumps(
        {"w": {"dtype": "BF16", "shape": [params], "data_offsets": [0, 0]}}
    ).encode()
    (folder / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    return folder


def _resolve(folder: Path, gpu_gb: float, **kw: Any) -> Any:
    example = TrainExample(messages=[{"role": "user", "content": "x"}], completion="y")
    spec = TrainSpec(base_model=str(folder), output_dir="o", train_examples=[example], **kw)
    gpu = DeviceFacts(kind="cuda", bf16=True, total_memory_bytes=int(gpu_gb * GB), name="GPU")
    return resolve_hyperparameters(spec, n_train=2000, device="cuda", gpu=gpu)


def test_a_cuda_run_resolves_its_settings_from_the_plan(tmp_path: Path) -> None:
    folder = _model_folder("mistral-7b", tmp_path)
    hp = _resolve(folder, 24, method="lora", preset="thorough")
    assert (hp.lora_r, hp.lora_alpha) == (64, 128)  # thorough's 32, doubled for 7B
    # 3 epochs of 2,000 rows still make ~100 steps with an effective batch of 32.
    assert hp.gradient_checkpointing and hp.batch_size * hp.grad_accum == 32
    assert hp.total_steps == 188 and hp.batch_size < 32
    assert hp.max_length == 1024 and hp.bf16
    # What the user set wins over the plan.
    mine = _resolve(folder, 24, method="lora", lora_r=8, batch_size=2, gradient_checkpointing="off")
    assert (mine.lora_r, mine.batch_size, mine.grad_accum) == (8, 2, 1)
    assert not mine.gradient_checkpointing
    # LoRA asked for on a GPU where not even the bf16 weights fit: refused, naming the method.
    with pytest.raises(TrainingConfigError) as caught:
        _resolve(folder, 12, method="lora")
    assert caught.value.field == "method" and "Does not fit" in caught.value.message
    qlora = _resolve(folder, 12, method="qlora")
    assert qlora.method == "qlora" and qlora.lora_r == 32


def test_the_cpu_preset_is_untouched_by_gpu_sizing(tmp_path: Path) -> None:
    folder = _model_folder("qwen2.5-0.5b", tmp_path)
    example = TrainExample(messages=[{"role": "user", "content": "x"}], completion="y")
    spec = TrainSpec(base_model=str(folder), output_dir="o", train_examples=[example])
    cpu = resolve_hyperparameters(spec, n_train=600, device="cpu")
    assert (cpu.batch_size, cpu.grad_accum, cpu.lora_r, cpu.max_length) == (8, 1, 16, 512)
    assert not cpu.gradient_checkpointing


def test_evaluation_batches_fit_a_big_students_kv_cache(tmp_path: Path) -> None:
    from worker.inference import eval_batch_size

    def on(gb: float, name: str | None) -> int:
        gpu = DeviceFacts(kind="cuda", bf16=True, total_memory_bytes=int(gb * GB))
        if name is None:
            return eval_batch_size(gpu)
        shape, params = _shape(name, tmp_path)
        return eval_batch_size(gpu, shape=shape, n_parameters=params)

    # Mistral 7B: 128 KB of keys and values per token; on 24 GB ~5.7 GB are left next to the
    # bf16 weights: 32 prompts of 1,024 tokens, not the 128 a small student gets.
    assert on(24, None) == 128 and on(24, "mistral-7b") == 32
    assert on(80, "mistral-7b") == 128
    assert on(12, "qwen2.5-0.5b") == 64  # a small student keeps the default
    assert on(141, "llama-3.2-3b") == 128
