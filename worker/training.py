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
import math
import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from worker.model_loading import (
    DeviceFacts,
    cuda_batch_size,
    hub_free_env,
    read_model_shape,
)
from worker.training_data import TrainExample, build_examples

__all__ = [
    "Hyperparameters",
    "TrainExample",
    "TrainResult",
    "TrainSpec",
    "TrainingConfigError",
    "TrainingProcess",
    "build_examples",
    "cpu_has_native_bf16",
    "cuda_available",
    "resolve_hyperparameters",
    "run_training",
    "smaller_after_oom",
]

Method = Literal["lora", "qlora", "full"]
Preset = Literal["quick", "balanced", "thorough"]
Device = Literal["auto", "cpu", "cuda"]
Status = Literal["succeeded", "cancelled", "interrupted", "failed"]
METHODS: tuple[Method, ...] = ("lora", "qlora", "full")
PRESETS: tuple[Preset, ...] = ("quick", "balanced", "thorough")

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


class TrainingConfigError(ValueError):
    """The spec cannot be trained as asked (on this hardware); the message says why and
    ``field`` (where given) names the setting."""

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.field = field


@dataclass
class TrainSpec:
    """What to train. ``None`` hyperparameters come from the preset (see ``resolve_hyperparameters``)."""

    base_model: str  # a local folder with a transformers model + tokenizer
    output_dir: str
    train_examples: list[TrainExample]
    eval_examples: list[TrainExample] = field(default_factory=list)
    eval_fraction: float = 0.0  # with no eval_examples: hold out this share of the train set
    method: Method = "lora"
    preset: Preset | None = None  # None: "balanced"
    epochs: float | None = None
    max_steps: int | None = None  # overrides epochs
    learning_rate: float | None = None
    batch_size: int | None = None
    grad_accum: int | None = None
    lora_r: int | None = None
    lora_alpha: int | None = None
    lora_dropout: float | None = None
    lora_target_modules: list[str] | str | None = None  # "all-linear" by default
    max_length: int | None = None
    seed: int = 0
    checkpoint_every_steps: int | None = None
    eval_every_steps: int | None = None
    keep_checkpoints: int = 2
    device: Device = "auto"
    gradient_checkpointing: Literal["auto", "on", "off"] = "auto"
    # CPU only: bf16 autocast. "auto": on where the CPU does bf16 in hardware (AVX512-BF16, AMX),
    # where it beats fp32; elsewhere it is emulated and several times slower (CUDA: always bf16).
    cpu_bf16: Literal["auto", "on", "off"] = "auto"
    threads: int | None = None  # CPU threads; None: the cores this process may use
    # Label tasks: keep the "answer with one of these labels: ..." paragraph in the student's
    # prompt (False: train and serve without it; see worker.taskspec.without_label_list). The
    # choice is stored with the model (TRAINING_META_FILE) so inference renders the same prompt.
    label_list_in_prompt: bool = True
    merge: bool = True
    max_oom_retries: int = 3

    def settings_json(self) -> dict[str, Any]:
        """Everything but the examples (those go to JSONL files)."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("train_examples", "eval_examples")
        }


@dataclass(frozen=True)
class Hyperparameters:
    """The concrete settings a run uses, after the preset, dataset size and hardware."""

    preset: str | None
    method: str
    device: str
    epochs: float
    total_steps: int
    learning_rate: float
    batch_size: int
    grad_accum: int
    warmup_ratio: float
    lora_r: int | None
    lora_alpha: int | None
    lora_dropout: float | None
    lora_target_modules: list[str] | str | None
    max_length: int
    checkpoint_every_steps: int
    eval_every_steps: int | None
    gradient_checkpointing: bool
    bf16: bool
    seed: int
    # CUDA without native bf16 (e.g. T4, V100): fp16 mixed precision instead.
    fp16: bool = False
    # Progress events every this many steps. On a GPU each one waits for the device to
    # catch up (the loss is read back), so they are spaced out there.
    log_every_steps: int = 1

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# Per preset: (epochs, LoRA r, alpha, dropout, learning rate for LoRA/QLoRA, for full,
# CPU step cap). Small datasets get more passes (see _epochs_for). The CPU caps keep "quick" a
# matter of minutes on a laptop (a 135M student: ~5 samples/s on 2 cores in fp32, ~12 in bf16).
_PRESETS: dict[str, tuple[float, int, int, float, float, float, int | None]] = {
    "quick": (1.0, 8, 16, 0.0, 2e-4, 2e-5, 150),
    "balanced": (2.0, 16, 32, 0.05, 2e-4, 2e-5, 600),
    "thorough": (3.0, 32, 64, 0.05, 1e-4, 1e-5, None),
}


# LoRA on a small student (under half a billion parameters) takes a higher learning rate than
# the 2e-4 that suits billion-parameter models. Measured: SmolLM2-135M, LoRA r=8, 600 BANKING77
# rows (77 intents, no label list in the prompt), 113 steps of 8 on 2 CPU cores, greedy answers
# on 300 held-out rows: 2e-4 -> 5 %, 1e-3 -> 36 %, 2e-3 -> 46 %, 4e-3 -> 53 %; 1e-3 for twice
# the steps -> 61 %. 10x (2e-3 for quick/balanced) stays clear of the edge for longer runs.
SMALL_STUDENT_PARAMETERS = 500_000_000
SMALL_STUDENT_LORA_LR_FACTOR = 10.0


def count_parameters(model_dir: str | Path) -> int | None:
    """Parameters stored in a model folder's safetensors files, read from their headers only
    (no weights loaded); None when the folder has none."""
    folder = Path(model_dir) if str(model_dir) else None
    if folder is None or not folder.is_dir():
        return None
    total = 0
    found = False
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with path.open("rb") as fh:
                size = int.from_bytes(fh.read(8), "little")
                if not 0 < size < 100_000_000:
                    return None
                header = json.loads(fh.read(size))
        except (OSError, ValueError):
            return None
        for name, entry in header.items():
            if name != "__metadata__" and isinstance(entry, dict):
                total += math.prod(int(d) for d in entry.get("shape", []))
                found = True
    return total if found else None


def _epochs_for(base: float, n_train: int) -> float:
    if n_train < 300:
        return base * 2
    if n_train < 1000:
        return base * 1.5
    if n_train > 20000:
        return max(1.0, base / 2)
    return base


# GPU runs: a step event every this many steps (each one reads the loss back from the GPU).
CUDA_LOG_EVERY_STEPS = 10


def resolve_hyperparameters(
    spec: TrainSpec,
    *,
    n_train: int,
    device: str,
    gpu: DeviceFacts | None = None,
    longest_tokens: int | None = None,
) -> Hyperparameters:
    """Fill the spec's unset hyperparameters from its preset, the dataset size and the device.

    ``device`` is "cpu" or "cuda" (see ``resolve_device``). ``gpu``: the GPU's facts, where
    known (the training child reads them); with them a CUDA run sizes its batch from the GPU's
    memory and the model (``worker.model_loading.cuda_batch_size``, for sequences of
    ``longest_tokens``, else ``max_length``) and picks fp16 on GPUs without bf16. Without them
    a CUDA run assumes bf16 and a batch of 16. Raises TrainingConfigError.
    """
    if spec.method not in METHODS:
        raise TrainingConfigError(f"method: must be one of {', '.join(METHODS)}")
    if spec.method == "qlora" and device != "cuda":
        raise TrainingConfigError(
            "QLoRA needs a CUDA GPU: it loads the base model in 4-bit with bitsandbytes, which "
            "this CPU-only worker cannot do. Choose LoRA (same adapter, full-precision base) or "
            "run the job on a GPU worker."
        )
    preset = spec.preset or "balanced"
    if preset not in _PRESETS:
        raise TrainingConfigError(f"preset: must be one of {', '.join(PRESETS)}")
    if n_train < 1:
        raise TrainingConfigError("train_examples: there is nothing to train on")
    for name in ("batch_size", "grad_accum", "lora_r", "lora_alpha", "max_length", "max_steps"):
        value = getattr(spec, name)
        if value is not None and value < 1:
            raise TrainingConfigError(f"{name}: must be at least 1")
    if spec.epochs is not None and spec.epochs <= 0:
        raise TrainingConfigError("epochs: must be more than 0")
    if spec.lora_dropout is not None and not 0 <= spec.lora_dropout < 1:
        raise TrainingConfigError("lora_dropout: must be between 0 and 1")
    base_epochs, r, alpha, dropout, lr_lora, lr_full, cpu_cap = _PRESETS[preset]
    on_cuda = device == "cuda"

    grad_accum = spec.grad_accum if spec.grad_accum is not None else 1
    epochs = spec.epochs if spec.epochs is not None else _epochs_for(base_epochs, n_train)
    max_length = spec.max_length or (1024 if on_cuda else 512)
    if spec.batch_size is not None:
        batch_size = spec.batch_size
    elif on_cuda and gpu is not None and gpu.kind == "cuda":
        # A fixed step count does not shrink with the batch; an epoch count does.
        planned = None if spec.max_steps is not None else epochs * n_train / grad_accum
        batch_size = cuda_batch_size(
            gpu,
            shape=read_model_shape(spec.base_model) if spec.base_model else None,
            n_parameters=count_parameters(spec.base_model) if spec.base_model else None,
            method=spec.method,
            tokens_per_example=min(longest_tokens or max_length, max_length),
            samples_to_train=planned,
        )
    else:
        batch_size = 16 if on_cuda else 8
    if spec.max_steps is not None:
        total_steps = spec.max_steps
    else:
        total_steps = math.ceil(epochs * n_train / (batch_size * grad_accum))
        if not on_cuda and cpu_cap is not None and spec.epochs is None:
            total_steps = min(total_steps, cpu_cap)
    learning_rate = spec.learning_rate
    if learning_rate is None:
        learning_rate = lr_full if spec.method == "full" else lr_lora
        if spec.method != "full" and spec.base_model:
            n_params = count_parameters(spec.base_model)
            if n_params is not None and n_params < SMALL_STUDENT_PARAMETERS:
                learning_rate = lr_lora * SMALL_STUDENT_LORA_LR_FACTOR
    if not 0 < learning_rate < 1:
        raise TrainingConfigError("learning_rate: must be between 0 and 1")
    lora = spec.method != "full"
    if spec.checkpoint_every_steps is not None and spec.checkpoint_every_steps < 1:
        raise TrainingConfigError("checkpoint_every_steps: must be at least 1")
    checkpoint_every = spec.checkpoint_every_steps or max(1, min(200, round(total_steps / 10)))
    has_eval = bool(spec.eval_examples) or spec.eval_fraction > 0
    eval_every = (spec.eval_every_steps or max(1, total_steps // 5)) if has_eval else None
    if spec.cpu_bf16 not in ("auto", "on", "off"):
        raise TrainingConfigError("cpu_bf16: must be auto, on or off")
    fp16 = False
    if on_cuda:
        bf16 = gpu.bf16 if gpu is not None and gpu.kind == "cuda" else True
        fp16 = not bf16
    elif spec.cpu_bf16 == "auto":
        bf16 = cpu_has_native_bf16()
    else:
        bf16 = spec.cpu_bf16 == "on"
    if spec.gradient_checkpointing == "on":
        checkpointing = True
    elif spec.gradient_checkpointing == "off":
        checkpointing = False
    else:
        # CPU: activations are cheap in RAM and recomputing them costs ~30%. CUDA: off at
        # first; an out-of-memory retry turns it on before shrinking the batch.
        checkpointing = False
    return Hyperparameters(
        preset=spec.preset,
        method=spec.method,
        device=device,
        epochs=epochs,
        total_steps=total_steps,
        learning_rate=learning_rate,
        batch_size=batch_size,
        grad_accum=grad_accum,
        warmup_ratio=0.05,
        lora_r=(spec.lora_r or r) if lora else None,
        lora_alpha=(spec.lora_alpha or alpha) if lora else None,
        lora_dropout=(spec.lora_dropout if spec.lora_dropout is not None else dropout)
        if lora
        else None,
        lora_target_modules=(spec.lora_target_modules or "all-linear") if lora else None,
        max_length=max_length,
        checkpoint_every_steps=checkpoint_every,
        eval_every_steps=eval_every,
        gradient_checkpointing=checkpointing,
        bf16=bf16,
        seed=spec.seed,
        fp16=fp16,
        log_every_steps=CUDA_LOG_EVERY_STEPS if on_cuda else 1,
    )


def smaller_after_oom(hp: Hyperparameters) -> Hyperparameters:
    """The settings to retry with after a CUDA out-of-memory: first recompute activations
    (gradient checkpointing), then halve the micro-batch and double the accumulation, so the
    effective batch and the step count stay the same. Raises TrainingConfigError (field
    ``batch_size``) when there is nothing left to give up."""
    if not hp.gradient_checkpointing:
        return replace(hp, gradient_checkpointing=True)
    if hp.batch_size == 1:
        raise TrainingConfigError(
            "batch_size: out of GPU memory even with batch size 1 and gradient checkpointing; "
            "lower max_length or use QLoRA",
            field="batch_size",
        )
    return replace(hp, batch_size=hp.batch_size // 2, grad_accum=hp.grad_accum * 2)


def split_eval(spec: TrainSpec) -> tuple[list[TrainExample], list[TrainExample]]:
    """(train, eval): the spec's eval examples, or a seeded ``eval_fraction`` of the train set."""
    if spec.eval_examples or spec.eval_fraction <= 0:
        return list(spec.train_examples), list(spec.eval_examples)
    if not 0 < spec.eval_fraction < 1:
        raise TrainingConfigError("eval_fraction: must be between 0 and 1")
    order = list(range(len(spec.train_examples)))
    random.Random(spec.seed).shuffle(order)
    n_eval = max(1, round(len(order) * spec.eval_fraction))
    if n_eval >= len(order):
        raise TrainingConfigError("eval_fraction: it leaves no example to train on")
    held = set(order[:n_eval])
    train = [e for i, e in enumerate(spec.train_examples) if i not in held]
    evals = [e for i, e in enumerate(spec.train_examples) if i in held]
    return train, evals


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX tiles). Measured on
    SmolLM2-135M LoRA, 2 cores (bench/train_throughput.py --ablations): bf16 autocast ran 1.3x
    fp32 on an AVX512-BF16 EPYC, while on CPUs without it bf16 is emulated and slower."""
    try:
        import torch
    except ImportError:
        return False
    cpu: Any = torch.cpu
    try:
        return bool(cpu._is_avx512_bf16_supported() or cpu._is_amx_tile_supported())
    except AttributeError:  # an older torch without the probes
        return False


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
            raise TrainingConfigError("device: cuda was asked for but no CUDA GPU is available")
        return "cuda"
    if requested != "auto":
        raise TrainingConfigError("device: must be auto, cpu or cuda")
    return "cuda" if cuda_available() else "cpu"


@dataclass
class TrainResult:
    status: Status
    step: int = 0
    total_steps: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    adapter_dir: str | None = None  # adapter + tokenizer (LoRA/QLoRA)
    merged_dir: str | None = None  # merged safetensors model + tokenizer
    last_checkpoint: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainResult:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


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
    threads = spec.threads or len(os.sched_getaffinity(0))
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
            raise TrainingConfigError(f"base_model: {spec.base_model} is not a model folder")
        if not spec.train_examples:
            raise TrainingConfigError("train_examples: there is nothing to train on")
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
