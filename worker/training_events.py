"""The training child's reports: one JSON line per event (``EventWriter``), the reasons to
stop at the next step boundary (``StopFlags``), and the trainer callback that turns steps into
"step" events and stops on request (``make_progress_callback``)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

__all__ = ["EventWriter", "StopFlags", "make_progress_callback"]


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
