"""Fine-tuning engine on CPU with the tiny random model: train, save, reload, resume, cancel."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from worker.taskspec import TaskSpec
from worker.training import (
    TrainingConfigError,
    TrainingProcess,
    TrainSpec,
    build_examples,
    cpu_has_native_bf16,
    cuda_available,
    resolve_hyperparameters,
    run_training,
)
from worker.training_data import student_messages

pytestmark = pytest.mark.slow

TASK = TaskSpec(
    instruction_template="Message: {{text}}",
    output_kind="label",
    input_fields=("text",),
    label_set=("card_arrival", "pending_transfer"),
    system_prompt="Classify the customer message into one intent.",
)
ROWS = [{"text": f"my card has not arrived yet {i}", "output": "card_arrival"} for i in range(12)]
ROWS += [{"text": f"the transfer is pending {i}", "output": "pending_transfer"} for i in range(12)]


def make_spec(model_dir: Path, out: Path, **overrides: Any) -> TrainSpec:
    examples = build_examples(TASK, ROWS)
    settings: dict[str, Any] = {
        "base_model": str(model_dir),
        "output_dir": str(out),
        "train_examples": examples,
        "eval_examples": examples[::6],
        "max_steps": 20,
        "batch_size": 4,
        "learning_rate": 1e-2,
        "checkpoint_every_steps": 5,
        "device": "cpu",
        # One thread: the CI box is shared, and two OpenMP threads on one free core crawl.
        "threads": 1,
    }
    settings.update(overrides)
    return TrainSpec(**settings)


class Recorder:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        self.events.append(event)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]


def greedy(
    model_dir: Path, prompt_messages: list[dict[str, str]], adapter: Path | None = None
) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    messages = student_messages(prompt_messages, tokenizer)
    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    return [int(t) for t in out[0][inputs["input_ids"].shape[1] :]]


# Both CPU precisions train on every machine (auto picks one of them by the hardware); both
# prompt forms of a label task (with and without the label list) train and are stored as such.
@pytest.mark.parametrize(
    ("cpu_bf16", "label_list"),
    [("off", True), ("on", False)],
    ids=["fp32-full-prompt", "bf16-without-label-list"],
)
def test_lora_trains_saves_and_reloads_to_the_same_outputs(
    tiny_model_dir: Path, tmp_path: Path, cpu_bf16: str, label_list: bool
) -> None:
    recorder = Recorder()
    spec = make_spec(
        tiny_model_dir,
        tmp_path / "job",
        eval_every_steps=10,
        cpu_bf16=cpu_bf16,
        label_list_in_prompt=label_list,
    )
    result = run_training(spec, recorder)

    assert result.status == "succeeded", result.error
    assert result.step == 20
    losses = [e["loss"] for e in recorder.of("step")]
    assert len(losses) == 20
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses
    steps = recorder.of("step")
    assert all(e["tokens_per_s"] > 0 and e["eta_s"] >= 0 for e in steps)
    assert steps[-1]["eta_s"] == 0
    evals = recorder.of("eval")
    assert [e["step"] for e in evals] == [10, 20]
    assert evals[-1]["eval_accuracy"] >= 0.75  # greedy exact match on held-out rows
    assert result.metrics["eval_loss"] == pytest.approx(evals[-1]["eval_loss"])
    started = recorder.of("started")[0]
    assert started["resumed_from_step"] == 0 and started["total_steps"] == 20
    assert started["hyperparameters"]["bf16"] is (cpu_bf16 == "on")
    # Under bf16 autocast a LoRA's frozen base is stored in bf16; short sequences: eager attention.
    assert started["base_dtype"] == ("bfloat16" if cpu_bf16 == "on" else "float32")
    assert started["attention"] == "eager" and started["longest_tokens"] <= 160
    assert set(result.timings) == {"load_s", "tokenize_s", "train_s", "save_s", "merge_s"}
    assert recorder.events[-1]["type"] == "finished"
    assert "timings load=" in (tmp_path / "job" / "training.log").read_text()

    adapter, merged = Path(result.adapter_dir or ""), Path(result.merged_dir or "")
    assert (adapter / "adapter_model.safetensors").is_file()
    assert (merged / "model.safetensors").is_file() and (merged / "tokenizer.json").is_file()
    meta = json.loads((merged / "distillery_training.json").read_text())
    assert meta["method"] == "lora" and meta["hyperparameters"]["total_steps"] == 20

    assert meta["prompt_format"]["label_list"] is label_list

    # Inference reads the record and asks the model the way it was trained.
    from worker.inference import load_model

    task_prompt = build_examples(TASK, ROWS[:1])[0].messages
    loaded = load_model(merged, device="cpu", threads=1)
    assert loaded.label_list_in_prompt is label_list
    served = loaded.prompt(task_prompt)
    assert ("card_arrival, pending_transfer" in served[-1]["content"]) is label_list
    assert served[-1]["content"].startswith("Message: my card has not arrived yet 0")
    assert len(loaded.encode(served)) < len(loaded.encode(task_prompt)) or label_list
    assert load_model(tiny_model_dir, device="cpu", threads=1).label_list_in_prompt is True

    prompt = served
    from_merged = greedy(merged, prompt)
    from_adapter = greedy(tiny_model_dir, prompt, adapter=adapter)
    untrained = greedy(tiny_model_dir, prompt)
    assert from_merged == from_adapter
    assert from_merged != untrained


def test_resume_after_sigkill_continues_from_the_checkpoint(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    spec = make_spec(tiny_model_dir, tmp_path / "job", max_steps=60, checkpoint_every_steps=4)
    process = TrainingProcess.start(spec)

    def kill_after_first_checkpoint(event: dict[str, Any]) -> None:
        if event["type"] == "checkpoint":
            os.kill(process.pid, signal.SIGKILL)

    first = process.wait(kill_after_first_checkpoint, poll_interval_s=0.02)
    assert first.status == "failed"
    assert "killed by signal 9" in first.error
    assert first.last_checkpoint is not None
    killed_at = first.step
    assert 4 <= killed_at < 60
    assert not list((tmp_path / "job" / "checkpoints").glob(".staging*/checkpoint-*"))

    recorder = Recorder()
    second = run_training(spec, recorder)
    assert second.status == "succeeded", second.error
    assert recorder.of("started")[0]["resumed_from_step"] == killed_at
    steps = [e["step"] for e in recorder.of("step")]
    assert steps[0] == killed_at + 1 and steps[-1] == 60
    assert second.step == 60 and second.merged_dir is not None


def test_cancel_stops_within_one_step_and_keeps_a_checkpoint(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    spec = make_spec(tiny_model_dir, tmp_path / "job", max_steps=400, checkpoint_every_steps=100)
    process = TrainingProcess.start(spec)
    recorder = Recorder()
    cancelled_at: list[float] = []

    def cancel_on_third_step(event: dict[str, Any]) -> None:
        recorder(event)
        if event["type"] == "step" and event["step"] == 3:
            process.cancel()
            # Taken once the cancel file exists (before it, a loaded machine could let the child
            # finish and check a step in between), on the events' clock (a file's mtime is
            # kernel-tick coarse) plus half of their 1 ms rounding.
            cancelled_at.append(time.time() + 0.0005)

    result = process.wait(cancel_on_third_step, poll_interval_s=0.02)
    assert result.status == "cancelled"
    steps_after_cancel = [e for e in recorder.of("step") if e["t"] > cancelled_at[0]]
    assert len(steps_after_cancel) <= 1
    assert result.step < 400
    assert result.last_checkpoint == str(
        tmp_path / "job" / "checkpoints" / f"checkpoint-{result.step}"
    )
    assert Path(result.last_checkpoint, "adapter_model.safetensors").is_file()
    assert result.adapter_dir is None and result.merged_dir is None


def test_sigterm_writes_a_checkpoint_before_exit(tiny_model_dir: Path, tmp_path: Path) -> None:
    spec = make_spec(tiny_model_dir, tmp_path / "job", max_steps=400, checkpoint_every_steps=100)
    process = TrainingProcess.start(spec)

    def terminate_on_second_step(event: dict[str, Any]) -> None:
        if event["type"] == "step" and event["step"] == 2:
            process.terminate()

    result = process.wait(terminate_on_second_step, poll_interval_s=0.02)
    assert result.status == "interrupted"
    assert result.last_checkpoint is not None and result.last_checkpoint.endswith(f"-{result.step}")
    assert 2 <= result.step < 400


def test_cpu_precision_follows_the_hardware_unless_set(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    def bf16(device: str, **overrides: Any) -> bool:
        spec = make_spec(tiny_model_dir, tmp_path, **overrides)
        return resolve_hyperparameters(spec, n_train=24, device=device).bf16

    assert bf16("cpu") is cpu_has_native_bf16()
    assert bf16("cpu", cpu_bf16="off") is False
    assert bf16("cpu", cpu_bf16="on") is True
    assert bf16("cuda", cpu_bf16="off") is True  # the setting is about CPUs only
    with pytest.raises(TrainingConfigError, match="cpu_bf16: must be auto, on or off"):
        bf16("cpu", cpu_bf16="fast")


def test_qlora_is_refused_on_cpu_before_anything_starts(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    spec = make_spec(tiny_model_dir, tmp_path / "job", method="qlora")
    with pytest.raises(TrainingConfigError, match="QLoRA needs a CUDA GPU"):
        run_training(spec)
    assert not (tmp_path / "job" / "events.jsonl").exists()


@pytest.mark.cuda
@pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU (QLoRA uses bitsandbytes 4-bit)")
def test_qlora_on_cuda_trains_and_merges(tmp_path: Path) -> None:
    from tests.helpers.tiny_model import build_tiny_model

    # 4-bit blocks are 64 values: a slightly wider tiny model.
    model_dir = build_tiny_model(tmp_path / "model", hidden_size=64)
    recorder = Recorder()
    spec = make_spec(model_dir, tmp_path / "job", method="qlora", device="cuda", threads=None)
    result = run_training(spec, recorder)
    assert result.status == "succeeded", result.error
    assert recorder.of("started")[0]["device"] == "cuda"
    assert result.hyperparameters["bf16"] is True
    assert result.metrics["peak_gpu_memory_gb"] > 0
    losses = [e["loss"] for e in recorder.of("step")]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    assert Path(result.merged_dir or "", "model.safetensors").is_file()
