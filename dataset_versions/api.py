"""/api/v1 dataset versions: a project's versions (counts, splits, leakage summary), freezing one
(the freeze form's options, checked by that form and the same service: it starts a job), reading
a version's rows by split (cursor pages) and downloading its exports (the page's files, streamed).

Routes: ``GET|POST /projects/{slug}/versions``; ``GET /versions/{version_id}``,
``GET /versions/{version_id}/rows?split=``, ``GET /versions/{version_id}/export?format=&split=``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import FileResponse, HttpRequest
from ninja import Field, Router, Schema
from ninja.pagination import paginate
from ninja.responses import Status

from dataset_versions import services
from dataset_versions.forms import FreezeForm
from dataset_versions.models import DatasetItem, DatasetVersion
from projects.api import project_of
from teams.api_forms import checked, form_data
from teams.api_kit import PAGE, ApiError, Page, auth_of, team_object
from worker import datasets

router = Router(tags=["dataset versions"])


def version_of(
    request: HttpRequest, version_id: int, *, permission: str = "read"
) -> DatasetVersion:
    """The version ``version_id`` of a project of the token's team (404 otherwise)."""
    return team_object(
        DatasetVersion.objects.select_related("project__team", "created_by"),
        auth_of(request),
        team_path="project__team",
        permission=permission,
        pk=version_id,
    )


class JobRef(Schema):
    """A background job; poll it at /api/v1/jobs/{id}."""

    id: int
    kind: str
    status: str
    progress_done: int
    progress_total: int


class LeakageOut(Schema):
    ok: bool
    summary: str
    threshold: float | None
    exact: int = Field(..., description="exact duplicate inputs spanning splits")
    normalised: int = Field(..., description="normalised duplicate inputs spanning splits")
    near_duplicates: int = Field(..., description="near-duplicate pairs spanning splits")
    near_duplicate_pairs: int
    near_duplicate_groups_merged: int


class ExportOut(Schema):
    format: str
    split: str
    title: str
    url: str


class VersionOut(Schema):
    id: int
    project: str
    name: str
    content_hash: str
    row_count: int
    decision_count: int
    splits: dict[str, int]
    skipped: int
    leakage: LeakageOut
    params: dict[str, Any]
    job_id: int | None
    created_by: str | None
    created_at: datetime
    exports: list[ExportOut]

    @staticmethod
    def resolve_project(obj: DatasetVersion) -> str:
        return obj.project.slug

    @staticmethod
    def resolve_splits(obj: DatasetVersion) -> dict[str, int]:
        counts = (obj.stats or {}).get("counts") or {}
        return {split: int(counts.get(split, 0)) for split in datasets.SPLITS}

    @staticmethod
    def resolve_skipped(obj: DatasetVersion) -> int:
        return len(obj.skipped or [])

    @staticmethod
    def resolve_leakage(obj: DatasetVersion) -> dict[str, Any]:
        leak = obj.leakage or {}
        return {
            "ok": bool(leak.get("ok", True)),
            "summary": leak.get("summary", ""),
            "threshold": leak.get("threshold"),
            "exact": len(leak.get("exact") or []),
            "normalised": len(leak.get("normalised") or []),
            "near_duplicates": len(leak.get("near_duplicates") or []),
            "near_duplicate_pairs": int(leak.get("near_duplicate_pairs") or 0),
            "near_duplicate_groups_merged": int(leak.get("near_duplicate_groups_merged") or 0),
        }

    @staticmethod
    def resolve_created_by(obj: DatasetVersion) -> str | None:
        return obj.created_by.username if obj.created_by else None

    @staticmethod
    def resolve_exports(obj: DatasetVersion) -> list[dict[str, str]]:
        """Every download the version page offers (CSV has one file for all splits)."""
        out = []
        for fmt, (_, title) in services.EXPORT_FORMATS.items():
            for split in ("all",) if fmt == "csv" else services.EXPORT_SPLITS:
                if f"{fmt}:{split}" in (obj.files or {}):
                    out.append(
                        {
                            "format": fmt,
                            "split": split,
                            "title": title,
                            "url": f"/api/v1/versions/{obj.pk}/export?format={fmt}&split={split}",
                        }
                    )
        return out


