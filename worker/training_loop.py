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

import contextlib
import gc
import json
import logging
import os
import shutil
import signal
import sys
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path
from types import FrameType
from typing import Any

from worker.model_loading import (
    CPU_EAGER_ATTENTION_MAX_TOKENS,
    DeviceFacts,
    attention_for,
    cuda_dtype,
    cuda_facts,
    device_map_for,
    load_causal_lm,
    load_tokenizer,
    qlora_quantization,
    training_weights_dtype,
)
from worker.taskspec import without_label_list
from worker.training import (
    ADAPTER_DIR,
    CANCEL_FILE,
    CHECKPOINTS_DIR,
    EVENTS_FILE,
    MERGED_DIR,
    RESULT_FILE,
    Hyperparameters,
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
    TrainExample,
    template_injects_default_system,
    tokenize_example,
)

log = logging.getLogger("distillery.training")

__all__ = ["CPU_EAGER_ATTENTION_MAX_TOKENS", "cpu_attention", "load_model", "main"]

TRAINING_META_FILE = "distillery_training.json"
_STAGING = ".staging"


class EventWriter:
    """Appends one JSON line per event; flushed at once so the parent sees it."""

    def __init__(self, path: Path):
        self._fh = path.open("a", encoding="utf-8")

    def emit(self, type_: str, **data: Any) -> None:
        record = {"type": type_, "t": round(time.time(), 3), **data}
        self._fh.write(json.dumps(record, default=str) + "\n")
        self._fh.flush()


class StopFlags:
    """Why training should stop at the next step boundary, if it should."""

    def __init__(self, cancel_path: Path):
        self.cancel_path = cancel_path
        self.sigterm = False

    def reason(self) -> str | None:
        if self.sigterm:
            return "interrupted"
        if self.cancel_path.exists():
            return "cancelled"
        return None


def _atomic_write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- model loading


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


# --------------------------------------------------------------------------- the trainer


def _causal_lm(model: Any) -> Any:
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def completion_nll(model: Any, batch: dict[str, Any], *, with_accuracy: bool = False) -> Any:
    """Sum of the completion tokens' negative log-likelihood, computing the LM head only where
    there is a label. Returns (nll_sum, n_tokens, n_exact_sequences, n_sequences)."""
    import torch
    import torch.nn.functional as F

    causal = _causal_lm(model)
    decoder = causal.get_decoder()
    head = causal.get_output_embeddings()
    hidden = decoder(
        input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), use_cache=False
    ).last_hidden_state
    targets = batch["labels"][:, 1:]
    mask = targets != -100
    picked = hidden[:, :-1][mask]
    logits = head(picked.to(head.weight.dtype) if picked.dtype != head.weight.dtype else picked)
    target_ids = targets[mask]
    nll = F.cross_entropy(logits.float(), target_ids, reduction="sum")
    n_tokens = mask.sum()
    if not with_accuracy:
        return nll, n_tokens, None, None
    with torch.no_grad():
        correct = torch.ones_like(mask)
        correct[mask] = logits.argmax(dim=-1) == target_ids
        has_label = mask.any(dim=1)
        exact = (correct.all(dim=1) & has_label).sum()
    return nll, n_tokens, exact, has_label.sum()


