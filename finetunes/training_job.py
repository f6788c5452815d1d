"""Running a fine-tune inside the gpu-queue worker: rows → a worker.training spec, the engine's
events → TrainingPoint rows and the job's live figures, the result → a registered student.

The subprocess reports events; ``_Recorder`` turns them into TrainingPoint rows (the live chart)
and the job's figures (step, loss, tokens/s, elapsed, remaining) and heartbeats the job while it
trains, including while a big model loads or merges.

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
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, ClassVar

from django.conf import settings as django_settings
from django.db import transaction

from dataset_versions.models import DatasetItem, DatasetVersion
from finetunes.models import FineTune, StudentKind, StudentModel, StudentSource, TrainingPoint
from finetunes.registry import _folder_sizes
from jobs import services as job_services
from jobs.models import Job, JobStatus
from jobs.storage import data_path, stored_path
from jobs.workers import hardware_probe

if TYPE_CHECKING:
    from worker.training import TrainExample, TrainingProcess, TrainResult, TrainSpec

logger = logging.getLogger(__name__)

#: The validation split is evaluated every few steps; past this size a seeded sample is used.
MAX_EVAL_EXAMPLES = 200


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


def _examples_from_export(path: Path) -> list[TrainExample]:
    from worker.training import TrainExample

    examples = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                record = json.loads(line)
                completion = record["completion"]
                if isinstance(completion, list):
                    completion = "".join(m.get("content", "") for m in completion)
                soft = record.get("label_distribution")
                examples.append(
                    TrainExample(
                        messages=record["prompt"],
                        completion=completion,
                        rationale=str(record.get("rationale") or ""),
                        soft_label={str(k): float(v) for k, v in soft.items()} if soft else None,
                    )
                )
    return examples


def training_examples(version: DatasetVersion, split: str) -> list[TrainExample]:
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
        TrainExample(
            messages=build_messages(spec, dict(item.inputs)),
            completion=item.output,
            rationale=item.rationale,
            soft_label=item.label_distribution or None,
        )
        for item in DatasetItem.objects.filter(version=version, split=split).order_by("id")
    ]


def nested_subset(examples: list[TrainExample], limit: int | None, seed: int) -> list[TrainExample]:
    """The first ``limit`` examples in a seeded order (all of them for None). The same seed gives
    nested subsets: the 500 rows of a smaller limit are among the 1,000 of a larger one, so a
    learning curve's points differ only in how much data they saw."""
    import random

    if limit is None or limit >= len(examples):
        return list(examples)
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    return [examples[i] for i in sorted(order[:limit])]


def _train_spec(fine_tune: FineTune) -> TrainSpec:
    import random

    from worker.training import TrainSpec

    version = fine_tune.dataset_version
    train = nested_subset(
        training_examples(version, "train"), fine_tune.train_limit, fine_tune.subset_seed
    )
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


#: The step event's fields the job's live figures show.
_STEP_FIGURES = (
    "step",
    "total_steps",
    "loss",
    "epoch",
    "tokens_per_s",
    "samples_per_s",
    "elapsed_s",
    "eta_s",
)


def _hardware(started: dict[str, Any]) -> dict[str, Any]:
    """Where the run trains, from the engine's "started" event and this worker's probe."""
    probe = hardware_probe()
    return {
        "worker": socket.gethostname(),
        "device": started.get("device"),
        "threads": started.get("threads"),
        "cpu_cores": probe["cpu_cores"],
        "cuda_devices": probe["cuda_devices"] if started.get("device") == "cuda" else [],
        "tcmalloc": started.get("tcmalloc"),
        "attention": started.get("attention"),
        "base_dtype": started.get("base_dtype"),
        "versions": probe["versions"],
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
        handler = self._HANDLERS.get(str(event.get("type")))
        if handler is not None:
            handler(self, event)

    def _on_started(self, event: dict[str, Any]) -> None:
        resumed = int(event.get("resumed_from_step") or 0)
        self._restart_points_after(resumed)
        self.fine_tune_updates.update(
            resolved_hyperparameters=event.get("hyperparameters") or {},
            total_steps=int(event.get("total_steps") or 0),
            resumed_from_step=resumed,
            step=resumed,
            n_train=int(event.get("n_train") or 0),
            n_eval=int(event.get("n_eval") or 0),
            hardware=_hardware(event),
        )
        self.figures.update(
            phase="training",
            step=resumed,
            total_steps=int(event.get("total_steps") or 0),
            resumed_from_step=resumed,
            device=event.get("device"),
        )
        self.flush(force=True)

    def _restart_points_after(self, resumed: int) -> None:
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

    def _on_step(self, event: dict[str, Any]) -> None:
        step = int(event["step"])
        self._point(step).update(_step_fields(event))
        self.fine_tune_updates["step"] = step
        self.figures.update({k: event.get(k) for k in _STEP_FIGURES})
        if event.get("total_steps") and step >= int(event["total_steps"]):
            self.figures["phase"] = "saving"

    def _on_eval(self, event: dict[str, Any]) -> None:
        point = self._point(int(event["step"]))
        point.update(eval_loss=event.get("eval_loss"), eval_accuracy=event.get("eval_accuracy"))
        self.figures.update(
            eval_loss=event.get("eval_loss"), eval_accuracy=event.get("eval_accuracy")
        )

    def _on_checkpoint(self, event: dict[str, Any]) -> None:
        self.fine_tune_updates["checkpoint_step"] = int(event["step"])
        self.figures["checkpoint_step"] = int(event["step"])

    def _on_oom_retry(self, event: dict[str, Any]) -> None:
        self.figures["oom_retry"] = (
            f"out of GPU memory: retrying with batch {event.get('batch_size')} and "
            f"{event.get('grad_accum')}-step accumulation"
        )

    def _on_timings(self, event: dict[str, Any]) -> None:
        self.fine_tune_updates["timings"] = {
            k: v for k, v in event.items() if k.endswith("_s") and isinstance(v, int | float)
        }

    def _on_error(self, event: dict[str, Any]) -> None:
        self.figures["phase"] = "failed"

    #: Engine event type → what it changes (other event types change nothing).
    _HANDLERS: ClassVar[dict[str, Callable[[_Recorder, dict[str, Any]], None]]] = {
        "started": _on_started,
        "step": _on_step,
        "eval": _on_eval,
        "checkpoint": _on_checkpoint,
        "oom_retry": _on_oom_retry,
        "timings": _on_timings,
        "error": _on_error,
    }

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
        self.process: TrainingProcess | None = None
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


def _register_distilled(fine_tune: FineTune, result: TrainResult) -> StudentModel:
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