class FreezeIn(Schema):
    """The freeze form's fields; one left out takes the form's default."""

    name: str
    seed: int | None = None
    train: float | None = None
    validation: float | None = None
    test: float | None = None
    include_references: bool | None = None
    real_ratio: float | None = None
    stratify: bool | None = None
    group_near_duplicates: bool | None = None
    near_duplicate_threshold: float | None = None
    max_synthetic_train_share: float | None = None


class FreezeOut(Schema):
    job: JobRef
    version: VersionOut | None = None


class ItemOut(Schema):
    id: int
    row_id: str
    split: str
    source: str
    group: int
    inputs: dict[str, Any]
    output: str


@router.get(
    "/projects/{slug}/versions", response=list[VersionOut], summary="List a project's versions"
)
@paginate(Page, **PAGE)
def list_versions(request: HttpRequest, slug: str) -> QuerySet[DatasetVersion]:
    versions: QuerySet[DatasetVersion] = services.versions_for(project=project_of(request, slug))
    return versions.select_related("project")


@router.post(
    "/projects/{slug}/versions",
    response={202: FreezeOut},
    summary="Freeze the approved outputs into a new version (a job; the freeze form's options)",
)
def freeze_version(request: HttpRequest, slug: str, payload: FreezeIn) -> Status[dict[str, Any]]:
    project = project_of(request, slug, permission="write")
    form = FreezeForm(form_data(FreezeForm, payload))
    checked(form)
    options = form.freeze_options()
    try:
        job = services.dataset_freeze_start(
            project=project, user=auth_of(request).user, options=options
        )
    except ValidationError as exc:
        if "name" in getattr(exc, "error_dict", {}):  # the name is taken: a conflict
            message = exc.message_dict["name"][0]
            raise ApiError(409, message, errors=[{"field": "name", "message": message}]) from exc
        raise
    return Status(202, {"job": job, "version": None})


@router.get("/versions/{version_id}", response=VersionOut, summary="A dataset version")
def get_version(request: HttpRequest, version_id: int) -> DatasetVersion:
    return version_of(request, version_id)


@router.get(
    "/versions/{version_id}/rows",
    response=list[ItemOut],
    summary="A version's rows, optionally of one split (train, validation, test)",
)
@paginate(Page, ordering=("id",), page_size=50, max_page_size=500)
def list_rows(request: HttpRequest, version_id: int, split: str = "") -> QuerySet[DatasetItem]:
    version = version_of(request, version_id)
    if split and split not in datasets.SPLITS:
        raise ApiError(
            400,
            f"unknown split {split!r}; choose {', '.join(datasets.SPLITS)}",
            errors=[{"field": "split", "message": f"choose {', '.join(datasets.SPLITS)}"}],
        )
    items: QuerySet[DatasetItem] = services.items_query(version=version, split=split)
    return items


@router.get(
    "/versions/{version_id}/export",
    summary="Download an export (format openai, hf or csv; split all, train, validation, test)",
    response={200: None},
)
def export_version(
    request: HttpRequest, version_id: int, format: str = "openai", split: str = "all"
) -> FileResponse:
    version = version_of(request, version_id)
    try:
        path, filename = services.export_file(version=version, fmt=format, split=split)
    except ValidationError as exc:
        field = "format" if format not in services.EXPORT_FORMATS else "split"
        message = " ".join(exc.messages)
        raise ApiError(400, message, errors=[{"field": field, "message": message}]) from exc
    if not path.exists():
        raise ApiError(404, "the export file is missing from the data directory")
    content_type = "text/csv; charset=utf-8" if filename.endswith(".csv") else "application/jsonl"
    return FileResponse(
        path.open("rb"), as_attachment=True, filename=filename, content_type=content_type
    )


__all__ = ["JobRef", "router", "version_of"]
