"""The go/no-go report and the team dashboard, computed from measured figures.

- Quality (reports.quality): the chosen (else the latest finished) evaluation: each candidate's
  metric, share of the teacher's quality and agreement with the teacher, each with its own 95 %
  interval, in plain words, with answers side by side.
- Costs (reports.costs): the teacher's and the student's cost per 1,000 requests and the one-off
  cost of distilling, each with where it came from.
- Break-even: worker.economics (Decimal), for any monthly volume.
- On a No-go, what would change it (reports.change), with the numbers behind each lever.
- How much data is enough: the latest finished learning curve (evaluations.learning_curve),
  read against the report's quality target.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db.models import Count

from evaluations import units
from evaluations.learning_curve import CurveView, curve_for
from evaluations.models import CandidateRole, Evaluation, EvaluationKind
from evaluations.selectors import (
    CandidateResult,
    candidate_results,
    latest_evaluation,
    latest_learning_curve,
)
from finetunes.models import FineTune
from gateway.selectors import production_summary
from jobs.models import JobStatus
from projects.models import InputRow, Project
from reports.change import Lever, what_would_change_it
from reports.costs import (
    Figure,
    student_per_1k,
    teacher_ledger,
    teacher_per_1k,
    training_hours,
)
from reports.models import ReportSettings
from reports.quality import Quality, quality_for
from serving.selectors import ServingFigures, serving_figures
from teachers.models import ReviewStatus, TeacherOutput
from teams.models import Team
from worker import economics
from worker.economics import dollars

__all__ = [
    "Figure",
    "Lever",
    "Quality",
    "Report",
    "Verdict",
    "break_even_payload",
    "dashboard_rows",
    "report_by_share_token",
    "report_for",
    "settings_for",
    "student_per_1k",
    "teacher_ledger",
    "teacher_per_1k",
    "training_hours",
]

STAGES = ("inputs", "teacher", "review", "trained", "evaluated")
STAGE_LABELS = {
    "": "New",
    "inputs": "Inputs",
    "teacher": "Teacher",
    "review": "Review",
    "trained": "Trained",
    "evaluated": "Evaluated",
}


def settings_for(*, project: Project) -> ReportSettings:
    """The project's report settings (unsaved defaults until someone changes them)."""
    found = ReportSettings.objects.filter(project=project).select_related("evaluation").first()
    return found or ReportSettings(project=project)


def report_by_share_token(*, token: str) -> Project | None:
    if not token or len(token) < 20:
        return None
    found = ReportSettings.objects.filter(share_token=token).select_related("project__team").first()
    return found.project if found else None


# The report -------------------------------------------------------------------------------------


@dataclass
class Verdict:
    level: str  # go | no_go | pending
    title: str
    sentence: str


@dataclass
class Report:
    project: Project
    settings: ReportSettings
    evaluation: Evaluation | None
    results: list[CandidateResult] = field(default_factory=list)
    teacher: CandidateResult | None = None
    student: CandidateResult | None = None
    ledger: dict[str, Any] = field(default_factory=dict)
    teacher_per_1k: Figure | None = None
    student_per_1k: Figure | None = None
    fine_tuning: Figure | None = None
    training_hours: Decimal | None = None
    break_even: economics.BreakEven | None = None
    verdict: Verdict | None = None
    quality: Quality | None = None
    changes: list[Lever] = field(default_factory=list)
    # The latest finished learning curve, read against this report's quality target.
    curve: CurveView | None = None
    # Latency and throughput as the serving process measured them (its request log).
    serving: ServingFigures | None = None
    # This month's production traffic through the gateway (its request log).
    production: dict[str, Any] | None = None

    @property
    def costs_known(self) -> bool:
        return bool(
            self.teacher_per_1k
            and self.teacher_per_1k.known
            and self.student_per_1k
            and self.student_per_1k.known
            and self.fine_tuning
            and self.fine_tuning.known
        )

    def break_even_for(self, monthly_volume: int) -> economics.BreakEven | None:
        if not self.costs_known:
            return None
        assert self.teacher_per_1k and self.student_per_1k and self.fine_tuning
        return economics.break_even(
            upfront=self.fine_tuning.value or 0,
            teacher_per_1k=self.teacher_per_1k.value or 0,
            student_per_1k=self.student_per_1k.value or 0,
            monthly_volume=monthly_volume,
        )


def _choose_evaluation(project: Project, settings: ReportSettings) -> Evaluation | None:
    chosen = settings.evaluation
    if (
        chosen is not None
        and chosen.project_id == project.pk
        and chosen.kind == EvaluationKind.EVALUATION
        and chosen.job.status == JobStatus.SUCCEEDED
    ):
        return chosen
    return latest_evaluation(project=project)


def report_for(*, project: Project) -> Report:
    settings = settings_for(project=project)
    evaluation = _choose_evaluation(project, settings)
    report = Report(project=project, settings=settings, evaluation=evaluation)
    if evaluation is not None:
        report.results = candidate_results(evaluation=evaluation)
        student_id = (evaluation.summary.get("student") or {}).get("candidate_id")
        for result in report.results:
            if result.candidate.role == CandidateRole.TEACHER and report.teacher is None:
                report.teacher = result
            if result.candidate.pk == student_id:
                report.student = result
        report.quality = quality_for(
            evaluation=evaluation, results=report.results, student=report.student
        )
    curve_evaluation = latest_learning_curve(project=project)
    if curve_evaluation is not None:
        report.curve = curve_for(
            evaluation=curve_evaluation, target_percent=settings.quality_target_percent
        )
    report.serving = serving_figures(project=project)
    report.production = production_summary(project=project)
    report.ledger = teacher_ledger(project=project)
    report.teacher_per_1k = teacher_per_1k(settings, report.ledger)
    report.student_per_1k = student_per_1k(settings, report.student, report.ledger)
    hours, hours_basis = (
        training_hours(report.student.candidate) if report.student else (None, "no student")
    )
    report.training_hours = hours
    teacher_cost = report.ledger["total_cost"]
    if hours is None:
        report.fine_tuning = Figure(None, hours_basis)
    else:
        report.fine_tuning = Figure(
            economics.fine_tuning_cost(
                training_hours=hours,
                hourly_price=settings.training_hourly_usd,
                teacher_run_cost=teacher_cost,
            ),
            f"{hours_basis} x {dollars(settings.training_hourly_usd)}/hour, plus "
            f"{dollars(teacher_cost)} of teacher calls",
        )
    report.break_even = report.break_even_for(int(settings.monthly_volume))
    report.verdict = verdict_for(report)
    report.changes = what_would_change_it(report)
    return report


