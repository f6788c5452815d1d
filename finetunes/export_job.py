"""Export bundles of a distilled student: start (a gpu-queue job), run (worker.export), files.

The job links the student's merged model and adapter into the bundle's folder, converts the
merged model to GGUF with llama.cpp's converter, quantises it with llama.cpp's quantiser, runs
every GGUF on the dataset version's test split next to the unquantised student, and writes the
Ollama Modelfile and the deploy commands. The bundle row keeps every file's size and sha256.
"""

from __future__ import annotations

import logging
import random
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import transaction

from finetunes.models import ExportBundle, StudentKind, StudentModel, StudentSource
from finetunes.registry import student_folder_allowed
from finetunes.training_job import training_examples
from jobs import services as job_services
from jobs.models import Job, JobKind
from jobs.storage import data_path

if TYPE_CHECKING:
    from worker.export import ExportSpec

logger = logging.getLogger(__name__)

EXPORTS_DIR = "exports"
#: Hugging Face ids of bundled base models (what vLLM's LoRA form loads as the base).
BUNDLED_HF_IDS = {"SmolLM2-135M-Instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def export_slug(student: StudentModel) -> str:
    """The model's name in Ollama and vLLM: lowercase letters, digits and dashes."""
    slug = re.sub(r"[^a-z0-9]+", "-", student.name.lower()).strip("-")[:60].strip("-")
    return slug or f"student-{student.pk}"


def _student_folders(student: StudentModel) -> tuple[Path, Path | None]:
    merged = data_path(student.path)
    adapter = data_path(student.adapter_path) if student.adapter_path else None
    for folder in (merged, adapter):
        if folder is not None and not student_folder_allowed(student=student, folder=folder):
            raise RuntimeError("the student's files are outside its team's folders")
    return merged, adapter


def export_start(*, student: StudentModel, user: User) -> ExportBundle:
    """Queue an export bundle job for a distilled student whose merged model is on disk."""
    if student.kind != StudentKind.DISTILLED or student.source != StudentSource.FINE_TUNE:
        raise ValidationError("only a distilled student (the result of a fine-tune) is exported")
    if student.dataset_version_id is None or student.project_id is None:
        raise ValidationError(
            "the student's dataset version was deleted: there is no task to check"
        )
    with transaction.atomic():
        job = job_services.job_create(
            team=student.team,
            project=student.project,
            kind=JobKind.EXPORT_BUNDLE,
            user=user,
            params={"student_id": student.pk},
        )
        bundle = ExportBundle.objects.create(
            student=student,
            job=job,
            folder="",
            slug=export_slug(student),
            margin_points=float(django_settings.EXPORT_QUANT_MARGIN_POINTS),
            created_by=user,
        )
        bundle.folder = (
            f"{EXPORTS_DIR}/team-{student.team_id}/student-{student.pk}/bundle-{bundle.pk}"
        )
        bundle.save(update_fields=["folder"])
        job.params = {**job.params, "export_bundle_id": bundle.pk}
        job.save(update_fields=["params"])
    return bundle


def export_cancel(*, bundle: ExportBundle) -> Job:
    return job_services.job_request_cancel(job=bundle.job)


def _base_for_vllm(student: StudentModel) -> str:
    base = student.base_model
    if base is None:
        return str(student.provenance.get("base_model") or "")
    hf_id = base.provenance.get("hf_model_id") if isinstance(base.provenance, dict) else None
    if hf_id:
        return str(hf_id)
    if base.source == StudentSource.BUNDLED and base.name in BUNDLED_HF_IDS:
        return BUNDLED_HF_IDS[base.name]
    return str(data_path(base.path))


def _export_spec(bundle: ExportBundle) -> ExportSpec:
    from worker.export import ExportSpec

    student = bundle.student
    version = student.dataset_version
    if version is None or student.project is None:
        raise RuntimeError("the student's dataset version was deleted: there is no task to check")
    merged, adapter = _student_folders(student)
    tests = training_examples(version, "test")
    limit = int(django_settings.EXPORT_QUANT_CHECK_MAX_EXAMPLES)
    if len(tests) > limit:
        tests = random.Random(0).sample(tests, limit)
    threads = int(getattr(django_settings, "TRAINING_THREADS", 0) or 0)
    return ExportSpec(
        slug=bundle.slug,
        merged_dir=str(merged),
        adapter_dir=str(adapter) if adapter else "",
        out_dir=str(data_path(bundle.folder)),
        task=student.project.task_spec(),
        test_examples=tests,
        base_model=_base_for_vllm(student),
        quant_types=tuple(django_settings.EXPORT_QUANT_TYPES),
        margin_points=bundle.margin_points,
        threads=threads or None,
    )


def export_execute(*, job: Job) -> dict[str, Any]:
    """The job: build the bundle, record its files and quant check on the row."""
    from worker.export import ExportToolError, build_bundle

    bundle = ExportBundle.objects.select_related(
        "student__team", "student__project", "student__dataset_version", "student__base_model"
    ).get(pk=job.params["export_bundle_id"])
    out = data_path(bundle.folder)

    def progress(phase: str, done: int, total: int) -> None:
        figures = {"phase": phase} if phase else None
        job_services.job_progress(job=job, done=done, total=total, figures=figures)

    try:
        spec = _export_spec(bundle)
        result = build_bundle(spec, progress)
    except ExportToolError as exc:
        shutil.rmtree(out, ignore_errors=True)
        raise RuntimeError(exc.message) from None
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    data = result.to_dict()
    ExportBundle.objects.filter(pk=bundle.pk).update(
        files=data["files"],
        quant_checks=data["quant_checks"],
        commands=data["commands"],
        modelfile=data["modelfile"],
        ollama_gguf=data["ollama_gguf"],
        timings=data["timings"],
        notes=data["notes"],
    )
    flagged = [c["name"] for c in data["quant_checks"] if c.get("do_not_use")]
    return {
        "export_bundle_id": bundle.pk,
        "files": len(data["files"]),
        "bytes": sum(f["size"] for f in data["files"]),
        "do_not_use": flagged,
        "seconds": round(sum(data["timings"].values()), 2),
    }


def export_bundle_file(*, bundle: ExportBundle, name: str) -> Path | None:
    """A bundle file by its listed name (a lookup in the stored list, never a join with what
    the user typed), if it is still on disk."""
    if name not in {f["name"] for f in bundle.files}:
        return None
    folder = data_path(bundle.folder).resolve()
    path = (folder / name).resolve()
    if folder not in path.parents or not path.is_file():
        return None
    return path
