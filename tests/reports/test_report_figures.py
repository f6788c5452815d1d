"""The report's figures as a stakeholder reads them: each quality figure with its own interval
(a field-F1 project shows the F1 interval, not exact agreement's), latency and throughput in units
that fit, a negative saving in words, the CPU caveat, plain-words quality with answers side by
side, and on a No-go what would change it, with its numbers."""

from __future__ import annotations

import json
import re
from decimal import Decimal

import pytest

from evaluations import units
from evaluations.intervals import bootstrap_ratio
from evaluations.units import DASH
from reports import selectors as report_selectors
from tests.evaluations.evaluation_support import finished_evaluation, label_project_with_references
from tests.factories import ProjectFactory
from tests.reports.report_support import metered_teacher, trained_student
from tests.reports.test_report_economics import ALL_RIGHT, settings
from worker.metrics import wilson_rate

pytestmark = pytest.mark.django_db

CPU = {
    "device": "cpu",
    "name": "Intel Xeon",
    "cores": 2,
    "threads": 2,
    "dtype": "float32",
    "description": "Intel Xeon, 2 cores, 2 threads (float32)",
}
# Minute-long single requests and 0.01 requests/s on batches: $0.90/h / (0.01 x 3600) = $0.025
# a request = $25.00 per 1,000, against the teacher's $1.25.
SLOW_CPU = {
    "throughput": {"examples_per_s": 0.01, "n": 4, "seconds": 400, "how": "batches"},
    "latency": {"p50_ms": 95_000.0, "p95_ms": 185_000.0, "n": 3, "how": "single requests"},
    "hardware": CPU,
}


def cell(html: str, testid: str) -> str:
    match = re.search(rf'data-testid="{testid}"[^>]*>(.*?)</td>', html, re.DOTALL)
    assert match, testid
    return re.sub(r"<[^>]+>", "", match.group(1))


def test_units_fit_the_size():
    assert units.duration(840) == "840 ms"
    assert units.duration(12_300) == "12.3 s"
    assert units.duration(95_000) == "1.58 min"  # 95 s
    assert units.duration(2 * 3_600_000) == "2 h"
    assert units.throughput(2.5) == "2.5 requests/s"
    assert units.throughput(0.01) == "36 requests/h"  # 0.6 a minute
    assert units.throughput(0.05) == "3 requests/min"
    assert units.throughput(0.0001) == "0.36 requests/h"
    assert units.savings(Decimal("11.5")) == "$11.50"
    assert units.savings(Decimal("-452.8")) == "costs $452.80 more"


@pytest.fixture
def json_project(team, owner):  # type: ignore[no-untyped-def]
    return ProjectFactory(
        team=team,
        created_by=owner,
        name="Invoices",
        instruction_template="Extract the fields: {{ text }}",
        output_kind="json",
        label_set=[],
    )


def _j(**fields: str) -> str:
    return json.dumps(fields)


# (input, reference, teacher, student); two reference fields a row, eight in all. Student's token
# F1 per field: 1,1 | 0,1 | 2/3 ("York" vs "New York"),1 | 1,0 (no amount) -> 17/3 of 8 = 0.708.
# Whole-object exact match is 1 of 4 (Wilson 0.046-0.699): a different figure.
JSON_ROWS = [
    (
        "paid 12 in Paris",
        _j(city="Paris", amount="12"),
        _j(city="Paris", amount="12"),
        _j(city="Paris", amount="12"),
    ),
    (
        "30 at Paris",
        _j(city="Paris", amount="30"),
        _j(city="Paris", amount="30"),
        _j(city="Lyon", amount="30"),
    ),
    (
        "5 in New York",
        _j(city="New York", amount="5"),
        _j(city="New York", amount="5"),
        _j(city="York", amount="5"),
    ),
    ("Rome, 7", _j(city="Rome", amount="7"), _j(city="Rome", amount="7"), _j(city="Rome")),
]


def test_a_field_f1_project_shows_the_f1_interval_not_exact_agreement(
    client_for, owner, json_project
):  # type: ignore[no-untyped-def]
    finished_evaluation(json_project, owner, JSON_ROWS)
    report = report_selectors.report_for(project=json_project)
    metric = report.quality.student.metric
    assert metric.how == "bootstrap"
    assert metric.value == pytest.approx(17 / 3 / 8)
    assert metric.value == pytest.approx(report.student.headline)  # the stored field F1
    assert metric.low < metric.value < metric.high
    # Recomputable: the same stored rows give the same interval.
    again = bootstrap_ratio([1, 1, 0, 1, 2 / 3, 1, 1, 0], [1] * 8)
    assert again is not None and again.value == pytest.approx(metric.value)
    exact = wilson_rate(1, 4)
    exact_range = f"{exact.low:.3f}{DASH}{exact.high:.3f}"
    html = client_for(owner).get(f"/projects/{json_project.pk}/report/").content.decode()
    html = html.replace("&#x27;", "'")
    shown = cell(html, "metric-distilled")
    assert shown.startswith("0.708 ") and metric.range_shown in shown
    assert exact_range not in html
    share = report.quality.student.percent_of_teacher
    assert share.value == pytest.approx(100 * 17 / 24) and share.value_shown == "71 %"
    assert share.range_shown in cell(html, "share-distilled")
    assert "gives the teacher's answer on 1 of 4 test examples" in html
    assert f"field F1 of {metric.shown}" in html