def verdict_for(report: Report) -> Verdict:
    if report.evaluation is None:
        return Verdict("pending", "Not evaluated yet", "Run an evaluation to see the verdict.")
    student = report.student
    pct = student.percent_of_teacher if student else None
    target = report.settings.quality_target_percent
    if student is None or student.candidate.role != CandidateRole.DISTILLED:
        return Verdict(
            "pending",
            "No distilled student evaluated",
            "The latest evaluation has no distilled student to decide on.",
        )
    if pct is None:
        return Verdict(
            "pending",
            "Not enough evidence",
            "The teacher scored 0 against the reference, so the student's share of its quality "
            "cannot be computed.",
        )
    quality = f"The distilled student reaches {pct:.0f} % of the teacher's quality"
    shown = report.quality.student if report.quality else None
    if shown is not None and shown.percent_of_teacher is not None:
        quality += f" (95 % interval {shown.percent_of_teacher.range_shown})"
    if pct < target:
        return Verdict("no_go", "No-go", f"{quality}; the target is {target} %.")
    be = report.break_even
    if be is None:
        return Verdict(
            "pending",
            "Quality is there; costs are incomplete",
            f"{quality} (target {target} %). "
            + next(
                f.basis[:1].upper() + f.basis[1:] + "."
                for f in (report.teacher_per_1k, report.student_per_1k, report.fine_tuning)
                if f is not None and not f.known
            ),
        )
    volume = f"{be.monthly_volume:,} requests a month"
    if be.break_even_month is None:
        return Verdict(
            "no_go",
            "No-go on cost",
            f"{quality}, but at {volume} it does not pay back its distillation cost within "
            f"{be.horizon_months} months ({units.savings_sentence(be.monthly_savings)}).",
        )
    return Verdict(
        "go",
        "Go",
        f"{quality} and pays back its distillation cost in month {be.break_even_month} at "
        f"{volume} ({units.savings_sentence(be.monthly_savings)}).",
    )


def break_even_payload(report: Report, monthly_volume: int) -> dict[str, Any]:
    """What the calculator shows for one volume (exact strings, display strings, chart series)."""
    be = report.break_even_for(monthly_volume)
    if be is None:
        return {"known": False, "monthly_volume": monthly_volume}
    data = be.to_dict()
    data.update(
        known=True,
        shown={
            "teacher_monthly": dollars(be.teacher_monthly),
            "student_monthly": dollars(be.student_monthly),
            "monthly_savings": units.savings(be.monthly_savings),
            "upfront": dollars(be.upfront),
            "break_even": (
                f"month {be.break_even_month}"
                if be.break_even_month is not None
                else f"not within {be.horizon_months} months"
            ),
        },
        chart={
            "months": [p.month for p in be.series],
            "teacher_only": [float(p.teacher_only) for p in be.series],
            "distil_then_student": [float(p.distil_then_student) for p in be.series],
        },
    )
    return data


# The team dashboard -----------------------------------------------------------------------------


@dataclass
class DashboardRow:
    project: Project
    input_count: int
    stage: str
    stage_label: str
    stages_done: list[tuple[str, bool]]
    verdict: Verdict | None
    monthly_savings: Decimal | None

    @property
    def savings_shown(self) -> str:
        return "—" if self.monthly_savings is None else units.savings(self.monthly_savings)


def project_stages(project: Project) -> dict[str, bool]:
    return {
        "inputs": InputRow.objects.filter(project=project).exists(),
        "teacher": TeacherOutput.objects.filter(project=project).exists(),
        "review": TeacherOutput.objects.filter(project=project)
        .exclude(review_status=ReviewStatus.UNREVIEWED)
        .exists(),
        "trained": FineTune.objects.filter(
            project=project, job__status=JobStatus.SUCCEEDED
        ).exists(),
        "evaluated": Evaluation.objects.filter(
            project=project, kind=EvaluationKind.EVALUATION, job__status=JobStatus.SUCCEEDED
        ).exists(),
    }


def dashboard_rows(*, team: Team) -> list[DashboardRow]:
    rows = []
    projects = team.projects.annotate(input_count=Count("inputs")).order_by("-created_at")
    for project in projects:
        done = project_stages(project)
        stage = next((s for s in reversed(STAGES) if done[s]), "")
        verdict = savings = None
        if done["evaluated"]:
            report = report_for(project=project)
            verdict = report.verdict
            savings = report.break_even.monthly_savings if report.break_even else None
        rows.append(
            DashboardRow(
                project=project,
                input_count=project.input_count,
                stage=stage,
                stage_label=STAGE_LABELS[stage],
                stages_done=[(s, done[s]) for s in STAGES],
                verdict=verdict,
                monthly_savings=savings,
            )
        )
    return rows
