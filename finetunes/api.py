"""/api/v1 fine-tunes and students: start a fine-tune of a dataset version (the start form's
fields, checked by that form and the same service), list/detail with live progress and the loss
points, cancel/resume as the page allows, and the student registry (base and distilled) with the
artefact downloads the pages offer.

Routes: ``POST /versions/{version_id}/finetunes``; ``GET /projects/{slug}/finetunes``;
``GET /finetunes/{finetune_id}``, ``GET /finetunes/{finetune_id}/points?after=STEP``,
``POST /finetunes/{finetune_id}/cancel|resume``; ``GET /students?kind=``,
``GET /students/{student_id}``, ``GET /students/{student_id}/download/{artifact}`` (a zip) and
``GET /students/{student_id}/download/{artifact}/{filename}`` (one file).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import FileResponse, Http404, HttpRequest, StreamingHttpResponse
from ninja import Router, Schema
from ninja.pagination import paginate
from ninja.responses import Status

from dataset_versions.api import version_of
from finetunes import selectors, services
from finetunes.forms import FineTuneForm
from finetunes.models import FineTune, StudentKind, StudentModel
from projects.api import project_of
from teams.api_forms import checked, form_data
from teams.api_kit import PAGE, ApiError, Page, auth_of, require_permission, team_object

router = Router(tags=["fine-tunes and students"])


def fine_tune_of(request: HttpRequest, finetune_id: int, *, permission: str = "read") -> FineTune:
    return team_object(
        FineTune.objects.select_related(
            "project__team", "job", "dataset_version", "base_model", "result_model"
        ),
        auth_of(request),
        team_path="project__team",
        permission=permission,
        pk=finetune_id,
    )


def student_of(request: HttpRequest, student_id: int) -> StudentModel:
    return team_object(
        StudentModel.objects.select_related("team", "base_model", "dataset_version", "project"),
        auth_of(request),
        pk=student_id,
    )


def _artifacts(student: StudentModel | None) -> list[dict[str, Any]]:
    if student is None:
        return []
    return [
        {
            "key": a["key"],
            "title": a["title"],
            "bytes": a["bytes"],
            "files": [{"name": name, "bytes": size} for name, size in a["files"]],
            "url": f"/api/v1/students/{student.pk}/download/{a['key']}",
        }
        for a in services.student_artifacts(student=student)
    ]


class ArtifactFile(Schema):
    name: str
    bytes: int


class ArtifactOut(Schema):
    key: str
    title: str
    bytes: int
    files: list[ArtifactFile]
    url: str


class PointOut(Schema):
    step: int
    epoch: float | None
    loss: float | None
    eval_loss: float | None
    eval_accuracy: float | None
    tokens_per_s: float | None


class ProgressOut(Schema):
    """What the fine-tune page shows live."""

    status: str
    is_live: bool
    cancel_requested: bool
    phase: str
    step: int
    total_steps: int
    percent: int
    epoch: float | None
    loss: float | None
    eval_loss: float | None
    eval_accuracy: float | None
    tokens_per_s: float | None
    elapsed: str
    remaining: str
    checkpoint_step: int
    resumed_from_step: int
    attempts: int
    error: str
    can_resume: bool


class FineTuneOut(Schema):
    id: int
    project: str
    dataset_version_id: int
    base_model_id: int | None
    base_model_name: str
    method: str
    preset: str
    hyperparameters: dict[str, Any]
    resolved_hyperparameters: dict[str, Any]
    n_train: int
    n_eval: int
    train_seconds: float
    metrics: dict[str, Any]
    job_id: int
    result_student_id: int | None
    created_at: datetime
    progress: ProgressOut

    @staticmethod
    def resolve_project(obj: FineTune) -> str:
        return obj.project.slug

    @staticmethod
    def resolve_result_student_id(obj: FineTune) -> int | None:
        return obj.result_model_id

    @staticmethod
    def resolve_progress(obj: FineTune) -> dict[str, Any]:
        return selectors.fine_tune_live(fine_tune=obj)


class FineTuneDetailOut(FineTuneOut):
    points: list[PointOut]
    artifacts: list[ArtifactOut]

    @staticmethod
    def resolve_points(obj: FineTune) -> list[dict[str, Any]]:
        return selectors.training_points(fine_tune=obj)

    @staticmethod
    def resolve_artifacts(obj: FineTune) -> list[dict[str, Any]]:
        return _artifacts(obj.result_model)


class FineTuneIn(Schema):
    """The start form's fields. ``student``: a registered student's id, ``local`` (then
    ``local_path``) or ``hf`` (then ``hf_model_id``); a hyperparameter left out comes from the
    preset; ``preset`` left out is the one the page suggests for this version."""

    student: str
    local_path: str | None = None
    hf_model_id: str | None = None
    method: str | None = None
    preset: str | None = None
    label_list_in_prompt: bool | None = None
    epochs: float | None = None
    max_steps: int | None = None
    learning_rate: float | None = None
    batch_size: int | None = None
    grad_accum: int | None = None
    lora_r: int | None = None
    lora_alpha: int | None = None
    lora_dropout: float | None = None
    lora_targets: str | None = None
    max_length: int | None = None
    checkpoint_every_steps: int | None = None


class PointsOut(Schema):
    status: str
    is_live: bool
    step: int
    total_steps: int
    attempts: int
    points: list[PointOut]


class StudentOut(Schema):
    id: int
    name: str
    kind: str
    source: str
    base_model_id: int | None
    project: str | None
    dataset_version_id: int | None
    method: str
    hyperparameters: dict[str, Any]
    code_version: str
    metrics: dict[str, Any]
    file_sizes: dict[str, Any]
    created_at: datetime

    @staticmethod
    def resolve_project(obj: StudentModel) -> str | None:
        return obj.project.slug if obj.project else None


class StudentDetailOut(StudentOut):
    fine_tune_id: int | None
    provenance: dict[str, Any]
    artifacts: list[ArtifactOut]

    @staticmethod
    def resolve_fine_tune_id(obj: StudentModel) -> int | None:
        found = FineTune.objects.filter(result_model=obj).values_list("pk", flat=True).first()
        return found

    @staticmethod
    def resolve_artifacts(obj: StudentModel) -> list[dict[str, Any]]:
        return _artifacts(obj)


@router.post(
    "/versions/{version_id}/finetunes",
    response={201: FineTuneDetailOut},
    summary="Start a fine-tune of a dataset version (queued for a gpu-queue worker)",
)
def start_fine_tune(request: HttpRequest, version_id: int, payload: FineTuneIn) -> Status[FineTune]:
    version = version_of(request, version_id, permission="write")
    project = version.project
    hardware = selectors.hardware_status()
    n_train = services.split_counts(version).get("train", 0)
    suggested = services.suggested_preset(n_train=n_train, gpu=hardware["has_gpu"])
    data = form_data(FineTuneForm, payload)
    if payload.preset is None:
        data["preset"] = suggested
    form = checked(
        FineTuneForm(
            data,
            team=project.team,
            students=selectors.students_to_train(team=project.team),
            has_gpu=hardware["has_gpu"],
            suggested_preset=suggested,
            label_task=project.output_kind == "label",
            n_train=n_train,
        )
    )
    fine_tune = services.fine_tune_start(
        project=project,
        version=version,
        user=auth_of(request).user,
        settings=form.fine_tune_settings(),  # type: ignore[attr-defined]
    )
    return Status(201, fine_tune_of(request, fine_tune.pk))


@router.get(
    "/projects/{slug}/finetunes", response=list[FineTuneOut], summary="List a project's fine-tunes"
)
@paginate(Page, **PAGE)
def list_fine_tunes(request: HttpRequest, slug: str) -> QuerySet[FineTune]:
    return selectors.fine_tunes_for_project(project=project_of(request, slug)).select_related(
        "project"
    )


@router.get(
    "/finetunes/{finetune_id}",
    response=FineTuneDetailOut,
    summary="A fine-tune: settings, live progress, loss points, the student's downloads",
)
def get_fine_tune(request: HttpRequest, finetune_id: int) -> FineTune:
    return fine_tune_of(request, finetune_id)


@router.get(
    "/finetunes/{finetune_id}/points",
    response=PointsOut,
    summary="Loss points after step `after` and the live status (for polling)",
)
def fine_tune_points(request: HttpRequest, finetune_id: int, after: int = -1) -> dict[str, Any]:
    fine_tune = fine_tune_of(request, finetune_id)
    live = selectors.fine_tune_live(fine_tune=fine_tune)
    return {
        **{k: live[k] for k in ("status", "is_live", "step", "total_steps", "attempts")},
        "points": selectors.training_points(fine_tune=fine_tune, after_step=after),
    }


@router.post(
    "/finetunes/{finetune_id}/cancel",
    response=FineTuneDetailOut,
    summary="Cancel: queued at once; running stops after its step and keeps a checkpoint",
)
def cancel_fine_tune(request: HttpRequest, finetune_id: int) -> FineTune:
    fine_tune = fine_tune_of(request, finetune_id, permission="write")
    if not selectors.fine_tune_live(fine_tune=fine_tune)["is_live"]:
        raise ApiError(409, f"this fine-tune is {fine_tune.job.status}: only a live one can cancel")
    services.fine_tune_cancel(fine_tune=fine_tune)
    return fine_tune_of(request, finetune_id)


@router.post(
    "/finetunes/{finetune_id}/resume",
    response=FineTuneDetailOut,
    summary="Resume a cancelled or failed fine-tune from its latest checkpoint",
)
def resume_fine_tune(request: HttpRequest, finetune_id: int) -> FineTune:
    fine_tune = fine_tune_of(request, finetune_id, permission="write")
    try:
        resumed = services.fine_tune_resume(fine_tune=fine_tune)
    except ValidationError as exc:
        raise ApiError(409, " ".join(exc.messages)) from exc
    if not resumed:
        raise ApiError(409, "the fine-tune changed state meanwhile; it was not resumed")
    return fine_tune_of(request, finetune_id)


@router.get(
    "/students", response=list[StudentOut], summary="The team's students (kind: base, distilled)"
)
@paginate(Page, **PAGE)
def list_students(request: HttpRequest, kind: str = "") -> QuerySet[StudentModel]:
    auth = auth_of(request)
    require_permission(auth, "read")
    if kind and kind not in StudentKind.values:
        raise ApiError(
            400,
            f"unknown kind {kind!r}; choose base or distilled",
            errors=[{"field": "kind", "message": "choose base or distilled"}],
        )
    return selectors.students_of_team(team=auth.team, kind=kind)


@router.get(
    "/students/{student_id}",
    response=StudentDetailOut,
    summary="A student: lineage, metrics and its downloads",
)
def get_student(request: HttpRequest, student_id: int) -> StudentModel:
    return student_of(request, student_id)


@router.get(
    "/students/{student_id}/download/{artifact}",
    response={200: None},
    summary="Download an artefact (model, adapter, tokenizer) as a zip, streamed",
)
def download_artifact(
    request: HttpRequest, student_id: int, artifact: str
) -> StreamingHttpResponse:
    student = student_of(request, student_id)
    files = services.student_artifact_files(student=student, artifact=artifact)
    if not files:
        raise Http404
    folder = services.artifact_folder_name(student=student, artifact=artifact)
    response = StreamingHttpResponse(
        services.zip_stream(files, folder_name=folder), content_type="application/zip"
    )
    response["Content-Disposition"] = f'attachment; filename="{folder}.zip"'
    return response


@router.get(
    "/students/{student_id}/download/{artifact}/{filename}",
    response={200: None},
    summary="Download one file of an artefact (e.g. model.safetensors)",
)
def download_file(
    request: HttpRequest, student_id: int, artifact: str, filename: str
) -> FileResponse:
    student = student_of(request, student_id)
    path = services.student_artifact_files(student=student, artifact=artifact).get(filename)
    if path is None:
        raise Http404
    return FileResponse(path.open("rb"), as_attachment=True, filename=filename)