def make_trainer_class() -> type:
    """Our SFTTrainer: completion-position LM head, own eval, atomic checkpoints."""
    import torch
    from trl.trainer.sft_trainer import SFTTrainer

    base: Any = SFTTrainer

    class DistilleryTrainer(base):  # type: ignore[misc]
        def __init__(
            self,
            *args: Any,
            events: EventWriter,
            keep_checkpoints: int,
            autocast: tuple[str, str] | None = None,
            **kwargs: Any,
        ):
            super().__init__(*args, **kwargs)
            # Our loss calls the decoder and the head directly, outside the model's forward
            # that accelerate would wrap, so mixed precision (CPU bf16; CUDA bf16/fp16) is
            # entered here: (device type, dtype name), or None for none.
            self.autocast = autocast
            self.events = events
            self.keep_checkpoints = keep_checkpoints
            self._staging_dir: str | None = None
            # Running sums since the last progress event. Loss and token counts stay tensors
            # on the model's device: reading them back every step would make the host wait
            # for the GPU each step (Progress reads them every ``log_every_steps``).
            self.step_nll: Any = 0.0
            self.step_label_tokens: Any = 0
            self.step_tokens: Any = 0
            self.step_samples = 0
            self.last_eval: tuple[int, dict[str, float]] | None = None
            self._flop_parameters: int | None = None

        def floating_point_ops(self, inputs: dict[str, Any]) -> int:
            # The Trainer's estimate (6 x tokens x non-embedding parameters) for its total_flos,
            # with the parameter count taken once: counting ~700 tensors every step cost 2 %
            # of a CPU run.
            if self._flop_parameters is None:
                count = getattr(self.model, "num_parameters", None)
                self._flop_parameters = int(count(exclude_embeddings=True)) if count else 0
            ids = inputs.get("input_ids")
            return 6 * int(ids.numel()) * self._flop_parameters if ids is not None else 0

        def _autocast(self) -> Any:
            if self.autocast is not None:
                device_type, dtype = self.autocast
                return torch.autocast(device_type, dtype=getattr(torch, dtype))
            return contextlib.nullcontext()

        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            with self._autocast():
                nll, n_tokens, _, _ = completion_nll(model, inputs)
            if num_items_in_batch is None:
                denominator = n_tokens.clamp(min=1)
            else:
                denominator = torch.as_tensor(num_items_in_batch, device=nll.device)
            loss = nll / denominator
            if model.training:
                self.step_nll = self.step_nll + nll.detach().float()
                self.step_label_tokens = self.step_label_tokens + n_tokens.detach()
                attention = inputs.get("attention_mask")
                self.step_tokens = self.step_tokens + (
                    attention.sum() if attention is not None else inputs["input_ids"].numel()
                )
                self.step_samples += int(inputs["input_ids"].shape[0])
            if return_outputs:
                return loss, {"loss": loss}
            return loss

        def evaluate(
            self,
            eval_dataset: Any = None,
            ignore_keys: Any = None,
            metric_key_prefix: str = "eval",
        ) -> dict[str, float]:
            dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
            if dataset is None:
                return {}
            model: Any = self.model
            was_training = model.training
            model.eval()
            # Loss and teacher-forced exact match only (no generation), summed on the device
            # and read back once.
            sums: Any = None
            with torch.no_grad():
                loader: Any = self.get_eval_dataloader(dataset)
                for batch in loader:
                    batch = self._prepare_inputs(batch)
                    with self._autocast():
                        nll, n, ok, count = completion_nll(model, batch, with_accuracy=True)
                    row = torch.stack([nll.float(), n.float(), ok.float(), count.float()])
                    sums = row if sums is None else sums + row
            model.train(was_training)
            nll_sum, tokens, exact, sequences = (
                [float(v) for v in sums.cpu()] if sums is not None else [0.0] * 4
            )
            metrics = {
                f"{metric_key_prefix}_loss": nll_sum / max(tokens, 1),
                f"{metric_key_prefix}_accuracy": exact / max(sequences, 1),
            }
            self.events.emit(
                "eval",
                step=self.state.global_step,
                eval_loss=metrics[f"{metric_key_prefix}_loss"],
                eval_accuracy=metrics[f"{metric_key_prefix}_accuracy"],
            )
            self.last_eval = (self.state.global_step, metrics)
            self.log(metrics)
            me: Any = self
            me.control = me.callback_handler.on_evaluate(me.args, me.state, me.control, metrics)
            return metrics

        def _get_output_dir(self, trial: Any) -> str:
            if self._staging_dir is not None:
                return self._staging_dir
            return str(super()._get_output_dir(trial))

        def _save_checkpoint(self, model: Any, trial: Any) -> None:
            # Written in a staging folder, then renamed: a kill mid-save leaves no
            # half-written checkpoint for the next start to resume from.
            root = Path(str(self.args.output_dir))
            staging = root / _STAGING
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            self._staging_dir = str(staging)
            try:
                save: Any = super()._save_checkpoint
                save(model, trial)
            finally:
                self._staging_dir = None
            name = f"checkpoint-{self.state.global_step}"
            target = root / name
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging / name, target)
            shutil.rmtree(staging, ignore_errors=True)
            _fsync_dir(root)
            self._rotate(root)
            self.events.emit("checkpoint", step=self.state.global_step, path=str(target))

        def _rotate(self, root: Path) -> None:
            found = sorted(
                (int(p.name.split("-")[1]), p)
                for p in root.iterdir()
                if p.is_dir() and p.name.startswith("checkpoint-") and p.name[11:].isdigit()
            )
            for _, path in found[: max(0, len(found) - self.keep_checkpoints)]:
                shutil.rmtree(path, ignore_errors=True)

    return DistilleryTrainer


