"""Starting fine-tunes: the start form's settings → checks → a queued gpu-queue job.

A fine-tune trains a registered base student on a frozen dataset version's train split (its
validation split is the eval set), in a subprocess the gpu-queue worker spawns
(worker.training). Running it is finetunes.training_job; the student model registry and its
downloads are finetunes.registry; export bundles are finetunes.export_job. All are re-exported here, the app's public entry point.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import transaction

from dataset_versions.models import DatasetItem, DatasetVersion
from finetunes.export_job import (
    export_bundle_file,
    export_cancel,
    export_execute,
    export_slug,
    export_start,
)
from finetunes.gpu_plans import AUTO, gpu_target, resolve_method
from finetunes.models import FineTune, FineTuneMethod, StudentModel, StudentSource
from finetunes.registry import (
    ARTIFACTS,
    SMOLLM2_DIR,
    TOKENIZER_FILES,
    artifact_folder_name,
    resolve_hf_cached,
    resolve_local_model,
    smollm2_prepare,
    smollm2_register,
    student_artifact_files,
    student_artifacts,
    student_model_roots,
    student_register_base,
    student_register_local,
    zip_stream,
)
from finetunes.signals import check_training_signals
from finetunes.training_job import (
    MAX_EVAL_EXAMPLES,
    _train_spec,
    code_version,
    fine_tune_execute,
    nested_subset,
    terminate_training_children,
    training_examples,
)
from jobs import services as job_services
from jobs.models import Job, JobKind, JobStatus
from jobs.storage import data_path
from jobs.workers import gpu_workers
from projects.models import Project
from teams.errors import field_and_message
from worker.training import HYPERPARAMETER_FIELDS, PRESETS

__all__ = [
    "ARTIFACTS",
    "CPU_SUGGEST_BALANCED_MAX_STEPS",
    "FINETUNES_DIR",
    "HYPERPARAMETER_FIELDS",
    "MAX_EVAL_EXAMPLES",
    "QLORA_NEEDS_GPU",
    "SMOLLM2_DIR",
    "TOKENIZER_FILES",
    "FineTuneSettings",
    "_train_spec",
    "artifact_folder_name",
    "code_version",
    "export_bundle_file",
    "export_cancel",
    "export_execute",
    "export_slug",
    "export_start",
    "fine_tune_cancel",
    "fine_tune_execute",
    "fine_tune_resume",
    "fine_tune_start",
    "fine_tune_subset_run",
    "nested_subset",
    "preset_table",
    "resolve_hf_cached",
    "resolve_local_model",
    "smollm2_prepare",
    "smollm2_register",
    "split_counts",
    "student_artifact_files",
    "student_artifacts",
    "student_model_roots",
    "student_register_base",
    "student_register_local",
    "suggested_preset",
    "terminate_training_children",
    "training_examples",
    "zip_stream",
]

FINETUNES_DIR = "finetunes"
QLORA_NEEDS_GPU = (
    "QLoRA needs a CUDA GPU (it loads the base model in 4-bit with bitsandbytes), and no GPU "
    "worker has reported in. Choose LoRA (the same kind of adapter on a full-precision base) "
    "or start a worker on a machine with an NVIDIA GPU: make worker QUEUES=gpu CONCURRENCY=1."
)


# Starting a fine-tune ---------------------------------------------------------------------------


@dataclass
class FineTuneSettings:
    """What the start form asks. Exactly one of ``student`` / ``local_path`` / ``hf_model_id``.
    ``hyperparameters`` keys are HYPERPARAMETER_FIELDS; a missing one comes from the preset.
    ``method`` "auto": LoRA, or QLoRA when the student does not fit the GPU in bf16
    (finetunes.gpu_plans)."""

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


# On a CPU the suggestion is "balanced" while it stays under 500 steps (a 135M student on short
# inputs measured ~1.3 s a step on 2 idle cores: 500 steps ~ 11 min; the form shows this
# worker's estimate), else "quick". Measured on BANKING77 (SmolLM2-135M, 300 held-out rows):
# 600 rows: 113 steps 36 %, 225 steps 61 %; 2,000 rows: "quick" (150 steps, 200 s) 57.3 %
# (95 % CI 51.7-62.8) vs "balanced" (500 steps) 82.7 % (78.0-86.5) — the limit was 300 steps,
# which suggested "quick" at 2,000 rows.
CPU_SUGGEST_BALANCED_MAX_STEPS = 500


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
    from worker.training_signals import check_signal_settings

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
        check_signal_settings(
            spec.rationale_training, spec.soft_label_weight, spec.soft_label_temperature
        )
    except TrainingConfigError as exc:
        # The engine names the setting at fault in ``field`` (and says what is wrong, without
        # it, in ``message``); one the form does not show is reported for the whole form.
        name, message = field_and_message(exc)
        if name in HYPERPARAMETER_FIELDS or name in ("method", "preset"):
            raise ValidationError({name: message}) from None
        raise ValidationError(str(exc)) from None
    return chosen


def _resolve_base(*, project: Project, user: User, settings: FineTuneSettings) -> StudentModel:
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
        folder = resolve_local_model(settings.local_path, team=project.team)
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
    *, project: Project, version: DatasetVersion, user: User, settings: FineTuneSettings
) -> FineTune:
    """Check everything a user can get wrong, then queue the job on the gpu queue."""
    if version.project_id != project.pk:
        raise ValidationError("that dataset version belongs to another project")
    if settings.method not in (*FineTuneMethod.values, AUTO):
        raise ValidationError({"method": "choose automatic, LoRA, QLoRA or full fine-tuning"})
    if settings.preset and settings.preset not in PRESETS:
        raise ValidationError({"preset": f"choose {', '.join(PRESETS[:-1])} or {PRESETS[-1]}"})
    gpu = bool(gpu_workers())
    if settings.method == FineTuneMethod.QLORA and not gpu:
        raise ValidationError({"method": QLORA_NEEDS_GPU})
    n_train = split_counts(version).get("train", 0)
    if n_train < 1:
        raise ValidationError(
            f"dataset version {version.name!r} has no training rows: freeze one with a train split"
        )
    # "auto" is LoRA or QLoRA; both take the same hyperparameters, checked as LoRA here.
    checked = settings if settings.method != AUTO else replace(settings, method="lora")
    chosen = _validate_hyperparameters(checked, n_train=n_train, device="cuda" if gpu else "cpu")
    check_training_signals(version=version, chosen=chosen)
    if project.output_kind == "label":
        # A distilled student learns the labels: by default it is trained (and served) without
        # the label list, which is most of a label task's prompt.
        chosen.setdefault("label_list_in_prompt", False)
    else:
        chosen.pop("label_list_in_prompt", None)
    with transaction.atomic():
        base = _resolve_base(project=project, user=user, settings=settings)
        method, why = resolve_method(
            settings.method, folder=data_path(base.path), target=gpu_target() if gpu else None
        )
        job = job_services.job_create(
            team=project.team,
            project=project,
            kind=JobKind.FINE_TUNE,
            user=user,
            params={"dataset_version_id": version.pk, "method": method}
            | ({"method_chosen_because": why} if why else {}),
        )
        fine_tune = FineTune.objects.create(
            job=job,
            project=project,
            dataset_version=version,
            base_model=base,
            base_model_name=base.name,
            method=method,
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


def fine_tune_subset_run(*, parent: FineTune, n_train: int, seed: int, host: str) -> FineTune:
    """``parent``'s recipe (base model, method, preset, the settings the user chose) trained
    again on the first ``n_train`` rows of the same train split in a seeded order: one point of
    a learning curve. Runs inline, inside the running job ``host`` names, which holds this
    machine's compute. A succeeded run of the same recipe, size and seed is reused.

    Returns the succeeded fine-tune; raises JobCancelled, or RuntimeError when training fails."""
    done = (
        FineTune.objects.filter(
            project=parent.project,
            dataset_version=parent.dataset_version,
            base_model=parent.base_model,
            method=parent.method,
            preset=parent.preset,
            hyperparameters=parent.hyperparameters,
            train_limit=n_train,
            subset_seed=seed,
            job__status=JobStatus.SUCCEEDED,
            result_model__isnull=False,
        )
        .order_by("-id")
        .first()
    )
    if done is not None:
        return done
    with transaction.atomic():
        job = job_services.job_create_running(
            team=parent.project.team,
            project=parent.project,
            kind=JobKind.FINE_TUNE,
            user=parent.job.created_by,
            worker=host,
            params={"dataset_version_id": parent.dataset_version_id, "method": parent.method},
        )
        fine_tune = FineTune.objects.create(
            job=job,
            project=parent.project,
            dataset_version=parent.dataset_version,
            base_model=parent.base_model,
            base_model_name=parent.base_model_name,
            method=parent.method,
            preset=parent.preset,
            hyperparameters=parent.hyperparameters,
            output_dir="",
            n_train=n_train,
            n_eval=parent.n_eval,
            train_limit=n_train,
            subset_seed=seed,
        )
        fine_tune.output_dir = (
            f"{FINETUNES_DIR}/team-{parent.project.team_id}/project-{parent.project_id}/"
            f"finetune-{fine_tune.pk}"
        )
        fine_tune.save(update_fields=["output_dir"])
        job.params = {**job.params, "fine_tune_id": fine_tune.pk}
        job.save(update_fields=["params"])
    try:
        result = fine_tune_execute(job=job)
    except job_services.JobCancelled:
        job_services.job_mark_cancelled(job=job)
        raise
    except job_services.JobHandedOff:
        # The worker is stopping: this inline run cannot be re-queued on its own (its host
        # job is what resumes), so it is retired; the host's next attempt starts it again.
        job_services.job_fail_running(job_ids=[job.pk], error="the worker stopped")
        raise RuntimeError(f"training on {n_train:,} rows: the worker stopped") from None
    except Exception as exc:
        job_services.job_fail(job=job, error=str(exc) or exc.__class__.__name__)
        raise RuntimeError(f"training on {n_train:,} rows: {exc}") from exc
    job_services.job_succeed(job=job, result=result)
    return FineTune.objects.select_related("result_model", "job").get(pk=fine_tune.pk)


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
