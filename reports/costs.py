"""The report's costs, each a figure with the sentence that says where it came from.

- Teacher cost per 1,000 requests: the project's teacher ledger (every completed call, its cost);
  when the teacher's outputs were imported (no metered calls) the user's own figure, said so.
- Student serving cost per 1,000 requests: measured throughput on batches x the hourly price the
  user sets (with a caveat when the throughput was measured on a CPU worker), or a managed
  per-token price x the average tokens of the teacher's metered calls.
- Fine-tuning cost: measured training time x the training hourly price + the teacher-run cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db.models import Count, Sum

from evaluations import units
from evaluations.models import EvalCandidate
from evaluations.selectors import CandidateResult
from finetunes.models import FineTune
from projects.models import Project
from reports.models import ReportSettings, ServingMode
from teachers.models import LedgerEntry, LedgerStatus, TeacherRun
from worker import economics
from worker.economics import dollars


@dataclass
class Figure:
    """A money figure with the sentence that says where it came from (None: unknown, and why)."""

    value: Decimal | None
    basis: str
    caveat: str = ""  # what the figure does not say (e.g. measured on a CPU worker)

    @property
    def known(self) -> bool:
        return self.value is not None

    @property
    def shown(self) -> str:
        if self.value is None:
            return "—"
        return dollars(self.value, 4 if abs(self.value) < 1 else 2)


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
            f"from the teacher ledger: {dollars(ledger['completed_cost'], 4)} over "
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
    if not rate or student is None:
        return Figure(None, "no measured throughput for the student yet: run an evaluation")
    value = economics.student_cost_per_1k_from_throughput(
        Decimal(str(rate)), settings.serving_hourly_usd
    )
    return Figure(
        value,
        f"a machine at {dollars(settings.serving_hourly_usd)}/hour answering "
        f"{units.throughput(rate)} (measured on batches: {student.hardware or 'hardware not recorded'})",
        caveat=cpu_caveat(settings, student),
    )


def _default_serving_price() -> Decimal:
    return Decimal(str(ReportSettings._meta.get_field("serving_hourly_usd").default))


def cpu_caveat(settings: ReportSettings, student: CandidateResult) -> str:
    """Said under the student's cost when its throughput was measured on a CPU worker: that
    figure prices the evaluation machine, not a serving machine."""
    hardware = (student.candidate.performance or {}).get("hardware") or {}
    if hardware.get("device") != "cpu":
        return ""
    price = Decimal(settings.serving_hourly_usd)
    default = " (the default price, not one you set)" if price == _default_serving_price() else ""
    return (
        f"Measured on a CPU worker ({student.hardware or hardware.get('name', 'CPU')}) and priced "
        f"at {dollars(price)}/hour{default}. This is the evaluation machine, not a serving "
        "machine: serving hardware (a GPU, or a CPU with more cores to itself) answers at a "
        "different rate and price, which changes this cost. Set the serving machine's hourly "
        "price below, and evaluate on the hardware you would serve from."
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
