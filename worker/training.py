"""Fine-tuning engine: train a student on task examples in a spawned subprocess.

The web side builds a ``TrainSpec`` (base model, output folder, examples, method, preset or
explicit hyperparameters) and calls ``run_training(spec, on_event)``. The training itself runs
in a fresh Python process (``python -m worker.train_entry``): CUDA is not fork-safe, a crash or
an out-of-memory kill cannot take the worker down, and tcmalloc can be preloaded for it alone.

The child appends one JSON object per line to ``<output_dir>/events.jsonl``; the parent tails
that file and hands each event to ``on_event`` (a page can rebuild a loss curve from the same
file after a reload). Events have a ``type``:

- ``started``: pid, device, threads, n_train, n_eval, total_steps, resumed_from_step,
  hyperparameters
- ``step``: step, total_steps, loss, learning_rate, epoch, tokens_per_s, samples_per_s,
  trained_tokens, elapsed_s, eta_s
- ``eval``: step, eval_loss, eval_accuracy (greedy exact match of the completion)
- ``checkpoint``: step, path
- ``oom_retry``: batch_size, grad_accum, gradient_checkpointing
- ``timings``: load_s, tokenize_s, train_s, save_s, merge_s (also logged as one line)
- ``finished``: status, step, metrics, adapter_dir, merged_dir, last_checkpoint
- ``error``: message

Cancelling is cooperative: ``TrainingProcess.cancel()`` (or ``should_cancel`` returning True)
creates ``<output_dir>/CANCEL``; the child checks it after every optimisation step, saves a
checkpoint and stops. SIGTERM does the same ("interrupted"). Checkpoints are written to a
staging folder and renamed into ``checkpoints/checkpoint-<step>``, so a kill never leaves a
half-written one; starting the same spec again resumes from the latest.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from worker.cores import usable_cores
from worker.hyperparameters import (
    CUDA_LOG_EVERY_STEPS,
    SMALL_STUDENT_LORA_LR_FACTOR,
    SMALL_STUDENT_PARAMETERS,
    Hyperparameters,
    count_parameters,
    cpu_has_native_bf16,
    resolve_hyperparameters,
    smaller_after_oom,
)
from worker.model_loading import hub_free_env
from worker.training_data import TrainExample, build_examples
from worker.training_spec import (
    DEVICES,
    HYPERPARAMETER_FIELDS,
    METHODS,
    PRESETS,
    Device,
    Method,
    Preset,
    Status,
    TrainingConfigError,
    TrainResult,
    TrainSpec,
    split_eval,
)

# Re-exported: callers import the engine's public names from here.
__all__ = [
    "CUDA_LOG_EVERY_STEPS",
    "DEVICES",
    "EVENTS_FILE",
    "HYPERPARAMETER_FIELDS",
    "METHODS",
    "PRESETS",
    "SMALL_STUDENT_LORA_LR_FACTOR",
    "SMALL_STUDENT_PARAMETERS",
    "Device",
    "Hyperparameters",
    "Method",
    "Preset",
    "Status",
    "TrainExample",
    "TrainResult",
    "TrainSpec",
    "TrainingConfigError",
    "TrainingProcess",
    "build_examples",
    "count_parameters",
    "cpu_has_native_bf16",
    "cuda_available",
    "latest_checkpoint",
    "resolve_hyperparameters",
    "run_training",
    "smaller_after_oom",
    "split_eval",
]

TCMALLOC = Path("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")

EVENTS_FILE = "events.jsonl"
CANCEL_FILE = "CANCEL"
RESULT_FILE = "result.json"
SPEC_FILE = "spec.json"
TRAIN_FILE = "train.jsonl"
EVAL_FILE = "eval.jsonl"
LOG_FILE = "training.log"
CHECKPOINTS_DIR = "checkpoints"
ADAPTER_DIR = "adapter"
MERGED_DIR = "merged"


def cuda_available() -> bool:
    """Whether a CUDA GPU is usable, checked through NVML so this process never initialises
    CUDA (a worker that forks afterwards would break)."""
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def resolve_device(requested: str) -> str:
    if requested == "cpu":
        return "cpu"
    if requested == "cuda":
        if not cuda_available():
            raise TrainingConfigError(
                "cuda was asked for but no CUDA GPU is available", field="device"
            )
        return "cuda"
    if requested != "auto":
        raise TrainingConfigError("must be auto, cpu or cuda", field="device")
    return "cuda" if cuda_available() else "cpu"


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint (incomplete ones only ever exist under a staging name)."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    best: tuple[int, Path] | None = None
    if root.is_dir():
        for child in root.iterdir():
            prefix, _, number = child.name.partition("-")
            is_checkpoint = prefix == "checkpoint" and number.isdigit() and child.is_dir()
            if is_checkpoint and (best is None or int(number) > best[0]):
                best = (int(number), child)
    return best[1] if best else None


def _write_jsonl(path: Path, examples: Sequence[TrainExample]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for example in examples:
            fh.write(json.dumps(example.to_json(), ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def child_env(
    spec: TrainSpec, device: str, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The training child's environment: ``base`` (default: ours) with the model hub off
    (no downloads, no hub kernels: ``worker.model_loading.HUB_FREE_ENV``, whatever ``base``
    says), CPU threads, tcmalloc, and on CUDA one GPU (trl refuses to train on several GPUs
    from one process; a worker started with CUDA_VISIBLE_DEVICES keeps its choice)."""
    env = hub_free_env(os.environ if base is None else base)
    if device == "cuda":
        env.setdefault("CUDA_VISIBLE_DEVICES", "0")
        # Fewer allocator stalls and less fragmentation as batch shapes vary.
        env.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["PYTHONUNBUFFERED"] = "1"
    threads = spec.threads or usable_cores()
    env["OMP_NUM_THREADS"] = str(threads)
    env["MKL_NUM_THREADS"] = str(threads)
    # tcmalloc: ~1.6x on CPU training measured here (glibc malloc fragments under the
    # autograd's many short-lived tensors). Only for this subprocess.
    if TCMALLOC.exists() and "tcmalloc" not in env.get("LD_PRELOAD", ""):
        env["LD_PRELOAD"] = ":".join(p for p in (str(TCMALLOC), env.get("LD_PRELOAD", "")) if p)
    # The child must import this package even when the caller runs from elsewhere.
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def _parent_death_signal() -> Callable[[], None] | None:
    """A preexec hook: if the worker that started the child dies, the child gets SIGTERM (it
    checkpoints and stops) instead of training on as an orphan. libc is loaded here, before
    the fork: nothing may be imported between fork and exec."""
    if sys.platform != "linux":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return None
    prctl = libc.prctl

    def hook() -> None:  # pragma: no cover - runs in the child before exec
        prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG

    return hook


