"""Break-even arithmetic on fixed inputs, every expected value worked out by hand."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from worker.economics import (
    break_even,
    break_even_month,
    cumulative_costs,
    fine_tuning_cost,
    money,
    monthly_cost,
    monthly_savings,
    student_cost_per_1k_from_throughput,
    student_cost_per_1k_from_tokens,
    teacher_cost_per_1k,
    weekend_verdict,
)

D = Decimal


def test_teacher_cost_per_1k_from_the_ledger():
    # $12.50 spent on 2,500 requests -> $0.005 a request -> $5.00 per 1,000
    assert teacher_cost_per_1k("12.50", 2500) == D("5")
    with pytest.raises(ValueError, match="no teacher requests"):
        teacher_cost_per_1k("1", 0)


def test_student_cost_from_measured_throughput():
    # 10 requests/s on a $1.80/hour machine: 36,000 requests an hour -> $0.00005 each -> $0.05/1k
    assert student_cost_per_1k_from_throughput(10, "1.80") == D("0.05")
    # floats go through str, so 0.1 stays 0.1: 2.5 req/s at $0.10/h -> 9,000/h -> $0.0111.../1k
    assert money(student_cost_per_1k_from_throughput(2.5, 0.1), 4) == D("0.0111")
    with pytest.raises(ValueError, match="positive"):
        student_cost_per_1k_from_throughput(0, 1)


def test_student_cost_from_per_token_prices():
    # 500 input tokens at $0.30/M + 20 output at $1.20/M = 150e-6 + 24e-6 = $0.000174 -> $0.174/1k
    assert student_cost_per_1k_from_tokens(
        input_tokens_per_request=500,
        output_tokens_per_request=20,
        input_price_per_million="0.30",
        output_price_per_million="1.20",
    ) == D("0.174")


def test_fine_tuning_cost():
    # 2.5 h x $2.40 = $6.00, plus the $44 teacher run
    assert fine_tuning_cost(training_hours="2.5", hourly_price="2.40", teacher_run_cost=44) == D(
        "50"
    )
    with pytest.raises(ValueError, match="training_hours"):
        fine_tuning_cost(training_hours=-1, hourly_price=1, teacher_run_cost=0)


def test_monthly_cost_and_savings():
    # 300,000 requests: teacher 300 x $5 = $1,500; student 300 x $0.05 = $15; saves $1,485
    assert monthly_cost("5", 300_000) == D("1500")
    assert monthly_cost("0.05", 300_000) == D("15")
    assert monthly_savings("5", "0.05", 300_000) == D("1485")
    assert monthly_savings("0.05", "5", 1000) == D("-4.95")


def test_break_even_month_by_hand():
    common = {"teacher_per_1k": "5", "student_per_1k": "0.05", "monthly_volume": 300_000}
    # upfront $3,000: month 2 -> 3,000 + 30 = 3,030 > 3,000; month 3 -> 3,045 <= 4,500
    assert break_even_month(upfront=3000, **common) == 3
    # upfront $2,970 = exactly 2 months of savings: month 2 -> 3,000 <= 3,000 (equality counts)
    assert break_even_month(upfront=2970, **common) == 2
    assert break_even_month(upfront="2970.01", **common) == 3
    # a cheap fine-tune pays for itself in the first month
    assert break_even_month(upfront=50, **common) == 1
    assert break_even_month(upfront=0, **common) == 1


def test_break_even_never():
    # the student costs more than the teacher: never
    assert (
        break_even_month(upfront=10, teacher_per_1k="1", student_per_1k="2", monthly_volume=1000)
        is None
    )
    # equal running costs and a fine-tune to pay for: never
    assert (
        break_even_month(upfront=10, teacher_per_1k="1", student_per_1k="1", monthly_volume=1000)
        is None
    )
    # saves $1/month, costs $100: month 100, beyond the 36-month horizon...
    args = {"upfront": 100, "teacher_per_1k": "2", "student_per_1k": "1", "monthly_volume": 1000}
    assert break_even_month(**args) is None
    # ...but inside a 120-month one
    assert break_even_month(**args, horizon_months=120) == 100
    # no traffic at all: nothing to save
    assert (
        break_even_month(upfront=5, teacher_per_1k="5", student_per_1k="0", monthly_volume=0)
        is None
    )


def test_break_even_agrees_with_the_series_for_awkward_numbers():
    # thirds do not terminate in decimal: the closed form must still match month by month
    for upfront in ("1", "100", "333.33", "1000"):
        args = {
            "upfront": upfront,
            "teacher_per_1k": D(10) / 3,
            "student_per_1k": D(1) / 3,
            "monthly_volume": 1000,
        }
        series = cumulative_costs(**args, months=400)
        first = next((p.month for p in series[1:] if p.distil_then_student <= p.teacher_only), None)
        assert break_even_month(**args, horizon_months=400) == first


def test_cumulative_series_by_hand():
    series = cumulative_costs(
        upfront=3000, teacher_per_1k="5", student_per_1k="0.05", monthly_volume=300_000, months=3
    )
    assert [p.month for p in series] == [0, 1, 2, 3]
    assert [p.teacher_only for p in series] == [D(0), D(1500), D(3000), D(4500)]
    assert [p.distil_then_student for p in series] == [D(3000), D(3015), D(3030), D(3045)]


def test_break_even_summary_is_json_ready():
    result = break_even(
        upfront=fine_tuning_cost(training_hours="2.5", hourly_price="2.40", teacher_run_cost=2994),
        teacher_per_1k=teacher_cost_per_1k("12.50", 2500),
        student_per_1k=student_cost_per_1k_from_throughput(10, "1.80"),
        monthly_volume=300_000,
        horizon_months=12,
    )
    assert result.upfront == D("3000.00")
    assert result.monthly_savings == D("1485")
    assert result.break_even_month == 3
    assert len(result.series) == 13
    data = json.loads(json.dumps(result.to_dict()))
    assert data["break_even_month"] == 3
    assert D(data["series"][3]["distil_then_student"]) == D("3045")
    assert D(data["teacher_monthly"]) == D("1500")


def test_money_rounds_half_up_for_display():
    assert money(D("1.005")) == D("1.01")
    assert money(D("1484.994")) == D("1484.99")
    assert str(money(D("2"))) == "2.00"


@pytest.mark.parametrize(
    ("agree", "n", "level"),
    [
        (83, 100, "close"),
        (75, 100, "close"),
        (74, 100, "moderate"),
        (40, 100, "moderate"),
        (39, 100, "large"),
        (0, 100, "large"),
        (29, 29, "too_few"),
    ],
)
def test_weekend_verdict_thresholds(agree, n, level):
    verdict = weekend_verdict(agree, n)
    assert verdict.level == level
    assert f"{agree} of {n}" in verdict.sentence


def test_weekend_verdict_sentences():
    assert weekend_verdict(83, 100).sentence == (
        "The small model already agrees with the teacher on 83 of 100 inputs, "
        "so distillation is likely to close the gap."
    )
    assert weekend_verdict(12, 100).sentence.startswith("Large gap:")
    with pytest.raises(ValueError):
        weekend_verdict(5, 4)


def test_dollars_put_the_minus_before_the_dollar_sign():
    from worker.economics import dollars

    assert dollars(D("1234.5")) == "$1,234.50"
    assert dollars(D("-452.8")) == "\u2212$452.80"
    assert dollars(D("0.01234"), 4) == "$0.0123"


def test_what_a_no_go_needs_to_change():
    from worker.economics import max_student_per_1k, throughput_for_cost, volume_to_break_even

    # $3.01 upfront, teacher $1.25 per 1,000, 10,000 a month, 36 months:
    # the student may cost up to 1.25 - 3.01 x 1000 / 360,000 = $1.241638... per 1,000.
    headroom = max_student_per_1k(upfront="3.01", teacher_per_1k="1.25", monthly_volume=10_000)
    assert money(headroom, 4) == D("1.2416")
    assert max_student_per_1k(upfront=100, teacher_per_1k=1, monthly_volume=10) is None
    assert max_student_per_1k(upfront=1, teacher_per_1k=1, monthly_volume=0) is None
    # $0.05 per 1,000 on a $1.80/hour machine needs 10 requests/s (the inverse of the above).
    assert throughput_for_cost("1.80", "0.05") == D("10")
    assert throughput_for_cost(1, 0) is None
    # Savings $1.15 per 1,000: 36 x 73 x 1.15 / 1000 = 3.0222 >= 3.01 > 36 x 72 x 1.15 / 1000.
    assert volume_to_break_even(upfront="3.01", teacher_per_1k="1.25", student_per_1k="0.10") == 73
    assert volume_to_break_even(upfront=1, teacher_per_1k=1, student_per_1k=2) is None
