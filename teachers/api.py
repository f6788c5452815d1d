"""/api/v1 teacher runs: estimate, start with a budget cap, progress, pause / resume / cancel.

The settings are checked by the run page's own form (teachers.forms.TeacherRunForm) and the run
is started by the same service, so a run started here is the run the page would start. A start
accepts an ``Idempotency-Key`` header: a retried request answers the first run, starting nothing.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest
from ninja import Field, Router, Schema
from ninja.pagination import paginate
from ninja.responses import Status

from jobs.api import JobOut, job_out
from projects.api import project_of
from projects.models import Project
from teachers import selectors, services
from teachers.forms import LOCAL, TeacherRunForm
from teachers.models import TeacherRun
from teams.api_kit import PAGE, ApiError, Page, auth_of, team_object
from teams.models import ProviderCredential

router = Router(tags=["teacher runs"])


class TeacherRunIn(Schema):
    """A teacher run's settings, as on the "new teacher run" page."""

    credential: str | None = Field(
        None, description="the credential's name or id; omit for a local model"
    )
    model: str = Field("", description="e.g. gpt-4o-mini (the team's price table prices it)")
    local_model_path: str = Field("", description="a local Hugging Face model's directory")
    selection: str = Field("all", pattern="^(all|sample|filter)$")
    sample_size: int | None = Field(None, description="selection=sample: how many inputs")
    seed: int = Field(0, description="selection=sample: same seed, same sample")
    filter_text: str = Field("", description="selection=filter: the text inputs contain")
    temperature: float = 0.0
    max_tokens: int = 256
    samples_per_input: int = 1
    concurrency: int = 8
    budget_usd: Decimal | None = Field(None, description="the run stops before spending more")
    mode: str = Field("live", pattern="^(live|batch)$")


class ProgressOut(Schema):
    status: str
    done: int
    total: int
    percent: int
    calls: int
    cache_hits: int
    failures: int
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal
    eta_s: float | None
    in_flight: int
    stopped_reason: str
    error: str
    cancel_requested: bool
    pause_requested: bool


class TeacherRunOut(Schema):
    id: int
    project: str
    job_id: int
    status: str
    provider: str
    credential: str | None
    model: str
    mode: str
    budget_usd: Decimal | None
    cost_usd: Decimal
    selection: dict[str, Any]
    inputs: int
    estimate: dict[str, Any]
    stopped_reason: str
    created_at: datetime

    @staticmethod
    def resolve_project(obj: TeacherRun) -> str:
        return obj.project.slug

    @staticmethod
    def resolve_status(obj: TeacherRun) -> str:
        return obj.job.status

    @staticmethod
    def resolve_credential(obj: TeacherRun) -> str | None:
        return obj.credential.name if obj.credential else None

    @staticmethod
    def resolve_inputs(obj: TeacherRun) -> int:
        return len(obj.input_ids)


class TeacherRunDetailOut(TeacherRunOut):
    progress: ProgressOut


class StartedOut(Schema):
    run: TeacherRunDetailOut
    job: JobOut


_FORM_FIELDS = {"teacher": "credential", "sample_size": "sample_size", "filter_text": "filter_text"}


def _run_settings(project: Project, payload: TeacherRunIn) -> services.RunSettings:
    """The payload checked by the page's form; its errors answered naming the API's fields."""
    credentials = list(project.team.credentials.all())
    teacher = LOCAL
    if payload.credential is not None:
        chosen = _credential_named(credentials, payload.credential)
        if chosen is None:
            raise ApiError(
                400,
                f"no credential {payload.credential!r} in this team",
                errors=[{"field": "credential", "message": "unknown credential"}],
            )
        teacher = str(chosen.pk)
    data = payload.dict() | {"teacher": teacher}
    data = {k: "" if v is None else str(v) for k, v in data.items()}
    form = TeacherRunForm(data, team=project.team, credentials=credentials)
    if not form.is_valid():
        errors = [
            {"field": _FORM_FIELDS.get(name, None if name == "__all__" else name), "message": m}
            for name, messages in form.errors.items()
            for m in messages
        ]
        raise ApiError(400, "; ".join(str(e["message"]) for e in errors), errors=errors)
    return form.run_settings()


