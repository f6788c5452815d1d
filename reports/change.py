"""On a No-go, what would change it, with the stored numbers behind each lever:

- more reviewed data: the gap to the quality target (and whether the interval can reach it), what
  the student was trained on, and what is waiting for review;
- a bigger student: the serving cost per 1,000 requests it may reach and still pay back;
- serving hardware: the throughput a machine must reach to pay back, at the serving price and at
  the training machine's (GPU) price, and the break-even where the student was measured on a GPU;
- more traffic: the monthly volume from which today's costs pay back.

Every figure is recomputed from stored rows: the evaluation's metrics and outputs, the fine-tune,
the teacher outputs, the ledger and the report settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING

from evaluations import units
from evaluations.models import CandidateRole, EvalCandidate, EvaluationKind
from finetunes.models import FineTune
from jobs.models import JobStatus
from projects.models import InputRow
from teachers.models import ReviewStatus, TeacherOutput
from worker import economics
from worker.economics import dollars

if TYPE_CHECKING:
    from reports.selectors import Report


@dataclass
class Lever:
    key: str  # data | student | hardware | traffic
    title: str
    sentences: list[str] = field(default_factory=list)


def _rps(value: Decimal | None) -> str:
    return units.throughput(float(value)) if value is not None else "—"


def _more_data(report: Report) -> Lever:
    lever = Lever("data", "More reviewed data")
    target = report.settings.quality_target_percent
    row = report.quality.student if report.quality else None
    pct = row.percent_of_teacher if row else None
    if pct is not None:
        gap = target - pct.value
        if gap > 0:
            lever.sentences.append(
                f"The student reaches {pct.shown} of the teacher's quality; the target is "
                f"{target} %: {gap:.0f} points short."
            )
            lever.sentences.append(
                f"Even the top of the interval ({pct.high:.0f} %) is below the target, so the "
                "gap is not noise."
                if pct.high < target
                else f"The interval reaches the target ({pct.high:.0f} %): a larger test split "
                "would tell whether the gap is real."
            )
        else:
            lever.sentences.append(
                f"Quality already meets the target: {pct.shown} of the teacher's, target "
                f"{target} %."
            )
    if report.curve is not None and report.curve.fitted:
        # The learning curve's forecast, against this report's target (its last sentence).
        lever.sentences.append(f"Learning curve: {report.curve.sentences[-1]}")
    fine_tune = _fine_tune(report)
    if fine_tune is not None:
        lever.sentences.append(
            f"The student was trained on {fine_tune.n_train:,} reviewed examples (dataset "
            f"version {fine_tune.dataset_version.name})."
        )
    project = report.project
    waiting = TeacherOutput.objects.filter(
        project=project, review_status=ReviewStatus.UNREVIEWED
    ).count()
    unanswered = InputRow.objects.filter(project=project, teacher_outputs__isnull=True).count()
    lever.sentences.append(
        f"{waiting:,} teacher outputs are waiting for review and {unanswered:,} inputs have no "
        "teacher answer yet: reviewed, they are more examples to train on."
    )
    return lever


def _fine_tune(report: Report) -> FineTune | None:
    model = report.student.candidate.student_model if report.student else None
    if model is None:
        return None
    return FineTune.objects.filter(result_model=model).select_related("dataset_version").first()


def _headroom(report: Report) -> Decimal | None:
    """The highest student cost per 1,000 that still pays back within the horizon."""
    if not report.costs_known or report.break_even is None:
        return None
    be = report.break_even
    return economics.max_student_per_1k(
        upfront=be.upfront,
        teacher_per_1k=be.teacher_per_1k,
        monthly_volume=be.monthly_volume,
        horizon_months=be.horizon_months,
    )


def _bigger_student(report: Report, headroom: Decimal | None) -> Lever:
    lever = Lever("student", "A bigger student")
    fine_tune = _fine_tune(report)
    if fine_tune is not None:
        lever.sentences.append(f"Today's student is fine-tuned from {fine_tune.base_model_name}.")
    base = next((r for r in report.results if r.candidate.role == CandidateRole.BASE), None)
    student = report.student
    if base and student and base.percent_of_teacher is not None and student.percent_of_teacher:
        lever.sentences.append(
            f"Fine-tuning took it from {base.percent_of_teacher:.0f} % (untuned) to "
            f"{student.percent_of_teacher:.0f} % of the teacher's quality."
        )
    be = report.break_even
    if be is None:
        lever.sentences.append("Its serving cost is unknown until all three costs are.")
    elif headroom is None:
        lever.sentences.append(
            f"At {be.monthly_volume:,} requests a month no student pays back the one-off "
            f"{dollars(be.upfront)} within {be.horizon_months} months."
        )
    else:
        times = (
            f" ({headroom / be.student_per_1k:.1f}{units.TIMES} today's)"
            if be.student_per_1k
            else ""
        )
        lever.sentences.append(
            f"A bigger (slower) student still pays back within {be.horizon_months} months at "
            f"{be.monthly_volume:,} requests a month if it costs at most {dollars(headroom, 4)} per "
            f"1,000 requests{times}; today's costs {dollars(be.student_per_1k, 4)}."
        )
    return lever


def _gpu_measurement(report: Report) -> EvalCandidate | None:
    """This student measured on a GPU in one of the project's finished evaluations."""
    model = report.student.candidate.student_model if report.student else None
    if model is None:
        return None
    for candidate in EvalCandidate.objects.filter(
        student_model=model,
        evaluation__project=report.project,
        evaluation__kind=EvaluationKind.EVALUATION,
        evaluation__job__status=JobStatus.SUCCEEDED,
    ).order_by("-evaluation__created_at"):
        performance = candidate.performance or {}
        hardware = performance.get("hardware") or {}
        if hardware.get("device") == "cuda" and (performance.get("throughput") or {}).get(
            "examples_per_s"
        ):
            return candidate
    return None


