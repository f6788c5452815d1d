"""Reads for fine-tuning pages: the live picture of a run, its chart points, the registry."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from dataset_versions.models import DatasetVersion
from finetunes.models import ExportBundle, FineTune, StudentKind, StudentModel, TrainingPoint
from jobs import services as job_services
from jobs.models import JobStatus, WorkerInfo
from jobs.workers import gpu_workers
from projects.models import Project
from teams.models import Team

#: The most points one poll returns (a long run's chart fills in over a few polls).
POINTS_PER_POLL = 2000


def fine_tunes_for_project(*, project: Project) -> QuerySet[FineTune]:
    return FineTune.objects.filter(project=project).select_related(
        "job", "dataset_version", "result_model", "job__created_by"
    )


def fine_tunes_for_version(*, version: DatasetVersion) -> QuerySet[FineTune]:
    return FineTune.objects.filter(dataset_version=version).select_related("job", "result_model")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


PHASES = {
    "loading": "Loading the model and data",
    "training": "Training",
    "saving": "Saving the adapter and merging the model",
    "registering": "Registering the student model",
    "failed": "Failed",
}


def fine_tune_live(*, fine_tune: FineTune) -> dict[str, Any]:
    """What the job page shows now: status, step, epoch, loss, tokens/s, elapsed, remaining."""
    job = job_services.job_live_view(fine_tune.job)
    figures = job.figures or {}
    total = int(figures.get("total_steps") or fine_tune.total_steps or 0)
    step = int(figures.get("step") or fine_tune.step or 0)
    live = job.status in (JobStatus.QUEUED, JobStatus.RUNNING)
    phase = figures.get("phase", "") if job.status == JobStatus.RUNNING else ""
    return {
        "status": job.status,
        "status_label": job.get_status_display(),
        "is_live": live,
        "cancel_requested": job.cancel_requested,
        "phase": phase,
        "phase_label": PHASES.get(phase, ""),
        "step": step,
        "total_steps": total,
        "percent": 100
        if job.status == JobStatus.SUCCEEDED
        else (min(100, int(100 * step / total)) if total else 0),
        "epoch": figures.get("epoch"),
        "loss": figures.get("loss"),
        "eval_loss": figures.get("eval_loss"),
        "eval_accuracy": figures.get("eval_accuracy"),
        "tokens_per_s": figures.get("tokens_per_s"),
        "samples_per_s": figures.get("samples_per_s"),
        "elapsed": _duration(figures.get("elapsed_s")) if figures.get("elapsed_s") else "—",
        "remaining": _duration(figures.get("eta_s")) if live and figures.get("eta_s") else "—",
        "checkpoint_step": int(figures.get("checkpoint_step") or fine_tune.checkpoint_step or 0),
        "resumed_from_step": int(
            figures.get("resumed_from_step") or fine_tune.resumed_from_step or 0
        ),
        "attempts": job.attempts,
        "oom_retry": figures.get("oom_retry", ""),
        "error": job.error,
        "can_resume": job.status in (JobStatus.CANCELLED, JobStatus.FAILED)
        and bool(fine_tune.checkpoint_step),
    }


def training_points(*, fine_tune: FineTune, after_step: int = -1) -> list[dict[str, Any]]:
    return [
        dict(point)
        for point in TrainingPoint.objects.filter(fine_tune=fine_tune, step__gt=after_step)
        .order_by("step")
        .values("step", "epoch", "loss", "eval_loss", "eval_accuracy", "tokens_per_s")[
            :POINTS_PER_POLL
        ]
    ]


def students_of_team(*, team: Team, kind: str = "") -> QuerySet[StudentModel]:
    """The team's students (``kind``: base or distilled, empty for both)."""
    students = StudentModel.objects.filter(team=team).select_related(
        "base_model", "dataset_version", "project"
    )
    return students.filter(kind=kind) if kind else students


def students_for_team(*, team: Team) -> dict[str, list[StudentModel]]:
    students = students_of_team(team=team)
    return {
        "base": [s for s in students if s.kind == StudentKind.BASE],
        "distilled": [s for s in students if s.kind == StudentKind.DISTILLED],
    }


def students_to_train(*, team: Team) -> list[StudentModel]:
    return list(StudentModel.objects.filter(team=team).order_by("kind", "name"))


def hardware_status() -> dict[str, Any]:
    """Which workers reported in, and whether any can run QLoRA."""
    running = list(WorkerInfo.objects.filter(stopped_at__isnull=True))
    gpus = gpu_workers()
    return {
        "workers": running,
        "gpu_workers": gpus,
        "has_gpu": bool(gpus),
        "gpu_queue_workers": [w for w in running if "gpu" in (w.queues or [])],
    }


# Export bundles ---------------------------------------------------------------------------------


def export_bundles_for_student(*, student: StudentModel) -> QuerySet[ExportBundle]:
    return ExportBundle.objects.filter(student=student).select_related("job", "created_by")


def export_live(*, bundle: ExportBundle) -> dict[str, Any]:
    """The export page's status card: status, phase, progress, error."""
    job = job_services.job_live_view(bundle.job)
    live = job.status in (JobStatus.QUEUED, JobStatus.RUNNING)
    total = job.progress_total
    return {
        "status": job.status,
        "status_label": job.get_status_display(),
        "is_live": live,
        "cancel_requested": job.cancel_requested,
        "phase": (job.figures or {}).get("phase", "") if job.status == JobStatus.RUNNING else "",
        "percent": 100
        if job.status == JobStatus.SUCCEEDED
        else (min(100, int(100 * job.progress_done / total)) if total else 0),
        "error": job.error,
        "waiting": job.waiting,
    }


def export_quant_rows(*, bundle: ExportBundle) -> list[dict[str, Any]]:
    """The quant check as the page shows it: points, and the verdict."""
    rows = []
    for check in bundle.quant_checks:
        rows.append(
            {
                **{k: v for k, v in check.items() if k != "outputs"},
                "points": round(100 * float(check["value"]), 1),
                "reference": check["name"] == "unquantised",
            }
        )
    return rows
