"""/api/v1 go/no-go report as JSON: ``GET /projects/{slug}/report`` → the verdict, the quality
figures with their intervals, the three costs with where each came from, the break-even at the
report's monthly volume (or ``?volume=N``, as the page's calculator), and on a No-go what would
change it. Built by ``reports.selectors.report_for``: the very numbers the report page shows.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest
from ninja import Router, Schema

from evaluations.api import CandidateOut, candidate_figures
from projects.api import project_of
from reports import selectors, services
from reports.costs import Figure
from teams.api_kit import ApiError

router = Router(tags=["reports"])


class VerdictOut(Schema):
    level: str  # go | no_go | pending
    title: str
    sentence: str


class QualityOut(Schema):
    metric_name: str
    sentences: list[str]
    candidates: list[CandidateOut]
    student_candidate_id: int | None
    teacher_candidate_id: int | None


class FigureOut(Schema):
    """A money figure: exact (a decimal string, None when unknown), as shown, and its basis."""

    value: str | None
    shown: str
    basis: str
    caveat: str


class CostsOut(Schema):
    teacher_per_1k: FigureOut
    student_per_1k: FigureOut
    fine_tuning: FigureOut
    training_hours: str | None
    teacher_calls: int
    teacher_cost: str


class LeverOut(Schema):
    key: str
    title: str
    sentences: list[str]


class ReportSettingsOut(Schema):
    evaluation_id: int | None
    serving_mode: str
    serving_hourly_usd: str
    managed_input_usd_per_mtok: str
    managed_output_usd_per_mtok: str
    training_hourly_usd: str
    teacher_usd_per_1k: str | None
    monthly_volume: int
    quality_target_percent: int


class ReportOut(Schema):
    project: str
    evaluation_id: int | None
    verdict: VerdictOut
    quality: QualityOut | None
    costs: CostsOut
    break_even: dict[str, Any]
    break_even_month: int | None
    what_would_change_it: list[LeverOut]
    settings: ReportSettingsOut


def _figure(figure: Figure | None) -> dict[str, Any]:
    if figure is None:
        return {"value": None, "shown": "—", "basis": "", "caveat": ""}
    value = None if figure.value is None else str(figure.value)
    return {"value": value, "shown": figure.shown, "basis": figure.basis, "caveat": figure.caveat}


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def report_json(report: selectors.Report, volume: int) -> dict[str, Any]:
    quality = report.quality
    s = report.settings
    break_even = selectors.break_even_payload(report, volume)
    assert report.verdict is not None
    return {
        "project": report.project.slug,
        "evaluation_id": report.evaluation.pk if report.evaluation else None,
        "verdict": vars(report.verdict),
        "quality": None
        if quality is None
        else {
            "metric_name": quality.metric_name,
            "sentences": quality.sentences,
            "candidates": [candidate_figures(row) for row in quality.rows],
            "student_candidate_id": quality.student.result.candidate.pk
            if quality.student
            else None,
            "teacher_candidate_id": quality.teacher.result.candidate.pk
            if quality.teacher
            else None,
        },
        "costs": {
            "teacher_per_1k": _figure(report.teacher_per_1k),
            "student_per_1k": _figure(report.student_per_1k),
            "fine_tuning": _figure(report.fine_tuning),
            "training_hours": _text(report.training_hours),
            "teacher_calls": int(report.ledger.get("calls") or 0),
            "teacher_cost": str(report.ledger.get("total_cost") or 0),
        },
        "break_even": break_even,
        "break_even_month": break_even.get("break_even_month"),
        "what_would_change_it": [vars(lever) for lever in report.changes],
        "settings": {
            "evaluation_id": s.evaluation_id,
            "serving_mode": s.serving_mode,
            "serving_hourly_usd": str(s.serving_hourly_usd),
            "managed_input_usd_per_mtok": str(s.managed_input_usd_per_mtok),
            "managed_output_usd_per_mtok": str(s.managed_output_usd_per_mtok),
            "training_hourly_usd": str(s.training_hourly_usd),
            "teacher_usd_per_1k": _text(s.teacher_usd_per_1k),
            "monthly_volume": int(s.monthly_volume),
            "quality_target_percent": int(s.quality_target_percent),
        },
    }


@router.get(
    "/projects/{slug}/report",
    response=ReportOut,
    summary="The go/no-go report: verdict, quality, costs, break-even (the report page's numbers)",
)
def get_report(request: HttpRequest, slug: str, volume: int | None = None) -> dict[str, Any]:
    project = project_of(request, slug)
    if volume is not None and not 0 <= volume <= services.MAX_MONTHLY_VOLUME:
        raise ApiError(
            400,
            "the monthly volume must be a whole number of requests, 0 or more",
            errors=[{"field": "volume", "message": "0 or more"}],
        )
    report = selectors.report_for(project=project)
    return report_json(report, int(report.settings.monthly_volume) if volume is None else volume)
