"""The go/no-go report and the team dashboard, computed from measured figures.

- Quality: the chosen (else the latest finished) evaluation: the distilled student's share of the
  teacher's quality and its agreement with the teacher (jobs.evaluation_services).
- Teacher cost per 1,000 requests: the project's teacher ledger (every completed call, its cost);
  when the teacher's outputs were imported (no metered calls) the user's own figure, said so.
- Student serving cost per 1,000 requests: measured throughput on batches x the hourly price the
  user sets, or a managed per-token price x the average tokens of the teacher's metered calls.
- Fine-tuning cost: measured training time x the training hourly price + the teacher-run cost.
- Break-even: worker.economics (Decimal), for any monthly volume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db.models import Count, Sum

from evaluations.models import CandidateRole, EvalCandidate, Evaluation, EvaluationKind
from evaluations.selectors import CandidateResult, candidate_results, latest_evaluation
from finetunes.models import FineTune
from jobs.models import JobStatus
from projects.models import InputRow, Project
from reports.models import ReportSettings, ServingMode
from teachers.models import LedgerEntry, LedgerStatus, ReviewStatus, TeacherOutput, TeacherRun
from teams.models import Team
from worker import economics
from worker.economics import money

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


# Costs ------------------------------------------------------------------------------------------


@dataclass
class Figure:
    """A money figure with the sentence that says where it came from (None: unknown, and why)."""

    value: Decimal | None
    basis: str

    @property
    def known(self) -> bool:
        return self.value is not None

    @property
    def shown(self) -> str:
        if self.value is None:
            return "—"
        return f"${money(self.value, 4 if abs(self.value) < 1 else 2):,}"


def teacher_ledger(*, project: Project) -> dict[str, Any]:
    """Totals of every metered teacher call of the project (all runs)."""
    entries = LedgerEntry.objects.filter(run__project=project)
    completed = entries.filter(status=LedgerStatus.COMPLETED).aggregate(
        calls=Count("id"),
        cost=Sum("cost_usd"),
        input_tokens=Sum("input_tokens"),
        output_tokens=Sum("output_tokens"),
    )
    total = entries.aggregate(cost=Sum("cost_usd"))["cost"] or Decimal(0)
    models = sorted(
        set(
            TeacherRun.objects.filter(project=project, ledger__isnull=False).values_list(
                "model", flat=True
            )
        )
    )
    return {
        "calls": completed["calls"] or 0,
        "completed_cost": completed["cost"] or Decimal(0),
        "total_cost": total,
        "input_tokens": completed["input_tokens"] or 0,
        "output_tokens": completed["output_tokens"] or 0,
        "models": models,
    }


def teacher_per_1k(settings: ReportSettings, ledger: dict[str, Any]) -> Figure:
    if ledger["calls"]:
        value = economics.teacher_cost_per_1k(ledger["completed_cost"], ledger["calls"])
        return Figure(
            value,
            f"from the teacher ledger: ${money(ledger['completed_cost'], 4)} over "
            f"{ledger['calls']:,} metered calls ({', '.join(ledger['models'])})",
        )
    if settings.teacher_usd_per_1k is not None:
        return Figure(
            Decimal(settings.teacher_usd_per_1k),
            "your figure: the teacher's outputs were imported, so no call was metered",
        )
    return Figure(
        None,
        "no metered teacher calls (the outputs were imported): enter the teacher's cost per "
        "1,000 requests in the report settings",
    )


def student_per_1k(
    settings: ReportSettings, student: CandidateResult | None, ledger: dict[str, Any]
) -> Figure:
    if settings.serving_mode == ServingMode.TOKENS:
        if not ledger["calls"]:
            return Figure(
                None,
                "a per-token price needs the tokens per request, measured on metered teacher "
                "calls; there are none",
            )
        tokens_in = Decimal(ledger["input_tokens"]) / ledger["calls"]
        tokens_out = Decimal(ledger["output_tokens"]) / ledger["calls"]
        value = economics.student_cost_per_1k_from_tokens(
            input_tokens_per_request=tokens_in,
            output_tokens_per_request=tokens_out,
            input_price_per_million=settings.managed_input_usd_per_mtok,
            output_price_per_million=settings.managed_output_usd_per_mtok,
        )
        return Figure(
            value,
            f"managed serving at ${settings.managed_input_usd_per_mtok}/"
            f"${settings.managed_output_usd_per_mtok} per 1M tokens in/out, "
            f"{tokens_in:.0f} in + {tokens_out:.0f} out per request (teacher calls' average)",
        )
    rate = (student.throughput if student else {}).get("examples_per_s")
    if not rate:
        return Figure(None, "no measured throughput for the student yet: run an evaluation")
    value = economics.student_cost_per_1k_from_throughput(
        Decimal(str(rate)), settings.serving_hourly_usd
    )
    return Figure(
        value,
        f"a machine at ${settings.serving_hourly_usd}/hour answering {rate:.1f} requests/s "
        f"(measured on batches: {student.hardware if student else ''})",
    )


def training_hours(candidate: EvalCandidate) -> tuple[Decimal | None, str]:
    """Measured training time of a distilled student (its fine-tuning job)."""
    model = candidate.student_model
    if model is None:
        return None, "the student was not picked from the registry, so its training time is unknown"
    fine_tune = FineTune.objects.filter(result_model=model).first()
    if fine_tune is None or not fine_tune.train_seconds:
        return None, f"no fine-tuning job recorded for {model.name}"
    return (
        Decimal(str(fine_tune.train_seconds)) / economics.SECONDS_PER_HOUR,
        f"fine-tuning job #{fine_tune.job_id}: {fine_tune.train_seconds / 60:.1f} min measured",
    )


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
            f"{hours_basis} x ${settings.training_hourly_usd}/hour, plus "
            f"${money(teacher_cost, 2)} of teacher calls",
        )
    report.break_even = report.break_even_for(int(settings.monthly_volume))
    report.verdict = verdict_for(report)
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
            f"{be.horizon_months} months (monthly savings ${money(be.monthly_savings):,}).",
        )
    return Verdict(
        "go",
        "Go",
        f"{quality} and pays back its distillation cost in month {be.break_even_month} at "
        f"{volume} (saving ${money(be.monthly_savings):,} a month).",
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
            "teacher_monthly": f"${money(be.teacher_monthly):,}",
            "student_monthly": f"${money(be.student_monthly):,}",
            "monthly_savings": f"${money(be.monthly_savings):,}",
            "upfront": f"${money(be.upfront):,}",
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
        return "—" if self.monthly_savings is None else f"${money(self.monthly_savings):,}"


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