def _serving_hardware(report: Report, headroom: Decimal | None) -> Lever:
    lever = Lever("hardware", "Serving hardware")
    settings, student = report.settings, report.student
    rate = (student.throughput if student else {}).get("examples_per_s")
    if rate and student is not None:
        lever.sentences.append(
            f"The student answered {units.throughput(rate)} on "
            f"{student.hardware or 'the evaluation machine'}."
        )
    if headroom is not None and headroom > 0:
        serving = Decimal(settings.serving_hourly_usd)
        gpu = Decimal(settings.training_hourly_usd)
        lever.sentences.append(
            f"To pay back within {report.break_even.horizon_months if report.break_even else ''} "
            f"months, a serving machine at {dollars(serving)}/hour must answer at least "
            f"{_rps(economics.throughput_for_cost(serving, headroom))}; at the training "
            f"machine's GPU price of {dollars(gpu)}/hour, at least "
            f"{_rps(economics.throughput_for_cost(gpu, headroom))}."
        )
    lever.sentences.extend(_gpu_sentences(report))
    return lever


def _gpu_sentences(report: Report) -> list[str]:
    measured = _gpu_measurement(report)
    if measured is None:
        return ["The student has not been evaluated on a GPU yet: an evaluation there measures it."]
    rate = Decimal(str(measured.performance["throughput"]["examples_per_s"]))
    price = Decimal(report.settings.training_hourly_usd)
    per_1k = economics.student_cost_per_1k_from_throughput(rate, price)
    said = (
        f"On {measured.performance['hardware'].get('description') or 'a GPU'} "
        f"({measured.evaluation}) it answered {units.throughput(float(rate))}: at "
        f"{dollars(price)}/hour that is {dollars(per_1k, 4)} per 1,000 requests"
    )
    be = report.break_even
    if be is not None:
        month = economics.break_even_month(
            upfront=be.upfront,
            teacher_per_1k=be.teacher_per_1k,
            student_per_1k=per_1k,
            monthly_volume=be.monthly_volume,
            horizon_months=be.horizon_months,
        )
        said += (
            f", paying back in month {month}"
            if month is not None
            else f", not paying back within {be.horizon_months} months"
        )
    return [said + "."]


def _traffic(report: Report) -> Lever | None:
    be = report.break_even
    if be is None:
        return None
    volume = economics.volume_to_break_even(
        upfront=be.upfront,
        teacher_per_1k=be.teacher_per_1k,
        student_per_1k=be.student_per_1k,
        horizon_months=be.horizon_months,
    )
    if volume is None:
        sentence = (
            "The student costs as much as the teacher per request or more, so no volume pays "
            "it back."
        )
    else:
        sentence = (
            f"At today's costs it pays back within {be.horizon_months} months from {volume:,} "
            f"requests a month (today: {be.monthly_volume:,})."
        )
    return Lever("traffic", "More traffic", [sentence])


def what_would_change_it(report: Report) -> list[Lever]:
    """The levers of a No-go, each with its numbers; empty unless the verdict is No-go."""
    if report.verdict is None or report.verdict.level != "no_go":
        return []
    headroom = _headroom(report)
    levers = [
        _more_data(report),
        _bigger_student(report, headroom),
        _serving_hardware(report, headroom),
    ]
    traffic = _traffic(report)
    return levers + ([traffic] if traffic else [])