def make_progress_callback(
    events: EventWriter,
    flags: StopFlags,
    total_steps: int,
    samples_per_step: int,
    log_every_steps: int = 1,
) -> Any:
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def __init__(self) -> None:
            self.trainer: Any = None
            self.stop_reason: str | None = None
            self.started = time.perf_counter()
            self.first_step: int | None = None
            self.trained_tokens = 0
            self.trained_samples = 0
            self.step_started = time.perf_counter()

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.started = time.perf_counter()
            self.first_step = state.global_step

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.step_started = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            reason = flags.reason()
            due = (
                state.global_step % log_every_steps == 0
                or state.global_step >= total_steps
                or reason is not None
            )
            if due:
                self.emit_step(state)
            if reason is not None and state.global_step < total_steps:
                self.stop_reason = reason
                control.should_save = True
                control.should_training_stop = True

        def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if self.trainer is not None and self.trainer.step_samples:
                self.emit_step(state)  # steps since the last event (a stop mid-interval)

        def emit_step(self, state: Any) -> None:
            """One "step" event for the steps since the last one (their mean loss); this is
            where the device's running sums are read back."""
            t = self.trainer
            elapsed = time.perf_counter() - self.started
            self.trained_tokens += int(t.step_tokens)
            self.trained_samples += t.step_samples
            done = state.global_step - (self.first_step or 0)
            per_step = elapsed / max(done, 1)
            lr = t.lr_scheduler.get_last_lr()[0] if t.lr_scheduler is not None else None
            events.emit(
                "step",
                step=state.global_step,
                total_steps=total_steps,
                loss=float(t.step_nll) / max(int(t.step_label_tokens), 1),
                learning_rate=lr,
                epoch=state.epoch,
                tokens_per_s=self.trained_tokens / max(elapsed, 1e-9),
                samples_per_s=self.trained_samples / max(elapsed, 1e-9),
                step_s=time.perf_counter() - self.step_started,
                trained_tokens=self.trained_tokens,
                elapsed_s=elapsed,
                eta_s=per_step * max(total_steps - state.global_step, 0),
            )
            t.step_nll, t.step_label_tokens, t.step_tokens, t.step_samples = 0.0, 0, 0, 0

    return Progress()


def tokenize_dataset(examples: list[TrainExample], tokenizer: Any, max_length: int) -> Any:
    from datasets import Dataset

    inject = template_injects_default_system(tokenizer)
    ids, labels, lengths, truncated = [], [], [], 0
    for example in examples:
        tok = tokenize_example(
            example, tokenizer, max_length=max_length, inject_empty_system=inject
        )
        ids.append(tok.input_ids)
        labels.append(tok.labels)
        lengths.append(len(tok.input_ids))
        truncated += tok.truncated
    dataset = Dataset.from_dict({"input_ids": ids, "labels": labels, "length": lengths})
    return dataset, truncated, inject


def build_trainer(
    *,
    hp: Hyperparameters,
    model: Any,
    tokenizer: Any,
    train_ds: Any,
    eval_ds: Any,
    checkpoints: Path,
    events: EventWriter,
    progress: Any,
    keep_checkpoints: int,
) -> Any:
    from trl.trainer.sft_config import SFTConfig

    sft_config: Any = SFTConfig

    cuda = hp.device == "cuda"
    extra: dict[str, Any] = {}
    if cuda:
        # One fused kernel for the whole AdamW update instead of a loop over the tensors.
        extra["optim"] = "adamw_torch_fused"
    args = sft_config(
        output_dir=str(checkpoints),
        max_steps=hp.total_steps,
        per_device_train_batch_size=hp.batch_size,
        # No activations are kept for backward in evaluation: twice the batch fits.
        per_device_eval_batch_size=hp.batch_size * 2 if cuda else hp.batch_size,
        gradient_accumulation_steps=hp.grad_accum,
        learning_rate=hp.learning_rate,
        warmup_steps=hp.warmup_ratio,
        lr_scheduler_type="linear",
        weight_decay=0.0,
        # accelerate's mixed precision (and, for fp16, its loss scaling); the autocast itself is
        # entered in DistilleryTrainer, around our loss.
        bf16=hp.bf16 and cuda,
        fp16=hp.fp16 and cuda,
        gradient_checkpointing=False,  # set on the model in load_model, when wanted
        use_cpu=not cuda,
        train_sampling_strategy="group_by_length",
        length_column_name="length",
        max_length=None,  # tokenize_dataset already fits every example
        save_strategy="steps",
        save_steps=hp.checkpoint_every_steps,
        save_total_limit=None,  # our _rotate keeps the newest keep_checkpoints
        eval_strategy="steps" if eval_ds is not None and hp.eval_every_steps else "no",
        eval_steps=hp.eval_every_steps,
        logging_steps=10,
        report_to="none",
        disable_tqdm=True,
        seed=hp.seed,
        data_seed=hp.seed,
        dataloader_pin_memory=cuda,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        dataset_num_proc=None,
        save_only_model=False,
        **extra,
    )
    trainer_cls = make_trainer_class()
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        callbacks=[progress],
        events=events,
        keep_checkpoints=keep_checkpoints,
        autocast=autocast_for(hp),
    )
    progress.trainer = trainer
    return trainer


