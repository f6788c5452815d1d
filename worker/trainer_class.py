"""Our SFTTrainer: the loss and LM head at completion positions only, its own evaluation,
mixed precision entered around the loss, and checkpoints written atomically and rotated."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

from worker.hyperparameters import Hyperparameters
from worker.training_events import EventWriter
from worker.training_model import STAGING, causal_lm

__all__ = ["autocast_for", "build_trainer", "completion_nll", "make_trainer_class"]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def completion_nll(
    model: Any,
    batch: dict[str, Any],
    *,
    with_accuracy: bool = False,
    soft: tuple[float, float] | None = None,
) -> Any:
    """Sum of the completion tokens' negative log-likelihood, computing the LM head only where
    there is a label. Returns (nll_sum, n_tokens, n_exact_sequences, n_sequences).

    ``soft`` = (weight, temperature): where the batch carries soft targets, the sum is the
    mixed cross-entropy + KL loss of worker.training_signals instead."""
    import torch
    import torch.nn.functional as F

    causal = causal_lm(model)
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
    if soft is not None:
        from worker.training_signals import soft_label_loss_sum

        nll = nll + soft_label_loss_sum(hidden, head, batch, weight=soft[0], temperature=soft[1])
    n_tokens = mask.sum()
    if not with_accuracy:
        return nll, n_tokens, None, None
    with torch.no_grad():
        correct = torch.ones_like(mask)
        correct[mask] = logits.argmax(dim=-1) == target_ids
        has_label = mask.any(dim=1)
        exact = (correct.all(dim=1) & has_label).sum()
    return nll, n_tokens, exact, has_label.sum()


# The trainer's methods, defined here so they read as a class; ``make_trainer_class`` puts them
# in front of trl's SFTTrainer (imported only when a child trains: torch and trl are heavy).
# The base is Any for mypy: trl is untyped and these methods use the Trainer's attributes.
_TrainerBase: Any = object


class DistilleryTrainerMixin(_TrainerBase):  # type: ignore[misc]
    def __init__(
        self,
        *args: Any,
        events: EventWriter,
        keep_checkpoints: int,
        autocast: tuple[str, str] | None = None,
        soft_labels: tuple[float, float] | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        # (weight, temperature) of the soft-label KL term, or None: plain cross-entropy.
        self.soft_labels = soft_labels
        if soft_labels is not None:
            from worker.training_signals import SoftLabelCollator

            me: Any = self
            me.data_collator = SoftLabelCollator(me.data_collator)
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
        import torch

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
        import torch

        with self._autocast():
            nll, n_tokens, _, _ = completion_nll(
                model, inputs, soft=self.soft_labels if model.training else None
            )
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
        import torch

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
        staging = root / STAGING
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


def make_trainer_class() -> type:
    """Our SFTTrainer: completion-position LM head, own eval, atomic checkpoints."""
    from trl.trainer.sft_trainer import SFTTrainer

    base: Any = SFTTrainer

    class DistilleryTrainer(DistilleryTrainerMixin, base):  # type: ignore[misc]
        pass

    return DistilleryTrainer


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
    soft_labels: tuple[float, float] | None = None,
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
        soft_labels=soft_labels,
    )
    progress.trainer = trainer
    return trainer


def autocast_for(hp: Hyperparameters) -> tuple[str, str] | None:
    """(device type, dtype) of the autocast every training forward runs under, or None."""
    if hp.device == "cuda":
        return ("cuda", "bfloat16" if hp.bf16 else "float16")
    return ("cpu", "bfloat16") if hp.bf16 else None
