"""Money for the go/no-go report: pure functions over Decimal, no I/O.

Conventions:
- Every amount is a Decimal in the project's currency; nothing is rounded until display
  (``money()`` rounds to cents, half-up, for showing).
- Month 0 is the day the student ships: teacher-only has spent nothing yet, distil-then-student
  has spent the one-off fine-tuning cost. Month m (m >= 1) adds m months of traffic to both.
- The break-even month is the first month m >= 1 whose cumulative distil-then-student cost is
  <= the cumulative teacher-only cost; None when that does not happen within the horizon.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from typing import Any, Literal

Number = Decimal | int | str | float

SECONDS_PER_HOUR = Decimal(3600)
THOUSAND = Decimal(1000)
MILLION = Decimal(1_000_000)
DEFAULT_HORIZON_MONTHS = 36


def dec(value: Number) -> Decimal:
    """A Decimal from a Decimal, int, str or float (floats go through ``str`` so 0.1 stays 0.1)."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, float):
        return Decimal(str(value))
    return Decimal(value)


def money(value: Decimal, places: int = 2) -> Decimal:
    """Round for display (half-up): ``money(Decimal("1.005")) == Decimal("1.01")``."""
    return value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def _non_negative(name: str, value: Decimal) -> Decimal:
    if value < 0:
        raise ValueError(f"{name} cannot be negative (got {value})")
    return value


def teacher_cost_per_1k(total_cost: Number, requests: int) -> Decimal:
    """Teacher cost per 1,000 requests from the ledger's totals (cost and request count)."""
    if requests <= 0:
        raise ValueError("requests: the ledger has no teacher requests to average over")
    return _non_negative("total_cost", dec(total_cost)) / Decimal(requests) * THOUSAND


def student_cost_per_1k_from_throughput(
    requests_per_second: Number, hourly_price: Number
) -> Decimal:
    """Self-hosted serving: a machine at ``hourly_price`` answering ``requests_per_second``
    (measured on batches) costs hourly_price / (rps * 3600) per request."""
    rps = dec(requests_per_second)
    if rps <= 0:
        raise ValueError("requests_per_second must be positive")
    price = _non_negative("hourly_price", dec(hourly_price))
    return price / (rps * SECONDS_PER_HOUR) * THOUSAND


def student_cost_per_1k_from_tokens(
    *,
    input_tokens_per_request: Number,
    output_tokens_per_request: Number,
    input_price_per_million: Number,
    output_price_per_million: Number,
) -> Decimal:
    """Managed serving priced per token (e.g. a hosted fine-tune), per 1,000 requests."""
    per_request = (
        _non_negative("input_tokens_per_request", dec(input_tokens_per_request))
        * _non_negative("input_price_per_million", dec(input_price_per_million))
        + _non_negative("output_tokens_per_request", dec(output_tokens_per_request))
        * _non_negative("output_price_per_million", dec(output_price_per_million))
    ) / MILLION
    return per_request * THOUSAND


def fine_tuning_cost(
    *, training_hours: Number, hourly_price: Number, teacher_run_cost: Number
) -> Decimal:
    """One-off cost of distilling: measured training time * hourly price + the teacher run."""
    return _non_negative("training_hours", dec(training_hours)) * _non_negative(
        "hourly_price", dec(hourly_price)
    ) + _non_negative("teacher_run_cost", dec(teacher_run_cost))


def monthly_cost(cost_per_1k: Number, monthly_volume: int) -> Decimal:
    """Cost of ``monthly_volume`` requests at a per-1,000 price."""
    if monthly_volume < 0:
        raise ValueError("monthly_volume cannot be negative")
    return dec(cost_per_1k) * Decimal(monthly_volume) / THOUSAND


def monthly_savings(teacher_per_1k: Number, student_per_1k: Number, monthly_volume: int) -> Decimal:
    """Teacher-only minus student cost per month (negative when the student costs more)."""
    return monthly_cost(teacher_per_1k, monthly_volume) - monthly_cost(
        student_per_1k, monthly_volume
    )


@dataclass(frozen=True)
class CostPoint:
    month: int
    teacher_only: Decimal
    distil_then_student: Decimal


def cumulative_costs(
    *,
    upfront: Number,
    teacher_per_1k: Number,
    student_per_1k: Number,
    monthly_volume: int,
    months: int = DEFAULT_HORIZON_MONTHS,
) -> list[CostPoint]:
    """Cumulative cost at months 0..months for both plans (the chart's two lines)."""
    if months < 0:
        raise ValueError("months cannot be negative")
    up = _non_negative("upfront", dec(upfront))
    teacher_month = monthly_cost(teacher_per_1k, monthly_volume)
    student_month = monthly_cost(student_per_1k, monthly_volume)
    return [
        CostPoint(
            month=m,
            teacher_only=teacher_month * m,
            distil_then_student=up + student_month * m,
        )
        for m in range(months + 1)
    ]