LABEL_ROWS = [
    ("my card has not arrived yet", "card_arrival", "card_arrival", "card_arrival"),
    ("I lost my card", "lost_or_stolen_card", "lost_or_stolen_card", "top_up_failed"),
    ("my top up failed", "top_up_failed", "top_up_failed", "top_up_failed"),
    ("where is my card", "card_arrival", "card_arrival", "card_arrival"),
]


def test_quality_in_plain_words_with_answers_side_by_side(client_for, owner, team):  # type: ignore[no-untyped-def]
    project = label_project_with_references(team, owner, n=2)
    finished_evaluation(project, owner, LABEL_ROWS)
    html = client_for(owner).get(f"/projects/{project.pk}/report/").content.decode()
    html = html.replace("&#x27;", "'")
    agree = wilson_rate(3, 4)
    assert (
        "The distilled student gives the teacher's answer on 3 of 4 test examples "
        f"(95 % interval {100 * agree.low:.0f}{DASH}{100 * agree.high:.0f} %)." in html
    )
    accuracy = wilson_rate(3, 4)  # accuracy's own Wilson interval: 3 of 4 right
    assert (
        f"labels 3 of 4 examples right: accuracy 0.750 (95 % interval {accuracy.low:.3f}{DASH}"
        in html
    )
    rows = re.findall(r'data-testid="example-row" data-agrees="(yes|no)"', html)
    assert rows == ["yes", "no", "yes", "yes"]  # all four, in test order, the disagreement too
    assert "I lost my card" in html.split('data-testid="side-by-side"')[1]


@pytest.fixture
def slow_on_cpu(team, owner):  # type: ignore[no-untyped-def]
    project = label_project_with_references(team, owner, n=2)
    metered_teacher(project)  # $1.25 per 1,000
    student = trained_student(project, owner)  # 1.5 h -> $3.01 upfront with the teacher calls
    finished_evaluation(
        project, owner, ALL_RIGHT, student_model=student, student_performance=SLOW_CPU
    )
    settings(project, owner)
    return project


def test_minute_long_latency_negative_savings_and_the_cpu_caveat(client_for, owner, slow_on_cpu):  # type: ignore[no-untyped-def]
    report = report_selectors.report_for(project=slow_on_cpu)
    assert report.student_per_1k.value == Decimal(25)
    # 10,000 a month: teacher $12.50, student $250.00 -> the student costs $237.50 more.
    assert report.break_even.monthly_savings == Decimal("-237.5")
    html = client_for(owner).get(f"/projects/{slow_on_cpu.pk}/report/").content.decode()
    html = html.replace("&#x27;", "'")
    assert cell(html, "latency-distilled").startswith("1.58 min / 3.08 min")
    assert cell(html, "throughput-distilled").startswith("36 requests/h")
    assert "0.0/s" not in html and "$-" not in html
    assert 'data-testid="monthly-savings">costs $237.50 more<' in html
    assert report.verdict.level == "no_go"
    assert "the student costs $237.50 more a month than the teacher" in report.verdict.sentence
    caveat = report.student_per_1k.caveat
    assert "CPU worker (Intel Xeon, 2 cores, 2 threads (float32))" in caveat
    assert "$0.90/hour" in caveat and "serving hardware" in caveat
    assert 'data-testid="cpu-caveat"' in html
    settings(slow_on_cpu, owner, serving_hourly_usd=Decimal("0.5"))
    caveat = report_selectors.report_for(project=slow_on_cpu).student_per_1k.caveat
    assert "$0.50/hour (the default price" in caveat
    # The dashboard says it in words too.
    dashboard = client_for(owner).get("/").content.decode()
    assert 'data-testid="savings">costs $' in dashboard and "$-" not in dashboard


def test_no_caveat_when_measured_on_a_gpu(owner, evaluated_on_gpu):  # type: ignore[no-untyped-def]
    report = report_selectors.report_for(project=evaluated_on_gpu)
    assert report.student_per_1k.caveat == ""


@pytest.fixture
def evaluated_on_gpu(team, owner):  # type: ignore[no-untyped-def]
    project = label_project_with_references(team, owner, n=2)
    metered_teacher(project)
    student = trained_student(project, owner)
    gpu = {"device": "cuda", "name": "NVIDIA L4", "description": "NVIDIA L4 (GPU, bfloat16)"}
    finished_evaluation(
        project,
        owner,
        ALL_RIGHT,
        student_model=student,
        student_performance={"throughput": {"examples_per_s": 40.0}, "hardware": gpu},
    )
    settings(project, owner)
    return project