def autocast_for(hp: Hyperparameters) -> tuple[str, str] | None:
    """(device type, dtype) of the autocast every training forward runs under, or None."""
    if hp.device == "cuda":
        return ("cuda", "bfloat16" if hp.bf16 else "float16")
    return ("cpu", "bfloat16") if hp.bf16 else None


def _save_tokenizer(tokenizer: Any, dest: Path) -> None:
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
    staging = dest.with_name(dest.name + _STAGING)
    shutil.rmtree(staging, ignore_errors=True)
    merged.save_pretrained(str(staging))
    _save_tokenizer(tokenizer, staging)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(staging, dest)


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


def _train(
    out: Path, events: EventWriter, flags: StopFlags, timings: dict[str, float]
) -> TrainResult:
    import torch

    settings, train_examples, eval_examples = load_spec(out)
    spec: TrainSpec = spec_from_settings(settings, train_examples, eval_examples)
    if not spec.label_list_in_prompt:
        train_examples = [
            replace(e, messages=without_label_list(e.messages)) for e in train_examples
        ]
        eval_examples = [replace(e, messages=without_label_list(e.messages)) for e in eval_examples]
    device = str(settings.get("device", "cpu"))
    if spec.method == "qlora" and device != "cuda":
        raise TrainingConfigError("QLoRA needs a CUDA GPU; this worker has none")
    facts = cuda_facts() if device == "cuda" else None
    hp = resolve_hyperparameters(spec, n_train=len(train_examples), device=device, gpu=facts)
    threads = spec.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    if facts is not None:
        # TF32 for the float32 matrix products that remain (e.g. fp32 LoRA adapters' grads).
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    checkpoints = out / CHECKPOINTS_DIR
    checkpoints.mkdir(parents=True, exist_ok=True)
    resume = latest_checkpoint(out)
    resumed_from = int(resume.name.split("-")[1]) if resume else 0

    from transformers.utils import logging as hf_logging

    disable_bars: Any = hf_logging.disable_progress_bar
    disable_bars()
    t0 = time.perf_counter()
    tokenizer = load_tokenizer(spec.base_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    timings["load_s"] += time.perf_counter() - t0

    t0 = time.perf_counter()
    train_ds, truncated, empty_system = tokenize_dataset(train_examples, tokenizer, hp.max_length)
    longest = max(train_ds["length"], default=0)
    eval_ds = None
    if eval_examples:
        eval_ds, _, _ = tokenize_dataset(eval_examples, tokenizer, hp.max_length)
        longest = max(longest, *eval_ds["length"])
    timings["tokenize_s"] += time.perf_counter() - t0
    if facts is not None:
        # Size the GPU batch for the sequences this run really has, not for max_length.
        hp = resolve_hyperparameters(
            spec, n_train=len(train_examples), device=device, gpu=facts, longest_tokens=longest
        )

    t0 = time.perf_counter()
    attention = cpu_attention(longest) if hp.device != "cuda" else None
    model = load_model(spec.base_model, hp, attention=attention, facts=facts)
    timings["load_s"] += time.perf_counter() - t0
    events.emit(
        "started",
        pid=os.getpid(),
        device=device,
        threads=threads,
        n_train=len(train_examples),
        n_eval=len(eval_examples),
        truncated_examples=truncated,
        total_steps=hp.total_steps,
        resumed_from_step=resumed_from,
        hyperparameters=hp.to_json(),
        tcmalloc="tcmalloc" in os.environ.get("LD_PRELOAD", ""),
        attention=_causal_lm(model).config._attn_implementation,
        hub_kernels=bool(getattr(_causal_lm(model), "use_kernels", False)),
        longest_tokens=longest,
        base_dtype=str(_causal_lm(model).dtype).removeprefix("torch."),
    )
    if flags.reason() is not None and resume is None:
        # Stopped before the first step: nothing to keep.
        return TrainResult(
            status=flags.reason() or "cancelled",  # type: ignore[arg-type]
            total_steps=hp.total_steps,
            timings=timings,
            hyperparameters=hp.to_json(),
        )

    samples_per_step = hp.batch_size * hp.grad_accum
    attempts = 0
    t0 = time.perf_counter()
    while True:
        progress = make_progress_callback(
            events, flags, hp.total_steps, samples_per_step, hp.log_every_steps
        )
        trainer = build_trainer(
            hp=hp,
            model=model,
            tokenizer=tokenizer,
            train_ds=train_ds,
            eval_ds=eval_ds,
            checkpoints=checkpoints,
            events=events,
            progress=progress,
            keep_checkpoints=spec.keep_checkpoints,
        )
        resume = latest_checkpoint(out)
        try:
            output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
            break
        except torch.OutOfMemoryError:
            attempts += 1
            if hp.device != "cuda" or attempts > spec.max_oom_retries:
                raise
            hp = smaller_after_oom(hp)
            events.emit(
                "oom_retry",
                batch_size=hp.batch_size,
                grad_accum=hp.grad_accum,
                gradient_checkpointing=hp.gradient_checkpointing,
            )
            del trainer, model
            gc.collect()
            torch.cuda.empty_cache()
            model = load_model(spec.base_model, hp, attention=attention, facts=facts)
    timings["train_s"] += time.perf_counter() - t0
    step = trainer.state.global_step
    last = latest_checkpoint(out)
    metrics: dict[str, float] = {
        "train_loss": float(output.training_loss),
        "train_runtime_s": float(output.metrics.get("train_runtime", 0.0)),
        "samples_per_s": progress.trained_samples
        / max(time.perf_counter() - progress.started, 1e-9),
        "tokens_per_s": progress.trained_tokens / max(time.perf_counter() - progress.started, 1e-9),
    }
    if progress.stop_reason is not None:
        return TrainResult(
            status=progress.stop_reason,
            step=step,
            total_steps=hp.total_steps,
            metrics=metrics,
            last_checkpoint=str(last) if last else None,
            timings=timings,
            hyperparameters=hp.to_json(),
        )
    if eval_ds is not None:
        if trainer.last_eval is not None and trainer.last_eval[0] == step:
            metrics.update(trainer.last_eval[1])
        else:
            metrics.update(trainer.evaluate())
    metrics["peak_rss_mb"] = peak_rss_mb()
    if hp.device == "cuda":
        metrics["peak_gpu_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30

    t0 = time.perf_counter()
    meta = {
        "base_model": spec.base_model,
        "method": hp.method,
        "hyperparameters": hp.to_json(),
        "metrics": metrics,
        "n_train": len(train_examples),
        "n_eval": len(eval_examples),
        # Inference must render prompts the same way (worker.training_data.student_messages).
        "prompt_format": {
            "empty_system_turn_when_task_has_none": empty_system,
            "label_list": spec.label_list_in_prompt,
        },
    }
    adapter_dir: Path | None = None
    merged_dir: Path | None = None
    if hp.method == "full":
        merged_dir = out / MERGED_DIR
        staging = out / (MERGED_DIR + _STAGING)
        shutil.rmtree(staging, ignore_errors=True)
        trainer.model.config.use_cache = True
        trainer.model.save_pretrained(str(staging))
        _save_tokenizer(tokenizer, staging)
        _atomic_write_json(staging / TRAINING_META_FILE, meta)
        shutil.rmtree(merged_dir, ignore_errors=True)
        os.replace(staging, merged_dir)
        timings["save_s"] += time.perf_counter() - t0
    else:
        adapter_dir = out / ADAPTER_DIR
        staging = out / (ADAPTER_DIR + _STAGING)
        shutil.rmtree(staging, ignore_errors=True)
        trainer.model.save_pretrained(str(staging))
        _save_tokenizer(tokenizer, staging)
        _atomic_write_json(staging / TRAINING_META_FILE, meta)
        shutil.rmtree(adapter_dir, ignore_errors=True)
        os.replace(staging, adapter_dir)
        timings["save_s"] += time.perf_counter() - t0
        if spec.merge:
            t0 = time.perf_counter()
            del trainer, model
            gc.collect()
            merged_dir = out / MERGED_DIR
            merge_adapter(spec.base_model, adapter_dir, merged_dir, tokenizer, hp)
            _atomic_write_json(merged_dir / TRAINING_META_FILE, meta)
            timings["merge_s"] += time.perf_counter() - t0
    if adapter_dir is not None:
        metrics["adapter_bytes"] = float(_tree_size(adapter_dir))
    if merged_dir is not None:
        metrics["merged_bytes"] = float(_tree_size(merged_dir))
    return TrainResult(
        status="succeeded",
        step=step,
        total_steps=hp.total_steps,
        metrics=metrics,
        adapter_dir=str(adapter_dir) if adapter_dir else None,
        merged_dir=str(merged_dir) if merged_dir else None,
        last_checkpoint=str(last) if last else None,
        timings=timings,
        hyperparameters=hp.to_json(),
    )


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