def break_even_month(
    *,
    upfront: Number,
    teacher_per_1k: Number,
    student_per_1k: Number,
    monthly_volume: int,
    horizon_months: int = DEFAULT_HORIZON_MONTHS,
) -> int | None:
    """First month m in 1..horizon with upfront + m * student <= m * teacher, else None.

    Computed in closed form (m = ceil(upfront / monthly savings)) so any horizon is cheap.
    """
    up = _non_negative("upfront", dec(upfront))
    savings = monthly_savings(teacher_per_1k, student_per_1k, monthly_volume)
    if up == 0 and savings >= 0:
        return 1 if horizon_months >= 1 else None
    if savings <= 0:
        return None
    month = max(int((up / savings).to_integral_value(rounding=ROUND_CEILING)), 1)
    # The division may round in its last digit: settle on the exact inequality.
    while month > 1 and up <= savings * (month - 1):
        month -= 1
    while up > savings * month:
        month += 1
    return month if month <= horizon_months else None


@dataclass(frozen=True)
class BreakEven:
    """Everything the break-even calculator shows for one monthly volume."""

    monthly_volume: int
    upfront: Decimal
    teacher_per_1k: Decimal
    student_per_1k: Decimal
    teacher_monthly: Decimal
    student_monthly: Decimal
    monthly_savings: Decimal
    break_even_month: int | None
    horizon_months: int
    series: list[CostPoint]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: Decimals as strings (exact), ints and None as they are."""
        return {
            "monthly_volume": self.monthly_volume,
            "upfront": str(self.upfront),
            "teacher_per_1k": str(self.teacher_per_1k),
            "student_per_1k": str(self.student_per_1k),
            "teacher_monthly": str(self.teacher_monthly),
            "student_monthly": str(self.student_monthly),
            "monthly_savings": str(self.monthly_savings),
            "break_even_month": self.break_even_month,
            "horizon_months": self.horizon_months,
            "series": [
                {
                    "month": p.month,
                    "teacher_only": str(p.teacher_only),
                    "distil_then_student": str(p.distil_then_student),
                }
                for p in self.series
            ],
        }


def break_even(
    *,
    upfront: Number,
    teacher_per_1k: Number,
    student_per_1k: Number,
    monthly_volume: int,
    horizon_months: int = DEFAULT_HORIZON_MONTHS,
) -> BreakEven:
    """Monthly costs, savings, break-even month and the cumulative series, in one result."""
    t1k, s1k, up = dec(teacher_per_1k), dec(student_per_1k), dec(upfront)
    return BreakEven(
        monthly_volume=monthly_volume,
        upfront=up,
        teacher_per_1k=t1k,
        student_per_1k=s1k,
        teacher_monthly=monthly_cost(t1k, monthly_volume),
        student_monthly=monthly_cost(s1k, monthly_volume),
        monthly_savings=monthly_savings(t1k, s1k, monthly_volume),
        break_even_month=break_even_month(
            upfront=up,
            teacher_per_1k=t1k,
            student_per_1k=s1k,
            monthly_volume=monthly_volume,
            horizon_months=horizon_months,
        ),
        horizon_months=horizon_months,
        series=cumulative_costs(
            upfront=up,
            teacher_per_1k=t1k,
            student_per_1k=s1k,
            monthly_volume=monthly_volume,
            months=horizon_months,
        ),
    )


MINUS = "\u2212"
"""The minus sign a reader sees in front of a negative amount ("\u2212$452.80", never "$-452.80")."""


def dollars(value: Number, places: int = 2) -> str:
    """An amount for reading: "$1,234.50", "\u2212$452.80" (rounded half-up to ``places``)."""
    rounded = money(dec(value), places)
    sign = MINUS if rounded < 0 else ""
    return f"{sign}${abs(rounded):,}"


def max_student_per_1k(
    *,
    upfront: Number,
    teacher_per_1k: Number,
    monthly_volume: int,
    horizon_months: int = DEFAULT_HORIZON_MONTHS,
) -> Decimal | None:
    """The highest student cost per 1,000 requests that still pays back ``upfront`` within the
    horizon: upfront <= horizon * (teacher - student) * volume / 1000, solved for the student.
    None when nothing pays back (no traffic, or the upfront alone outruns the teacher's bill)."""
    if monthly_volume <= 0 or horizon_months <= 0:
        return None
    up = _non_negative("upfront", dec(upfront))
    limit = dec(teacher_per_1k) - up * THOUSAND / (Decimal(horizon_months) * monthly_volume)
    return limit if limit >= 0 else None


def throughput_for_cost(hourly_price: Number, cost_per_1k: Number) -> Decimal | None:
    """Requests per second a machine at ``hourly_price`` must answer to cost ``cost_per_1k``
    (the inverse of ``student_cost_per_1k_from_throughput``); None for a cost of 0 or less."""
    cost = dec(cost_per_1k)
    if cost <= 0:
        return None
    return _non_negative("hourly_price", dec(hourly_price)) * THOUSAND / (cost * SECONDS_PER_HOUR)


def volume_to_break_even(
    *,
    upfront: Number,
    teacher_per_1k: Number,
    student_per_1k: Number,
    horizon_months: int = DEFAULT_HORIZON_MONTHS,
) -> int | None:
    """The smallest monthly volume whose savings pay back ``upfront`` within the horizon; None
    when the student costs as much as the teacher or more per request (no volume helps)."""
    per_1k = dec(teacher_per_1k) - dec(student_per_1k)
    up = _non_negative("upfront", dec(upfront))
    if per_1k <= 0 or horizon_months <= 0:
        return None
    volume = max(
        int((up * THOUSAND / (per_1k * horizon_months)).to_integral_value(ROUND_CEILING)), 0
    )
    while (
        volume > 0
        and break_even_month(
            upfront=up,
            teacher_per_1k=teacher_per_1k,
            student_per_1k=student_per_1k,
            monthly_volume=volume - 1,
            horizon_months=horizon_months,
        )
        is not None
    ):
        volume -= 1
    while (
        break_even_month(
            upfront=up,
            teacher_per_1k=teacher_per_1k,
            student_per_1k=student_per_1k,
            monthly_volume=volume,
            horizon_months=horizon_months,
        )
        is None
    ):
        volume += 1
    return volume


# ---------------------------------------------------------------------------------------------
# The weekend experiment's verdict

CLOSE_GAP_AT = 0.75
"""Agreement at or above this: the untuned student already does most of the task; a fine-tune
on teacher outputs usually closes the rest."""
LARGE_GAP_BELOW = 0.40
"""Agreement below this: a large gap. Distillation can still work (untuned models often fail on
format, which fine-tuning fixes first), but it needs many reviewed examples and may need a
larger student."""
MIN_INPUTS = 30
"""Below this many inputs the interval is too wide to call the gap either way."""

VerdictLevel = Literal["close", "moderate", "large", "too_few"]


@dataclass(frozen=True)
class Verdict:
    level: VerdictLevel
    agree: int
    n: int
    sentence: str


def weekend_verdict(agree: int, n: int) -> Verdict:
    """Plain-language verdict on teacher vs untuned student agreement (k of n inputs).

    Thresholds: >= 75 % "close", 40-75 % "moderate", < 40 % "large"; fewer than 30 inputs
    "too_few" whatever the rate.
    """
    if n < 0 or agree < 0 or agree > n:
        raise ValueError(f"need 0 <= agree <= n, got agree={agree}, n={n}")
    if n < MIN_INPUTS:
        return Verdict(
            "too_few",
            agree,
            n,
            f"The small model agrees with the teacher on {agree} of {n} inputs; that is too few "
            f"inputs to judge the gap (use at least {MIN_INPUTS}).",
        )
    rate = agree / n
    if rate >= CLOSE_GAP_AT:
        return Verdict(
            "close",
            agree,
            n,
            f"The small model already agrees with the teacher on {agree} of {n} inputs, "
            "so distillation is likely to close the gap.",
        )
    if rate >= LARGE_GAP_BELOW:
        return Verdict(
            "moderate",
            agree,
            n,
            f"The small model agrees with the teacher on {agree} of {n} inputs: a moderate gap. "
            "Distillation usually closes much of it; the evaluation on held-out inputs will tell.",
        )
    return Verdict(
        "large",
        agree,
        n,
        f"Large gap: the small model agrees with the teacher on only {agree} of {n} inputs. "
        "Distillation needs many reviewed teacher examples here, and a larger student may be "
        "needed.",
    )


__all__ = [
    "CLOSE_GAP_AT",
    "DEFAULT_HORIZON_MONTHS",
    "LARGE_GAP_BELOW",
    "MINUS",
    "MIN_INPUTS",
    "BreakEven",
    "CostPoint",
    "Verdict",
    "break_even",
    "break_even_month",
    "cumulative_costs",
    "dec",
    "dollars",
    "fine_tuning_cost",
    "max_student_per_1k",
    "money",
    "monthly_cost",
    "monthly_savings",
    "student_cost_per_1k_from_throughput",
    "student_cost_per_1k_from_tokens",
    "teacher_cost_per_1k",
    "throughput_for_cost",
    "volume_to_break_even",
    "weekend_verdict",
]
