"""GET /api/v1/projects/{slug}/report: the verdict, quality figures, costs and break-even month a
pipeline gates a deploy on — the very numbers the report page shows, for a Go, a No-go and a
project not evaluated yet."""

from __future__ import annotations

import html as html_lib
import re
from decimal import Decimal

import pytest

from reports import selectors as report_selectors
from tests.evaluations.evaluation_support import finished_evaluation, label_project_with_references
from tests.helpers.api import Api, token_for
from tests.reports.report_support import metered_teacher, trained_student
from tests.reports.test_report_economics import ALL_RIGHT, settings
from tests.reports.test_report_figures import SLOW_CPU

pytestmark = pytest.mark.django_db

GPU = {
    "throughput": {"examples_per_s": 40.0},
    "hardware": {"device": "cuda", "description": "NVIDIA L4 (GPU, bfloat16)"},
}


def evaluated(team, owner, performance):  # type: ignore[no-untyped-def]
    project = label_project_with_references(team, owner, n=2)
    metered_teacher(project)  # $1.25 per 1,000
    student = trained_student(project, owner)
    finished_evaluation(
        project, owner, ALL_RIGHT, student_model=student, student_performance=performance
    )
    settings(project, owner)
    return project


def text_of(page: str, testid: str) -> str:
    match = re.search(rf'data-testid="{testid}"[^>]*>(.*?)</(?:div|td|h2|p)>', page, re.DOTALL)
    assert match, testid
    return html_lib.unescape(re.sub(r"<[^>]+>", "", match.group(1))).strip()


def api_for(team, owner) -> Api:  # type: ignore[no-untyped-def]
    return Api(token_for(owner.memberships.get(team=team), scopes=("read",)))


def assert_same_as_page(client_for, owner, team, project) -> dict:  # type: ignore[no-untyped-def]
    response = api_for(team, owner).get(f"/api/v1/projects/{project.slug}/report")
    assert response.status_code == 200, response.content
    body = response.json()
    page = client_for(owner).get(f"/projects/{project.pk}/report/").content.decode()
    assert body["verdict"]["title"] == text_of(page, "verdict-title")
    assert body["verdict"]["sentence"] == text_of(page, "verdict-sentence")
    costs = body["costs"]
    assert costs["teacher_per_1k"]["shown"] == text_of(page, "teacher-per-1k")
    assert costs["student_per_1k"]["shown"] == text_of(page, "student-per-1k")
    assert costs["fine_tuning"]["shown"] == text_of(page, "fine-tuning-cost")
    if body["break_even"]["known"]:
        shown = body["break_even"]["shown"]
        assert shown["monthly_savings"] == text_of(page, "monthly-savings")
        assert shown["break_even"] == text_of(page, "break-even-month")
        assert shown["teacher_monthly"] == text_of(page, "teacher-monthly")
        assert shown["student_monthly"] == text_of(page, "student-monthly")
    # Exact figures: the report's own Decimals, as strings.
    report = report_selectors.report_for(project=project)
    assert body["verdict"]["level"] == report.verdict.level
    for key in ("teacher_per_1k", "student_per_1k", "fine_tuning"):
        figure = getattr(report, key)
        assert costs[key]["value"] == (None if figure.value is None else str(figure.value))
    if report.break_even is not None:
        assert body["break_even_month"] == report.break_even.break_even_month
        assert Decimal(body["break_even"]["monthly_savings"]) == report.break_even.monthly_savings
    return body | {"_page": page}


def test_a_go_report_as_json_equals_the_page(client_for, owner, team):  # type: ignore[no-untyped-def]
    project = evaluated(team, owner, GPU)
    body = assert_same_as_page(client_for, owner, team, project)
    assert body["verdict"]["level"] == "go"
    assert body["break_even_month"] == 1
    assert Decimal(body["costs"]["teacher_per_1k"]["value"]) == Decimal("1.25")
    # Each quality figure with its interval, as the page's table shows it.
    distilled = next(c for c in body["quality"]["candidates"] if c["role"] == "distilled")
    assert body["quality"]["student_candidate_id"] == distilled["id"]
    metric_cell = text_of(body["_page"], "metric-distilled")
    assert metric_cell.startswith(distilled["metric"]["value_shown"] + " (")
    assert distilled["metric"]["range_shown"] in metric_cell
    share_cell = text_of(body["_page"], "share-distilled")
    assert share_cell.startswith(distilled["percent_of_teacher"]["value_shown"])
    assert distilled["agreement"]["range_shown"] in text_of(body["_page"], "agreement-distilled")
    assert body["quality"]["sentences"] == [
        html_lib.unescape(s)
        for s in re.findall(r'data-testid="quality-sentence">(.*?)</p>', body["_page"], re.DOTALL)
    ]


def test_a_no_go_on_cost_as_json_with_what_would_change_it(client_for, owner, team):  # type: ignore[no-untyped-def]
    project = evaluated(team, owner, SLOW_CPU)
    body = assert_same_as_page(client_for, owner, team, project)
    assert body["verdict"]["level"] == "no_go"
    assert body["break_even_month"] is None
    assert Decimal(body["break_even"]["monthly_savings"]) == Decimal("-237.5")
    assert Decimal(body["costs"]["student_per_1k"]["value"]) == 25
    assert "CPU worker" in body["costs"]["student_per_1k"]["caveat"]
    assert [lever["key"] for lever in body["what_would_change_it"]][:1] == ["data"]


def test_another_volume_equals_the_pages_calculator(client_for, owner, team):  # type: ignore[no-untyped-def]
    project = evaluated(team, owner, SLOW_CPU)
    api = api_for(team, owner)
    body = api.get(f"/api/v1/projects/{project.slug}/report", volume=0).json()
    calculator = client_for(owner).get(f"/projects/{project.pk}/report/break-even/?volume=0").json()
    assert body["break_even"] == calculator
    refused = api.get(f"/api/v1/projects/{project.slug}/report", volume=-5)
    assert refused.status_code == 400
    assert refused.json()["errors"][0]["field"] == "volume"


def test_not_evaluated_yet_is_pending(client_for, owner, team, project):  # type: ignore[no-untyped-def]
    body = assert_same_as_page(client_for, owner, team, project)
    assert body["verdict"]["level"] == "pending"
    assert body["quality"] is None and body["evaluation_id"] is None
    assert body["break_even"] == {"known": False, "monthly_volume": 100_000}