def _credential_named(credentials: list[ProviderCredential], key: str) -> ProviderCredential | None:
    by_name = {c.name: c for c in credentials}
    if key in by_name:
        return by_name[key]
    return next((c for c in credentials if key.isdigit() and c.pk == int(key)), None)


def _run_of(request: HttpRequest, run_id: int, *, permission: str = "read") -> TeacherRun:
    return team_object(
        TeacherRun.objects.select_related("project__team", "job", "credential"),
        auth_of(request),
        team_path="project__team",
        permission=permission,
        pk=run_id,
    )


def _detail(run: TeacherRun) -> TeacherRun:
    run = TeacherRun.objects.select_related("project", "job", "credential").get(pk=run.pk)
    run.progress = selectors.run_progress(run=run)  # type: ignore[attr-defined]
    return run


@router.post(
    "/projects/{slug}/teacher-runs/estimate",
    response=dict[str, Any],
    summary="What a teacher run would cost: calls, tokens and USD (nothing is started)",
)
def estimate_run(request: HttpRequest, slug: str, payload: TeacherRunIn) -> dict[str, Any]:
    project = project_of(request, slug, permission="write")
    return services.teacher_run_estimate(
        project=project, run_settings=_run_settings(project, payload)
    )


@router.post(
    "/projects/{slug}/teacher-runs",
    response={201: StartedOut},
    summary="Start a teacher run (estimated first; stops at budget_usd); returns the run and job",
)
def start_run(request: HttpRequest, slug: str, payload: TeacherRunIn) -> Status[dict[str, Any]]:
    project = project_of(request, slug, permission="write")
    run = services.teacher_run_start(
        project=project, user=auth_of(request).user, run_settings=_run_settings(project, payload)
    )
    return Status(201, {"run": _detail(run), "job": job_out(run.job)})


@router.get(
    "/projects/{slug}/teacher-runs",
    response=list[TeacherRunOut],
    summary="List a project's teacher runs, newest first",
)
@paginate(Page, **PAGE)
def list_runs(request: HttpRequest, slug: str) -> QuerySet[TeacherRun]:
    return selectors.runs_for_project(project=project_of(request, slug)).select_related("project")


@router.get(
    "/teacher-runs/{run_id}",
    response=TeacherRunDetailOut,
    summary="A teacher run with its live progress (done/total, tokens, cost so far, ETA)",
)
def get_run(request: HttpRequest, run_id: int) -> TeacherRun:
    return _detail(_run_of(request, run_id))


def _control(request: HttpRequest, run_id: int, action: str) -> TeacherRun:
    run = _run_of(request, run_id, permission="write")
    control = {
        "pause": services.teacher_run_pause,
        "resume": services.teacher_run_resume,
        "cancel": services.teacher_run_cancel,
    }[action]
    try:
        control(run=run)
    except ValidationError as exc:
        # Not possible in the run's current state (a batch run cannot pause, …).
        raise ApiError(409, " ".join(exc.messages)) from exc
    return _detail(run)


@router.post(
    "/teacher-runs/{run_id}/pause",
    response=TeacherRunDetailOut,
    summary="Pause a live run (calls already sent are still recorded)",
)
def pause_run(request: HttpRequest, run_id: int) -> TeacherRun:
    return _control(request, run_id, "pause")


@router.post(
    "/teacher-runs/{run_id}/resume",
    response=TeacherRunDetailOut,
    summary="Resume a paused or failed run (only the missing answers are requested)",
)
def resume_run(request: HttpRequest, run_id: int) -> TeacherRun:
    return _control(request, run_id, "resume")


@router.post("/teacher-runs/{run_id}/cancel", response=TeacherRunDetailOut, summary="Cancel a run")
def cancel_run(request: HttpRequest, run_id: int) -> TeacherRun:
    return _control(request, run_id, "cancel")
