"""/api/v1 evaluations: start one (the evaluation form's choices, checked by that form and the
same service), list/detail with each candidate's figures and their 95 % intervals exactly as the
evaluation page computes them (evaluations.figures), and the per-example results (cursor pages).

Routes: ``GET|POST /projects/{slug}/evaluations``; ``GET /evaluations/{evaluation_id}``;
``GET /evaluations/{evaluation_id}/examples``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db.models import QuerySet
from django.http import HttpRequest
from ninja import Router, Schema
from ninja.pagination import paginate
from ninja.responses import Status

from evaluations import selectors
from evaluations.figures import QualityRow, figures_for
from evaluations.forms import EvaluationForm
from evaluations.intervals import Interval
from evaluations.models import EvalExample, Evaluation
from jobs.services import job_live_view
from projects.api import project_of
from teams.api_forms import checked, form_data
from teams.api_kit import Page, auth_of, team_object

router = Router(tags=["evaluations"])


def evaluation_of(request: HttpRequest, evaluation_id: int) -> Evaluation:
    evaluation = team_object(
        Evaluation.objects.select_related("project__team", "job", "dataset_version"),
        auth_of(request),
        team_path="project__team",
        pk=evaluation_id,
    )
    job_live_view(evaluation.job)
    return evaluation


class IntervalOut(Schema):
    """A figure with its own 95 % interval, and the words the page shows for it."""

    value: float
    low: float
    high: float
    n: int
    how: str
    scale: str
    value_shown: str
    range_shown: str
    shown: str


def _interval(found: Interval | None) -> dict[str, Any] | None:
    if found is None:
        return None
    return {
        "value": found.value,
        "low": found.low,
        "high": found.high,
        "n": found.n,
        "how": found.how,
        "scale": found.scale,
        "value_shown": found.value_shown,
        "range_shown": found.range_shown,
        "shown": found.shown,
    }


class CandidateOut(Schema):
    id: int
    name: str
    role: str
    source: str
    status: str
    error: str
    student_id: int | None
    metric_name: str
    headline: float | None
    metric: IntervalOut | None
    percent_of_teacher: IntervalOut | None
    agreement: IntervalOut | None
    agree: int | None
    extra: dict[str, str]
    latency: dict[str, Any]
    latency_shown: str
    throughput: dict[str, Any]
    throughput_shown: str
    hardware: str
    answered: int
    missing: int


def candidate_figures(row: QualityRow) -> dict[str, Any]:
    r = row.result
    c = r.candidate
    return {
        "id": c.pk,
        "name": c.name,
        "role": c.role,
        "source": c.source,
        "status": c.status,
        "error": c.error,
        "student_id": c.student_model_id,
        "metric_name": r.metric_name,
        "headline": r.headline,
        "metric": _interval(row.metric),
        "percent_of_teacher": _interval(row.percent_of_teacher),
        "agreement": _interval(row.agreement),
        "agree": (r.agreement or {}).get("agree"),
        "extra": dict(r.extra),
        "latency": r.latency,
        "latency_shown": row.latency,
        "throughput": r.throughput,
        "throughput_shown": row.throughput,
        "hardware": r.hardware,
        "answered": r.answered,
        "missing": r.missing,
    }


class EvaluationOut(Schema):
    id: int
    project: str
    kind: str
    name: str
    dataset_version_id: int | None
    split: str
    options: dict[str, Any]
    job_id: int
    status: str
    progress_done: int
    progress_total: int
    error: str
    created_at: datetime

    @staticmethod
    def resolve_project(obj: Evaluation) -> str:
        return obj.project.slug

    @staticmethod
    def resolve_status(obj: Evaluation) -> str:
        return obj.job.status

    @staticmethod
    def resolve_progress_done(obj: Evaluation) -> int:
        return obj.job.progress_done

    @staticmethod
    def resolve_progress_total(obj: Evaluation) -> int:
        return obj.job.progress_total

    @staticmethod
    def resolve_error(obj: Evaluation) -> str:
        return obj.job.error


class EvaluationDetailOut(EvaluationOut):
    summary: dict[str, Any]
    candidates: list[CandidateOut]

    @staticmethod
    def resolve_candidates(obj: Evaluation) -> list[dict[str, Any]]:
        results = selectors.candidate_results(evaluation=obj)
        return [candidate_figures(row) for row in figures_for(evaluation=obj, results=results)]


class EvaluationIn(Schema):
    """The evaluation form's fields (ids for the choices); one left out takes its default."""

    dataset_version: int
    teacher_source: str | None = None
    teacher_run: int | None = None
    teacher_credential: int | None = None
    teacher_model: str | None = None
    base_model: int | None = None
    distilled: list[int] | None = None
    endpoint_credential: int | None = None
    endpoint_model: str | None = None
    max_new_tokens: int | None = None
    batch_size: int | None = None
    latency_requests: int | None = None
    name: str | None = None


class AnswerOut(Schema):
    candidate_id: int
    raw_text: str
    canonical: str | None
    parse_error: str
    missing: bool
    score: float | None
    correct: bool | None
    agrees_with_teacher: bool | None
    latency_ms: float | None


class ExampleOut(Schema):
    id: int
    position: int
    input_row_id: int | None
    dataset_item_id: int | None
    inputs: dict[str, Any]
    reference: str | None
    reference_source: str
    answers: list[AnswerOut]

    @staticmethod
    def resolve_answers(obj: EvalExample) -> list[Any]:
        return list(obj.outputs.all())


@router.get(
    "/projects/{slug}/evaluations",
    response=list[EvaluationOut],
    summary="List a project's evaluations (kind: evaluation or experiment)",
)
@paginate(Page, ordering=("-created_at", "-id"), page_size=50, max_page_size=500)
def list_evaluations(request: HttpRequest, slug: str, kind: str = "") -> QuerySet[Evaluation]:
    return selectors.evaluations_for_project(
        project=project_of(request, slug), kind=kind or None
    ).select_related("project")


@router.post(
    "/projects/{slug}/evaluations",
    response={201: EvaluationDetailOut},
    summary="Start an evaluation of a version's test split (the evaluation form's choices)",
)
def start_evaluation(request: HttpRequest, slug: str, payload: EvaluationIn) -> Status[Evaluation]:
    project = project_of(request, slug, permission="write")
    form = checked(EvaluationForm(form_data(EvaluationForm, payload), project=project))
    assert isinstance(form, EvaluationForm)
    evaluation = form.start(project=project, user=auth_of(request).user)
    return Status(201, evaluation_of(request, evaluation.pk))


@router.get(
    "/evaluations/{evaluation_id}",
    response=EvaluationDetailOut,
    summary="An evaluation: status and each candidate's figures with their 95 % intervals",
)
def get_evaluation(request: HttpRequest, evaluation_id: int) -> Evaluation:
    return evaluation_of(request, evaluation_id)


@router.get(
    "/evaluations/{evaluation_id}/examples",
    response=list[ExampleOut],
    summary="Per-example results in test order: the input, the reference, every answer",
)
@paginate(Page, ordering=("position",), page_size=50, max_page_size=500)
def list_examples(request: HttpRequest, evaluation_id: int) -> QuerySet[EvalExample]:
    evaluation = evaluation_of(request, evaluation_id)
    return selectors.examples_of(evaluation=evaluation)


__all__ = ["CandidateOut", "IntervalOut", "candidate_figures", "router"]
