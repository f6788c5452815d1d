"""/api/v1/projects: projects, their task spec and their inputs — the same services as the pages."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from django.http import HttpRequest
from ninja import Field, Router, Schema
from ninja.pagination import paginate
from ninja.responses import Status

from projects import selectors, services
from projects.models import InputRow, Project
from teams.api_kit import PAGE, ApiError, Page, auth_of, field_error, require_permission
from teams.api_kit import team_object as _team_object
from worker.taskspec import TaskSpecError

router = Router(tags=["projects"])


class TaskSpecOut(Schema):
    input_fields: list[str]
    instruction_template: str
    system_prompt: str
    output_kind: str
    label_set: list[str]
    json_schema_: dict[str, Any] | None = Field(None, alias="json_schema")


class ProjectOut(Schema):
    id: int
    slug: str
    name: str
    description: str
    metric: str = Field(..., alias="metric_name")
    task: TaskSpecOut
    created_at: datetime

    @staticmethod
    def resolve_task(obj: Project) -> dict[str, Any]:
        return {
            "input_fields": obj.input_fields,
            "instruction_template": obj.instruction_template,
            "system_prompt": obj.system_prompt,
            "output_kind": obj.output_kind,
            "label_set": obj.label_set or [],
            "json_schema": obj.json_schema,
        }


class ProjectIn(Schema):
    name: str = Field(..., max_length=200)
    description: str = ""


class TaskSpecIn(Schema):
    input_fields: list[str]
    instruction_template: str
    system_prompt: str = ""
    output_kind: str = Field(..., pattern="^(label|json|text)$")
    label_set: list[str] = []
    json_schema_: dict[str, Any] | None = Field(None, alias="json_schema")


def project_of(request: HttpRequest, slug: str, *, permission: str = "read") -> Project:
    """The project ``slug`` of the token's team (404 otherwise), for routes of later stages."""
    return _team_object(
        Project.objects.select_related("team"), auth_of(request), permission=permission, slug=slug
    )


@router.get("", response=list[ProjectOut], summary="List the team's projects")
@paginate(Page, **PAGE)
def list_projects(request: HttpRequest, name: str = "") -> QuerySet[Project]:
    auth = auth_of(request)
    require_permission(auth, "read")
    projects = Project.objects.filter(team=auth.team)
    if name.strip():
        projects = projects.filter(name__icontains=name.strip())
    return projects


@router.post("", response={201: ProjectOut}, summary="Create a project")
def create_project(request: HttpRequest, payload: ProjectIn) -> Status[Project]:
    auth = auth_of(request)
    require_permission(auth, "write")
    project = services.project_create(
        team=auth.team, user=auth.user, name=payload.name, description=payload.description
    )
    return Status(201, project)


@router.get("/{slug}", response=ProjectOut, summary="A project and its task spec")
def get_project(request: HttpRequest, slug: str) -> Project:
    return project_of(request, slug)


@router.put(
    "/{slug}/task", response=ProjectOut, summary="Set the task spec (checked as on the page)"
)
def put_task(request: HttpRequest, slug: str, payload: TaskSpecIn) -> Project:
    project = project_of(request, slug, permission="write")
    try:
        return services.project_update_task(
            project=project,
            input_fields=services.parse_input_fields(payload.input_fields),
            instruction_template=payload.instruction_template,
            system_prompt=payload.system_prompt,
            output_kind=payload.output_kind,
            label_set=services.parse_label_set(payload.label_set),
            json_schema=payload.json_schema_,
        )
    except TaskSpecError as exc:
        raise field_error(exc) from exc


class InputOut(Schema):
    id: int
    inputs: dict[str, str] = Field(..., alias="data")
    reference_output: str | None
    source_line: int | None
    created_at: datetime


class InputIn(Schema):
    inputs: dict[str, str | int | float | bool | None]
    reference_output: str | None = None


class InputBatchIn(Schema):
    rows: list[InputIn]


class InputBatchOut(Schema):
    received: int
    created: int
    duplicates_in_batch: int
    already_present: int


@router.get("/{slug}/inputs", response=list[InputOut], summary="List a project's inputs")
@paginate(Page, **PAGE)
def list_inputs(request: HttpRequest, slug: str, search: str = "") -> QuerySet[InputRow]:
    return selectors.inputs_for_project(project=project_of(request, slug), search=search)


@router.post(
    "/{slug}/inputs",
    response={201: InputBatchOut},
    summary="Add up to API_MAX_BATCH_ROWS inputs in one all-or-nothing write",
)
def create_inputs(request: HttpRequest, slug: str, payload: InputBatchIn) -> Status[dict[str, int]]:
    project = project_of(request, slug, permission="write")
    limit = settings.API_MAX_BATCH_ROWS
    if len(payload.rows) > limit:
        raise ApiError(
            413,
            f"{len(payload.rows):,} rows in one batch; at most {limit:,} — split it",
            errors=[{"field": "rows", "message": f"at most {limit:,} rows"}],
        )
    if not payload.rows:
        raise ApiError(422, "no rows", errors=[{"field": "rows", "message": "empty"}])
    try:
        counts = services.inputs_create(
            project=project,
            rows=[row.inputs for row in payload.rows],
            references=[row.reference_output for row in payload.rows],
        )
    except services.InputRowsError as exc:
        raise ApiError(422, str(exc), errors=exc.errors) from exc
    return Status(201, counts)