def test_a_no_go_on_cost_says_what_would_change_it(client_for, owner, slow_on_cpu):  # type: ignore[no-untyped-def]
    # An earlier evaluation measured the same student on a GPU: 40 requests/s.
    student = report_selectors.report_for(project=slow_on_cpu).student.candidate.student_model
    older = finished_evaluation(
        slow_on_cpu,
        owner,
        ALL_RIGHT,
        student_model=student,
        student_performance={
            "throughput": {"examples_per_s": 40.0},
            "hardware": {"device": "cuda", "description": "NVIDIA L4 (GPU, bfloat16)"},
        },
    )
    report_selectors_settings = report_selectors.settings_for(project=slow_on_cpu)
    newest = report_selectors.report_for(project=slow_on_cpu)
    assert newest.evaluation.pk == older.pk  # the latest is the GPU one: choose the CPU one
    from evaluations.models import Evaluation

    cpu_eval = Evaluation.objects.filter(project=slow_on_cpu).exclude(pk=older.pk).get()
    report_selectors_settings.evaluation = cpu_eval
    report_selectors_settings.save()
    report = report_selectors.report_for(project=slow_on_cpu)
    assert report.verdict.level == "no_go"
    levers = {lever.key: " ".join(lever.sentences) for lever in report.changes}
    assert list(levers) == ["data", "student", "hardware", "traffic"]
    assert "Quality already meets the target" in levers["data"]
    assert "trained on 1 reviewed examples" in levers["data"]
    # Headroom: $1.25 - $3.01 x 1000 / (36 x 10,000) = $1.2416 per 1,000 still pays back.
    assert "costs at most $1.2416 per 1,000 requests" in levers["student"]
    assert "fine-tuned from SmolLM2-135M-Instruct" in levers["student"]
    # $0.90/h / ($1.2416 / 1000 x 3600 s) = 0.2014/s = 12.1/min; $2.00/h: 0.4474/s = 26.8/min.
    assert "at least 12.1 requests/min" in levers["hardware"]
    assert "$2.00/hour, at least 26.8 requests/min" in levers["hardware"]
    # On the GPU: $2.00/h / (40 x 3600) x 1000 = $0.0139 per 1,000, month 1 at 10,000 a month.
    assert "answered 40 requests/s" in levers["hardware"]
    assert "$0.0139 per 1,000 requests, paying back in month 1" in levers["hardware"]
    assert "no volume pays it back" in levers["traffic"]
    html = client_for(owner).get(f"/projects/{slow_on_cpu.pk}/report/").content.decode()
    assert 'data-testid="what-would-change-it"' in html and "More reviewed data" in html


def test_a_no_go_on_quality_gives_the_gap_to_the_target(owner, team):  # type: ignore[no-untyped-def]
    project = label_project_with_references(team, owner, n=2)
    metered_teacher(project)
    student = trained_student(project, owner)
    finished_evaluation(
        project,
        owner,
        LABEL_ROWS,
        student_model=student,
        student_performance={"throughput": {"examples_per_s": 2.5}},
    )
    settings(project, owner)
    report = report_selectors.report_for(project=project)
    assert report.verdict.level == "no_go"  # 75 % of the teacher, target 95 %
    pct = report.quality.student.percent_of_teacher
    assert pct.value == pytest.approx(75.0)
    assert f"(95 % interval {pct.range_shown})" in report.verdict.sentence
    data = " ".join(next(lever for lever in report.changes if lever.key == "data").sentences)
    assert f"{pct.shown} of the teacher's quality; the target is 95 %: 20 points short" in data
    # 10,000 a month at $1.25 vs $0.10 per 1,000 pays $3.01 back from 73 requests a month:
    # 36 x 73 x 1.15 / 1000 = 3.0222 >= 3.01 > 36 x 72 x 1.15 / 1000 = 2.9808.
    traffic = next(lever for lever in report.changes if lever.key == "traffic").sentences[0]
    assert "from 73 requests a month" in traffic


def test_the_evaluation_page_shows_the_same_figures_with_their_own_intervals_and_units(
    client_for, owner, json_project
):  # type: ignore[no-untyped-def]
    """The results table of the evaluation itself: field F1 with its bootstrap interval (not
    the exact-match one), latency in the unit that fits."""
    evaluation = finished_evaluation(json_project, owner, JSON_ROWS)
    report = report_selectors.report_for(project=json_project)
    metric = report.quality.student.metric
    html = client_for(owner).get(f"/evaluations/{evaluation.pk}/").content.decode()
    html = html.replace("&#x27;", "'")
    assert metric.range_shown in cell(html, "headline-distilled")
    exact = wilson_rate(1, 4)
    assert f"{exact.low:.3f}{DASH}{exact.high:.3f}" not in html
    assert f"{100 * exact.low:.0f}" + DASH not in cell(html, "headline-distilled")
