"""The training child process: load, tokenize, train (with checkpoints), save, merge.

Runs only inside ``python -m worker.train_entry <output_dir>`` (see worker/training.py for the
protocol). The speed-ups on CPU, each measured in bench/train_throughput.py:

- no gradient checkpointing (recomputation costs time, activations fit in RAM); fp32, or bf16
  autocast where the CPU multiplies bf16 in hardware (AVX512-BF16/AMX: 1.3-1.5x fp32; on CPUs
  that emulate bf16 it is several times slower, see ``worker.training.cpu_has_native_bf16``),
  and then, for LoRA, the frozen base weights stored in bf16 (autocast would cast them again
  at every forward; the adapters stay fp32, and peft does not cast their input up to fp32);
- LoRA dropout drawn as geometric gaps (``worker.gap_dropout``) instead of torch's serial
  per-element Bernoulli loop;
- attention as plain matrix products ("eager") when every sequence is short
  (``CPU_EAGER_ATTENTION_MAX_TOKENS``), where the fused SDPA kernel is slower;
- prompt/completion examples, loss on the completion only, and the language-model head applied
  only at completion positions: with a 49k vocabulary the head is most of the compute when the
  answer is a few tokens, and trl's default computes it at every position;
- group-by-length batches (little padding);
- no default system prompt from the template (short sequences);
- torch threads = the cores this process may use; tcmalloc preloaded by the parent.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any

from worker.cores import usable_cores
from worker.hyperparameters import Hyperparameters
from worker.model_loading import (
    CPU_EAGER_ATTENTION_MAX_TOKENS,
    DeviceFacts,
    cuda_facts,
    load_tokenizer,
)
from worker.taskspec import without_label_list
from worker.trainer_class import (
    autocast_for,
    build_trainer,
    completion_nll,
    make_trainer_class,
)
from worker.training import (
    ADAPTER_DIR,
    CANCEL_FILE,
    CHECKPOINTS_DIR,
    EVENTS_FILE,
    MERGED_DIR,
    RESULT_FILE,
    TrainingConfigError,
    TrainResult,
    TrainSpec,
    latest_checkpoint,
    load_spec,
    resolve_hyperparameters,
    smaller_after_oom,
    spec_from_settings,
)
from worker.training_data import (
    SoftTargets,
    TrainExample,
    template_injects_default_system,
    tokenize_example,
)
from worker.training_events import EventWriter, StopFlags, make_progress_callback
from worker.training_model import (
    STAGING,
    causal_lm,
    cpu_attention,
    load_model,
    merge_adapter,
    save_tokenizer,
    skip_adapter_input_casts,
)
from worker.training_signals import SOFT_KEYS, check_signal_settings, rationale_examples

log = logging.getLogger("distillery.training")

# The child's parts live in worker.training_events, worker.training_model and
# worker.trainer_class; their names are re-exported here for the callers that import them so.
__all__ = [
    "CPU_EAGER_ATTENTION_MAX_TOKENS",
    "TRAINING_META_FILE",
    "EventWriter",
    "StopFlags",
    "autocast_for",
    "build_trainer",
    "completion_nll",
    "cpu_attention",
    "load_model",
    "main",
    "make_progress_callback",
    "make_trainer_class",
    "merge_adapter",
    "peak_rss_mb",
    "run_child",
    "skip_adapter_input_casts",
    "tokenize_dataset",
]

TRAINING_META_FILE = "distillery_training.json"
_causal_lm = causal_lm  # the name tests and benchmarks know


def _atomic_write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def _tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def tokenize_dataset(
    examples: list[TrainExample],
    tokenizer: Any,
    max_length: int,
    *,
    soft_temperature: float | None = None,
) -> Any:
    """(dataset, truncated count, empty system turn injected). With ``soft_temperature``, rows
    whose teacher spread its mass over several labels carry soft targets (three more columns,
    worker.training_signals.SOFT_KEYS); without, or when no row has any, the columns are left
    out and training is plain cross-entropy."""
    from datasets import Dataset

    inject = template_injects_default_system(tokenizer)
    ids, labels, lengths, truncated = [], [], [], 0
    soft: list[SoftTargets | None] = []
    cache: dict[str, list[int]] = {}
    for example in examples:
        tok = tokenize_example(
            example,
            tokenizer,
            max_length=max_length,
            inject_empty_system=inject,
            soft_temperature=soft_temperature,
            label_ids_cache=cache,
        )
        ids.append(tok.input_ids)
        labels.append(tok.labels)
        lengths.append(len(tok.input_ids))
        truncated += tok.truncated
        soft.append(tok.soft)
    columns: dict[str, Any] = {"input_ids": ids, "labels": labels, "length": lengths}
    if any(s is not None for s in soft):
        columns[SOFT_KEYS[0]] = [s.positions if s else [] for s in soft]
        columns[SOFT_KEYS[1]] = [s.token_ids if s else [] for s in soft]
        columns[SOFT_KEYS[2]] = [s.probs if s else [] for s in soft]
    dataset = Dataset.from_dict(columns)
    return dataset, truncated, inject


# --------------------------------------------------------------------------- main


def run_child(output_dir: Path) -> int:
    out = Path(output_dir)
    events = EventWriter(out / EVENTS_FILE)
    flags = StopFlags(out / CANCEL_FILE)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        flags.sigterm = True

    signal.signal(signal.SIGTERM, on_sigterm)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    timings = {"load_s": 0.0, "tokenize_s": 0.0, "train_s": 0.0, "save_s": 0.0, "merge_s": 0.0}
    result = TrainResult(status="failed")
    try:
        result = _train(out, events, flags, timings)
    except TrainingConfigError as exc:
        result = TrainResult(status="failed", error=str(exc), timings=timings)
    except Exception as exc:
        log.error("training failed:\n%s", traceback.format_exc())
        checkpoint = latest_checkpoint(out)
        result = TrainResult(
            status="failed",
            error=f"{type(exc).__name__}: {exc}",
            timings=timings,
            last_checkpoint=str(checkpoint) if checkpoint else None,
        )
    if result.status == "failed":
        events.emit("error", message=result.error)
    line = " ".join(f"{k[:-2]}={v:.1f}s" for k, v in timings.items())
    log.info("timings %s", line)
    events.emit("timings", **{k: round(v, 3) for k, v in timings.items()})
    _atomic_write_json(out / RESULT_FILE, asdict(result))
    events.emit(
        "finished",
        status=result.status,
        step=result.step,
        metrics=result.metrics,
        adapter_dir=result.adapter_dir,
        merged_dir=result.merged_dir,
        last_checkpoint=result.last_checkpoint,
        error=result.error,
    )
    return 0 if result.status != "failed" else 1


@dataclass
class _Run:
    """What a child run works from: its spec and examples, the device, the settings (``hp``
    changes when the GPU batch is sized, and after an out-of-memory), and its timings."""

    out: Path
    spec: TrainSpec
    train_examples: list[TrainExample]
    eval_examples: list[TrainExample]
    device: str
    facts: DeviceFacts | None
    hp: Hyperparameters
    threads: int
    resumed_from: int
    timings: dict[str, float]


@dataclass
class _Data:
    """The tokenizer and the tokenized train (and eval) sets."""

    tokenizer: Any
    train_ds: Any
    eval_ds: Any
    truncated: int
    empty_system: bool
    longest: int


def _train(
    out: Path, events: EventWriter, flags: StopFlags, timings: dict[str, float]
) -> TrainResult:
    run = _prepare(out, timings)
    data = _tokenize(run)
    t0 = time.perf_counter()
    attention = cpu_attention(data.longest) if run.hp.device != "cuda" else None
    model = load_model(run.spec.base_model, run.hp, attention=attention, facts=run.facts)
    timings["load_s"] += time.perf_counter() - t0
    _emit_started(events, run, data, model)
    if flags.reason() is not None and run.resumed_from == 0:
        # Stopped before the first step: nothing to keep.
        return TrainResult(
            status=flags.reason() or "cancelled",  # type: ignore[arg-type]
            total_steps=run.hp.total_steps,
            timings=timings,
            hyperparameters=run.hp.to_json(),
        )
    trainer, output, progress, model = _train_with_oom_retries(
        run, data, model, attention, events, flags
    )
    hp = run.hp
    step = trainer.state.global_step
    last = latest_checkpoint(out)
    now = time.perf_counter()
    metrics: dict[str, float] = {
        "train_loss": float(output.training_loss),
        "train_runtime_s": float(output.metrics.get("train_runtime", 0.0)),
        "samples_per_s": progress.trained_samples / max(now - progress.started, 1e-9),
        "tokens_per_s": progress.trained_tokens / max(now - progress.started, 1e-9),
    }
    result = TrainResult(
        status="succeeded",
        step=step,
        total_steps=hp.total_steps,
        metrics=metrics,
        last_checkpoint=str(last) if last else None,
        timings=timings,
        hyperparameters=hp.to_json(),
    )
    if progress.stop_reason is not None:
        return replace(result, status=progress.stop_reason)
    if data.eval_ds is not None:
        if trainer.last_eval is not None and trainer.last_eval[0] == step:
            metrics.update(trainer.last_eval[1])
        else:
            metrics.update(trainer.evaluate())
    metrics["peak_rss_mb"] = peak_rss_mb()
    if hp.device == "cuda":
        import torch

        metrics["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30

    meta = _training_meta(run, data, metrics)
    adapter_dir, merged_dir = _save(run, trainer.model, data.tokenizer, meta)
    if adapter_dir is not None and run.spec.merge:
        t0 = time.perf_counter()
        del trainer, model
        gc.collect()
        merged_dir = out / MERGED_DIR
        merge_adapter(run.spec.base_model, adapter_dir, merged_dir, data.tokenizer, hp)
        _atomic_write_json(merged_dir / TRAINING_META_FILE, meta)
        timings["merge_s"] += time.perf_counter() - t0
    if adapter_dir is not None:
        metrics["adapter_bytes"] = float(_tree_size(adapter_dir))
    if merged_dir is not None:
        metrics["merged_bytes"] = float(_tree_size(merged_dir))
    return replace(
        result,
        adapter_dir=str(adapter_dir) if adapter_dir else None,
        merged_dir=str(merged_dir) if merged_dir else None,
    )


def _prepare(out: Path, timings: dict[str, float]) -> _Run:
    """Read the spec and examples the parent wrote, resolve the settings, set up torch."""
    import torch

    settings, train_examples, eval_examples = load_spec(out)
    spec: TrainSpec = spec_from_settings(settings, train_examples, eval_examples)
    if not spec.label_list_in_prompt:
        train_examples = [
            replace(e, messages=without_label_list(e.messages)) for e in train_examples
        ]
        eval_examples = [replace(e, messages=without_label_list(e.messages)) for e in eval_examples]
    check_signal_settings(
        spec.rationale_training, spec.soft_label_weight, spec.soft_label_temperature
    )
    if spec.rationale_training == "second_task":
        # The second task's examples count as training examples (epochs cover them too).
        train_examples = train_examples + rationale_examples(train_examples)
    device = str(settings.get("device", "cpu"))
    if spec.method == "qlora" and device != "cuda":
        raise TrainingConfigError("QLoRA needs a CUDA GPU; this worker has none")
    facts = cuda_facts() if device == "cuda" else None
    hp = resolve_hyperparameters(spec, n_train=len(train_examples), device=device, gpu=facts)
    threads = spec.threads or usable_cores()
    torch.set_num_threads(threads)
    if facts is not None:
        # TF32 for the float32 matrix products that remain (e.g. fp32 LoRA adapters' grads).
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    (out / CHECKPOINTS_DIR).mkdir(parents=True, exist_ok=True)
    resume = latest_checkpoint(out)
    return _Run(
        out=out,
        spec=spec,
        train_examples=train_examples,
        eval_examples=eval_examples,
        device=device,
        facts=facts,
        hp=hp,
        threads=threads,
        resumed_from=int(resume.name.split("-")[1]) if resume else 0,
        timings=timings,
    )


def _tokenize(run: _Run) -> _Data:
    """Load the tokenizer and tokenize the examples; on a GPU, size the batch for the longest
    sequence this run really has (not for max_length)."""
    from transformers.utils import logging as hf_logging

    disable_bars: Any = hf_logging.disable_progress_bar
    disable_bars()
    t0 = time.perf_counter()
    tokenizer = load_tokenizer(run.spec.base_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    run.timings["load_s"] += time.perf_counter() - t0

    t0 = time.perf_counter()
    max_length = run.hp.max_length
    soft_temperature = run.spec.soft_label_temperature if run.spec.soft_label_weight > 0 else None
    train_ds, truncated, empty_system = tokenize_dataset(
        run.train_examples, tokenizer, max_length, soft_temperature=soft_temperature
    )
    longest = max(train_ds["length"], default=0)
    eval_ds = None
    if run.eval_examples:
        eval_ds, _, _ = tokenize_dataset(run.eval_examples, tokenizer, max_length)
        longest = max(longest, *eval_ds["length"])
    run.timings["tokenize_s"] += time.perf_counter() - t0
    if run.facts is not None:
        run.hp = resolve_hyperparameters(
            run.spec,
            n_train=len(run.train_examples),
            device=run.device,
            gpu=run.facts,
            longest_tokens=longest,
        )
    return _Data(tokenizer, train_ds, eval_ds, truncated, empty_system, longest)


def _emit_started(events: EventWriter, run: _Run, data: _Data, model: Any) -> None:
    events.emit(
        "started",
        pid=os.getpid(),
        device=run.device,
        threads=run.threads,
        n_train=len(run.train_examples),
        n_eval=len(run.eval_examples),
        truncated_examples=data.truncated,
        total_steps=run.hp.total_steps,
        resumed_from_step=run.resumed_from,
        hyperparameters=run.hp.to_json(),
        tcmalloc="tcmalloc" in os.environ.get("LD_PRELOAD", ""),
        attention=causal_lm(model).config._attn_implementation,
        hub_kernels=bool(getattr(causal_lm(model), "use_kernels", False)),
        longest_tokens=data.longest,
        base_dtype=str(causal_lm(model).dtype).removeprefix("torch."),
    )


def _train_with_oom_retries(
    run: _Run,
    data: _Data,
    model: Any,
    attention: str | None,
    events: EventWriter,
    flags: StopFlags,
) -> tuple[Any, Any, Any, Any]:
    """Train (resuming from the latest checkpoint); on a CUDA out-of-memory, retry with
    ``smaller_after_oom`` settings and a fresh model, up to ``max_oom_retries`` times.
    Returns (trainer, train output, progress callback, model); ``run.hp`` is what ran."""
    import torch

    attempts = 0
    t0 = time.perf_counter()
    while True:
        hp = run.hp
        progress = make_progress_callback(
            events, flags, hp.total_steps, hp.batch_size * hp.grad_accum, hp.log_every_steps
        )
        trainer = build_trainer(
            hp=hp,
            model=model,
            tokenizer=data.tokenizer,
            train_ds=data.train_ds,
            eval_ds=data.eval_ds,
            checkpoints=run.out / CHECKPOINTS_DIR,
            events=events,
            progress=progress,
            keep_checkpoints=run.spec.keep_checkpoints,
            soft_labels=(
                (run.spec.soft_label_weight, run.spec.soft_label_temperature)
                if SOFT_KEYS[0] in data.train_ds.column_names
                else None
            ),
        )
        resume = latest_checkpoint(run.out)
        try:
            output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
            break
        except torch.OutOfMemoryError:
            attempts += 1
            if hp.device != "cuda" or attempts > run.spec.max_oom_retries:
                raise
            run.hp = smaller_after_oom(hp)
            events.emit(
                "oom_retry",
                batch_size=run.hp.batch_size,
                grad_accum=run.hp.grad_accum,
                gradient_checkpointing=run.hp.gradient_checkpointing,
            )
            del trainer, model
            gc.collect()
            torch.cuda.empty_cache()
            model = load_model(run.spec.base_model, run.hp, attention=attention, facts=run.facts)
    run.timings["train_s"] += time.perf_counter() - t0
    return trainer, output, progress, model


def _training_meta(run: _Run, data: _Data, metrics: dict[str, float]) -> dict[str, Any]:
    """The training record stored with the model (TRAINING_META_FILE)."""
    return {
        "base_model": run.spec.base_model,
        "method": run.hp.method,
        "hyperparameters": run.hp.to_json(),
        "metrics": metrics,
        "n_train": len(run.train_examples),
        "n_eval": len(run.eval_examples),
        # Inference must render prompts the same way (worker.training_data.student_messages).
        "prompt_format": {
            "empty_system_turn_when_task_has_none": data.empty_system,
            "label_list": run.spec.label_list_in_prompt,
        },
    }


def _save(
    run: _Run, model: Any, tokenizer: Any, meta: dict[str, Any]
) -> tuple[Path | None, Path | None]:
    """Save the trained model with its tokenizer and record: a full fine-tune as the merged
    model, a LoRA as its adapter. Each is written in a staging folder and renamed into place.
    Returns (adapter_dir, merged_dir)."""
    t0 = time.perf_counter()
    full = run.hp.method == "full"
    dest = run.out / (MERGED_DIR if full else ADAPTER_DIR)
    staging = dest.with_name(dest.name + STAGING)
    shutil.rmtree(staging, ignore_errors=True)
    if full:
        model.config.use_cache = True
    model.save_pretrained(str(staging))
    save_tokenizer(tokenizer, staging)
    _atomic_write_json(staging / TRAINING_META_FILE, meta)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(staging, dest)
    run.timings["save_s"] += time.perf_counter() - t0
    return (None, dest) if full else (dest, None)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m worker.train_entry OUTPUT_DIR", file=sys.stderr)
        return 2
    return run_child(Path(args[0]))