class TrainingProcess:
    """A running training subprocess. Use ``start``; then ``wait`` (or ``run_training``)."""

    def __init__(self, spec: TrainSpec, proc: subprocess.Popen[bytes], events_offset: int):
        self.spec = spec
        self.output_dir = Path(spec.output_dir)
        self.proc = proc
        self._offset = events_offset
        self._partial = b""

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    def start(cls, spec: TrainSpec) -> TrainingProcess:
        """Validate, write the spec and examples, and start the child. Resumes if the output
        folder holds checkpoints of the same spec."""
        out = Path(spec.output_dir)
        if not Path(spec.base_model).is_dir():
            raise TrainingConfigError(
                f"{spec.base_model} is not a model folder", field="base_model"
            )
        if not spec.train_examples:
            raise TrainingConfigError("there is nothing to train on", field="train_examples")
        device = resolve_device(spec.device)
        train, evals = split_eval(spec)
        resolve_hyperparameters(spec, n_train=len(train), device=device)
        out.mkdir(parents=True, exist_ok=True)
        settings = spec.settings_json()
        settings["device"] = device
        tmp = out / (SPEC_FILE + ".tmp")
        tmp.write_text(json.dumps(settings, indent=2))
        os.replace(tmp, out / SPEC_FILE)
        _write_jsonl(out / TRAIN_FILE, train)
        _write_jsonl(out / EVAL_FILE, evals)
        for stale in (CANCEL_FILE, RESULT_FILE):
            (out / stale).unlink(missing_ok=True)
        events = out / EVENTS_FILE
        events.touch()
        offset = events.stat().st_size
        with (out / LOG_FILE).open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "worker.train_entry", str(out)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=child_env(spec, device),
                cwd=str(out),
                preexec_fn=_parent_death_signal(),
            )
        return cls(spec, proc, offset)

    def cancel(self) -> None:
        """Ask the child to stop after its current step (it keeps a checkpoint)."""
        (self.output_dir / CANCEL_FILE).touch()

    def terminate(self) -> None:
        """SIGTERM: the child checkpoints and stops ("interrupted"), e.g. on worker shutdown."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def read_events(self) -> list[dict[str, Any]]:
        """Events written since the last call (complete lines only)."""
        path = self.output_dir / EVENTS_FILE
        try:
            with path.open("rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        events = []
        for line in lines:
            if line.strip():
                with contextlib.suppress(json.JSONDecodeError):
                    events.append(json.loads(line))
        return events

    def wait(
        self,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        *,
        should_cancel: Callable[[], bool] | None = None,
        poll_interval_s: float = 0.2,
    ) -> TrainResult:
        """Stream events to ``on_event`` until the child exits; return the result."""
        cancel_sent = False
        try:
            while True:
                exited = False
                try:
                    self.proc.wait(timeout=poll_interval_s)
                    exited = True
                except subprocess.TimeoutExpired:
                    pass
                for event in self.read_events():
                    if on_event is not None:
                        on_event(event)
                if exited:
                    break
                if should_cancel is not None and not cancel_sent and should_cancel():
                    self.cancel()
                    cancel_sent = True
        except BaseException:
            # Our caller is going away (its callback raised, or it was interrupted): let the
            # child checkpoint and stop rather than train on unwatched.
            self.terminate()
            raise
        return self._result()

    def _result(self) -> TrainResult:
        path = self.output_dir / RESULT_FILE
        if path.exists():
            return TrainResult.from_json(json.loads(path.read_text()))
        code = self.proc.returncode
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited {code}"
        tail = ""
        with contextlib.suppress(OSError):
            tail = (self.output_dir / LOG_FILE).read_text(errors="replace")[-1500:]
        checkpoint = latest_checkpoint(self.output_dir)
        return TrainResult(
            status="failed",
            step=int(checkpoint.name.split("-")[1]) if checkpoint else 0,
            last_checkpoint=str(checkpoint) if checkpoint else None,
            error=f"the training process {how} before finishing"
            + (f"; last output:\n{tail}" if tail else ""),
        )


def run_training(
    spec: TrainSpec,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    *,
    should_cancel: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train (or resume) in a subprocess, streaming events; blocks until it ends.

    Raises TrainingConfigError before starting anything when the spec cannot run here
    (e.g. QLoRA without a CUDA GPU). Every other failure comes back as a result with
    status "failed" and an error message; a later call with the same spec resumes.
    """
    return TrainingProcess.start(spec).wait(on_event, should_cancel=should_cancel)


def load_spec(output_dir: Path) -> tuple[dict[str, Any], list[TrainExample], list[TrainExample]]:
    """The settings and examples a started job wrote (used by the child)."""
    out = Path(output_dir)
    settings = json.loads((out / SPEC_FILE).read_text())

    def read(name: str) -> list[TrainExample]:
        path = out / name
        if not path.exists():
            return []
        with path.open(encoding="utf-8") as fh:
            return [TrainExample.from_json(json.loads(line)) for line in fh if line.strip()]

    return settings, read(TRAIN_FILE), read(EVAL_FILE)


def spec_from_settings(
    settings: dict[str, Any], train: list[TrainExample], evals: list[TrainExample]
) -> TrainSpec:
    known = {f.name for f in fields(TrainSpec)}
    return TrainSpec(
        train_examples=train,
        eval_examples=evals,
        **{k: v for k, v in settings.items() if k in known},
    )
