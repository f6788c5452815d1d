"""Model loading never reaches a hub, and the CUDA choices, checked on a CPU.

transformers 5 turns "hub kernels" on by default and on CUDA downloads them while loading; on
an offline GPU worker every fine-tune, evaluation and local teacher failed at load time. The
tests force the switch on in the environment and look at what the load really did (the loaded
model's ``use_kernels``), through each of our real loading paths.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

from worker.model_loading import (
    CPU_EAGER_ATTENTION_MAX_TOKENS,
    DeviceFacts,
    ModelLoadError,
    attention_for,
    device_map_for,
    from_pretrained_kwargs,
    hub_free_env,
    mfu,
    qlora_quantization,
    read_model_shape,
    training_flops_per_token,
    training_weights_dtype,
)
from worker.training import (
    TrainExample,
    TrainingConfigError,
    TrainSpec,
    child_env,
    resolve_hyperparameters,
    smaller_after_oom,
)

H200 = DeviceFacts(kind="cuda", bf16=True, total_memory_bytes=141 * 10**9, name="H200")
T4 = DeviceFacts(kind="cuda", bf16=False, total_memory_bytes=16 * 10**9, name="T4", index=1)
CPU = DeviceFacts(kind="cpu")

# SmolLM2-135M-Instruct's config.json (the sizes that matter here).
SMOLLM2_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
}
SMOLLM2_PARAMETERS = 134_515_008

needs_kernels = pytest.mark.skipif(
    importlib.util.find_spec("kernels") is None,
    reason="transformers turns hub kernels on only where the `kernels` package is installed",
)


@pytest.fixture
def hub_kernels_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("USE_HUB_KERNELS", "1")


# --------------------------------------------------------------------------- no hub at run time


@needs_kernels
def test_plain_transformers_would_kernelize_here(tiny_model_dir: Path, hub_kernels_on: None):
    # The premise of the tests below: on this installation a default load does use hub kernels.
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(tiny_model_dir).use_kernels is True


@needs_kernels
def test_evaluation_loads_without_hub_kernels(tiny_model_dir: Path, hub_kernels_on: None):
    from worker.inference import load_model

    loaded = load_model(tiny_model_dir, device="cpu", threads=1)
    assert loaded.model.use_kernels is False
    assert loaded.model.config._attn_implementation == "sdpa"
    answer = loaded.classify([[{"role": "user", "content": "my card"}]], ["positive", "negative"])
    assert answer.outputs[0] in ("positive", "negative")


@needs_kernels
def test_the_local_teacher_loads_without_hub_kernels(tiny_model_dir: Path, hub_kernels_on: None):
    from worker.teachers import ProviderConfig
    from worker.teachers.local_hf import LocalHFProvider

    provider = LocalHFProvider(
        ProviderConfig(
            kind="local_hf",
            credential_name="gpu-box",
            local_model_path=str(tiny_model_dir),
            local_device="cpu",
        )
    )
    provider.load()
    assert provider._model.use_kernels is False


@needs_kernels
@pytest.mark.parametrize("method", ["lora", "full"])
def test_the_training_model_loads_without_hub_kernels(
    tiny_model_dir: Path, hub_kernels_on: None, method: str
):
    from worker.training_loop import _causal_lm, load_model

    spec = TrainSpec(
        base_model=str(tiny_model_dir),
        output_dir="unused",
        train_examples=[TrainExample([{"role": "user", "content": "x"}], "y")],
        method=method,  # type: ignore[arg-type]
        cpu_bf16="off",
    )
    hp = resolve_hyperparameters(spec, n_train=1, device="cpu")
    model = load_model(str(tiny_model_dir), hp)
    assert _causal_lm(model).use_kernels is False
    model.train()  # switching modes re-kernelizes a kernelized model
    assert _causal_lm(model).use_kernels is False


@needs_kernels
@pytest.mark.slow
def test_a_training_run_reports_no_hub_kernels_whatever_the_callers_environment(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from worker.taskspec import TaskSpec
    from worker.training import build_examples, run_training

    monkeypatch.setenv("USE_HUB_KERNELS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    task = TaskSpec("Message: {{text}}", "label", ("text",), label_set=("positive", "negative"))
    rows = [{"text": f"good {i}", "output": "positive"} for i in range(4)]
    events: list[dict[str, Any]] = []
    spec = TrainSpec(
        base_model=str(tiny_model_dir),
        output_dir=str(tmp_path / "job"),
        train_examples=build_examples(task, rows),
        max_steps=2,
        batch_size=2,
        device="cpu",
        threads=1,
        merge=True,
    )
    result = run_training(spec, events.append)
    assert result.status == "succeeded", result.error
    started = next(e for e in events if e["type"] == "started")
    assert started["hub_kernels"] is False
    assert Path(result.merged_dir or "", "model.safetensors").is_file()


def test_the_load_arguments_switch_every_hub_path_off() -> None:
    kwargs = from_pretrained_kwargs(dtype="bfloat16", device_map={"": 0}, attention="sdpa")
    assert kwargs["use_kernels"] is False
    assert kwargs["local_files_only"] is True and kwargs["trust_remote_code"] is False
    assert kwargs["attn_implementation"] == "sdpa" and kwargs["device_map"] == {"": 0}


@pytest.mark.parametrize("attention", ["kernels-community/flash-attn3", "flash_attention_2"])
def test_attention_that_would_be_downloaded_is_refused(attention: str) -> None:
    with pytest.raises(ModelLoadError) as caught:
        from_pretrained_kwargs(attention=attention)
    assert caught.value.field == "attention"


def test_the_training_child_runs_offline_without_hub_kernels() -> None:
    spec = TrainSpec(base_model="m", output_dir="o", train_examples=[], threads=2)
    callers = {"USE_HUB_KERNELS": "1", "HF_HUB_OFFLINE": "0", "PATH": "/bin"}
    env = child_env(spec, "cpu", base=callers)
    assert env["USE_HUB_KERNELS"] == "0"
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"
    assert env["PATH"] == "/bin" and env["OMP_NUM_THREADS"] == "2"
    assert "CUDA_VISIBLE_DEVICES" not in env
    # On a GPU worker: one GPU (trl refuses several from one process), unless already chosen.
    assert child_env(spec, "cuda", base=callers)["CUDA_VISIBLE_DEVICES"] == "0"
    chosen = child_env(spec, "cuda", base={**callers, "CUDA_VISIBLE_DEVICES": "3"})
    assert chosen["CUDA_VISIBLE_DEVICES"] == "3"
    assert hub_free_env({"USE_HUB_KERNELS": "yes"})["USE_HUB_KERNELS"] == "0"


# --------------------------------------------------------------------------- CUDA choices


def test_weights_dtype_follows_the_gpu_and_the_method() -> None:
    assert [training_weights_dtype(m, H200, cpu_bf16=False) for m in ("lora", "qlora", "full")] == [
        "bfloat16"
    ] * 3
    # No native bf16: fp16 for a frozen base, fp32 master weights for full fine-tuning.
    assert training_weights_dtype("lora", T4, cpu_bf16=False) == "float16"
    assert training_weights_dtype("qlora", T4, cpu_bf16=False) == "float16"
    assert training_weights_dtype("full", T4, cpu_bf16=False) == "float32"
    assert training_weights_dtype("lora", CPU, cpu_bf16=True) == "bfloat16"
    assert training_weights_dtype("full", CPU, cpu_bf16=True) == "float32"
    assert training_weights_dtype("lora", CPU, cpu_bf16=False) == "float32"


def test_qlora_loads_4bit_nf4_with_double_quantisation_and_half_compute() -> None:
    import torch
    from transformers import BitsAndBytesConfig

    settings = qlora_quantization(H200)
    assert settings == {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": True,
        "bnb_4bit_compute_dtype": "bfloat16",
    }
    assert qlora_quantization(T4)["bnb_4bit_compute_dtype"] == "float16"
    config = BitsAndBytesConfig(
        **{**settings, "bnb_4bit_compute_dtype": getattr(torch, settings["bnb_4bit_compute_dtype"])}
    )
    assert config.load_in_4bit and config.bnb_4bit_compute_dtype == torch.bfloat16


def test_device_map_and_attention_per_device() -> None:
    assert device_map_for(T4) == {"": 1} and device_map_for(CPU) is None
    assert attention_for(H200, 20) == "sdpa" and attention_for(H200, 4000) == "sdpa"
    assert attention_for(CPU, CPU_EAGER_ATTENTION_MAX_TOKENS) == "eager"
    assert attention_for(CPU, CPU_EAGER_ATTENTION_MAX_TOKENS + 1) == "sdpa"


def _smollm2_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "smollm2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(SMOLLM2_CONFIG))
    header = json.dumps(
        {"w": {"dtype": "F32", "shape": [SMOLLM2_PARAMETERS], "data_offsets": [0, 0]}}
    ).encode()
    (folder / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    return folder


def _spec(base: Path, **kw: Any) -> TrainSpec:
    example = TrainExample(messages=[{"role": "user", "content": "x"}], completion="y")
    return TrainSpec(base_model=str(base), output_dir="o", train_examples=[example], **kw)


def test_a_gpu_run_sizes_its_batch_from_memory_data_and_sequence_length(tmp_path: Path) -> None:
    base = _smollm2_dir(tmp_path)

    def hp(n_train: int, gpu: DeviceFacts | None = H200, **kw: Any) -> Any:
        return resolve_hyperparameters(
            _spec(base, preset="quick"), n_train=n_train, device="cuda", gpu=gpu, **kw
        )

    # Plenty of data and short sequences: the largest batch.
    big = hp(50_000, longest_tokens=64)
    assert big.batch_size == 128 and big.bf16 and not big.fp16
    # max_length (1024) sequences: what fits in 60 % of 141 GB next to the weights.
    assert hp(50_000).batch_size == 64
    # A small dataset keeps at least ~100 optimiser steps (not below a batch of 16).
    small = hp(5_000, longest_tokens=64)
    assert small.batch_size == 32 and small.total_steps == 157
    assert hp(300, longest_tokens=64).batch_size == 16
    # A 16 GB GPU without bf16: fp16 mixed precision, a smaller batch for long sequences.
    t4 = hp(50_000, gpu=T4)
    assert t4.fp16 and not t4.bf16 and t4.batch_size == 8
    # Progress is read back from the GPU every 10 steps; on CPU every step, as before.
    assert big.log_every_steps == 10
    cpu = resolve_hyperparameters(_spec(base), n_train=5000, device="cpu")
    assert cpu.log_every_steps == 1 and cpu.batch_size == 8
    # Without facts (the web side validating a spec): bf16 and a batch of 16.
    assert hp(5_000, gpu=None).batch_size == 16
    # An explicit batch size always wins.
    explicit = resolve_hyperparameters(
        _spec(base, batch_size=4), n_train=50_000, device="cuda", gpu=H200
    )
    assert explicit.batch_size == 4


def test_out_of_memory_back_off_keeps_the_effective_batch() -> None:
    hp = resolve_hyperparameters(
        _spec(Path("missing"), batch_size=16, max_steps=10), n_train=100, device="cuda"
    )
    seen = []
    while True:
        try:
            hp = smaller_after_oom(hp)
        except TrainingConfigError as exc:
            assert exc.field == "batch_size"
            break
        seen.append((hp.batch_size, hp.grad_accum, hp.gradient_checkpointing))
    assert seen == [(16, 1, True), (8, 2, True), (4, 4, True), (2, 8, True), (1, 16, True)]
    assert hp.total_steps == 10


def test_training_autocast_per_device() -> None:
    from worker.training_loop import autocast_for

    def hp(device: str, gpu: DeviceFacts | None, cpu_bf16: str = "off") -> Any:
        spec = _spec(Path("missing"), cpu_bf16=cpu_bf16)
        return resolve_hyperparameters(spec, n_train=10, device=device, gpu=gpu)

    assert autocast_for(hp("cuda", H200)) == ("cuda", "bfloat16")
    assert autocast_for(hp("cuda", T4)) == ("cuda", "float16")
    assert autocast_for(hp("cpu", None, cpu_bf16="on")) == ("cpu", "bfloat16")
    assert autocast_for(hp("cpu", None)) is None


def test_model_shape_and_flops_for_mfu(tmp_path: Path) -> None:
    shape = read_model_shape(_smollm2_dir(tmp_path))
    assert shape is not None
    norms = 576 * (2 * 30 + 1)
    assert shape.block_parameters() + 49152 * 576 + norms == SMOLLM2_PARAMETERS
    per_token = training_flops_per_token(shape, completion_fraction=0.0)
    assert per_token == 6 * shape.block_parameters()
    # 100k tokens/s of a 106M-parameter path on a 989 TFLOP/s GPU: ~6.4 %.
    assert mfu(100_000, per_token, 989e12) == pytest.approx(0.0644, abs=1e-3)
    assert read_model_shape(tmp_path / "nowhere") is None


def test_evaluation_batches_and_dtype_per_device() -> None:
    from worker.inference import DEFAULT_BATCH_SIZE, eval_batch_size, eval_dtype

    assert eval_batch_size(CPU) == DEFAULT_BATCH_SIZE == 16
    assert eval_batch_size(H200) == 128 and eval_batch_size(T4) == 64
    assert (eval_dtype(H200), eval_dtype(T4), eval_dtype(CPU)) == ("bfloat16", "float16", "float32")


# --------------------------------------------------------------------------- on a GPU


@pytest.mark.cuda
def test_cuda_evaluation_loads_offline_on_the_gpu(tiny_model_dir: Path, hub_kernels_on: None):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from worker.inference import load_model

    loaded = load_model(tiny_model_dir, device="cuda")
    assert loaded.model.use_kernels is False
    assert loaded.model.device.type == "cuda" and loaded.batch_size >= 64
    prompts = [[{"role": "user", "content": f"my card {i}"}] for i in range(40)]
    fast = loaded.classify(prompts, ["positive", "negative"])
    slow = loaded.generate_sequential(
        prompts, max_new_tokens=4, constrain_to_labels=["positive", "negative"]
    )
    assert fast.outputs == slow.outputs
