"""A viewer opens the go/no-go report, changes the monthly volume, and sees the break-even month,
the savings and the cumulative-cost chart follow."""

from __future__ import annotations

from decimal import Decimal

import pytest
from playwright.sync_api import expect

from reports import services as report_services
from teams.models import Role
from tests.evaluations.evaluation_support import finished_evaluation, label_project_with_references
from tests.reports.report_support import metered_teacher, trained_student

pytestmark = pytest.mark.browser

ROWS = [
    ("my card has not arrived yet", "card_arrival", "card_arrival", "card_arrival"),
    ("I lost my card", "lost_or_stolen_card", "lost_or_stolen_card", "lost_or_stolen_card"),
    ("my top up failed", "top_up_failed", "top_up_failed", "top_up_failed"),
]


def chart_point(page, trace: int, month: int) -> float:  # type: ignore[no-untyped-def]
    return float(
        page.evaluate(f"() => document.getElementById('be-chart').data[{trace}].y[{month}]")
    )


def test_a_viewer_changes_the_volume_and_the_break_even_follows(
    signed_in, live_server, team, owner, member_with_role
):  # type: ignore[no-untyped-def]
    project = label_project_with_references(team, owner, n=2)
    metered_teacher(project)  # $1.25 per 1,000 requests
    student = trained_student(project, owner)  # 1.5 h of training
    finished_evaluation(
        project,
        owner,
        ROWS,
        student_model=student,
        student_performance={"throughput": {"examples_per_s": 2.5}},  # $0.10 per 1,000 at $0.90/h
    )
    report_services.report_settings_update(
        project=project,
        user=owner,
        serving_mode="hourly",
        serving_hourly_usd=Decimal("0.90"),
        managed_input_usd_per_mtok=Decimal(0),
        managed_output_usd_per_mtok=Decimal(0),
        training_hourly_usd=Decimal("2.00"),
        teacher_usd_per_1k=None,
        monthly_volume=10_000,
        quality_target_percent=95,
    )
    viewer = member_with_role(Role.VIEWER)
    page = signed_in(viewer)
    page.goto(f"{live_server.url}/projects/{project.pk}/report/")

    expect(page.get_by_test_id("verdict-title")).to_have_text("Go")
    # Quality in plain words, accuracy with its own interval, and the answers side by side.
    expect(page.get_by_test_id("quality-sentence").first).to_contain_text(
        "gives the teacher's answer on 3 of 3 test examples (95 % interval"
    )
    expect(page.get_by_test_id("metric-distilled")).to_contain_text("1.000 (")
    expect(page.get_by_test_id("example-row")).to_have_count(3)
    expect(page.get_by_test_id("throughput-distilled")).to_contain_text("2.5 requests/s")
    expect(page.get_by_test_id("what-would-change-it")).to_have_count(0)
    expect(page.get_by_test_id("break-even-month")).to_have_text("month 1")
    expect(page.get_by_test_id("monthly-savings")).to_have_text("$11.50")
    expect(page.get_by_test_id("break-even-chart")).to_have_attribute(
        "data-rendered-volume", "10000"
    )
    # Upfront $3.01; month 1 at 10,000/month: teacher $12.50, student $3.01 + $1.00.
    assert chart_point(page, 0, 1) == pytest.approx(12.5)
    assert chart_point(page, 1, 1) == pytest.approx(4.01)
    # A viewer sees no settings form and no share controls.
    expect(page.get_by_test_id("report-settings")).to_have_count(0)
    expect(page.get_by_test_id("share")).to_have_count(0)

    # 200 requests a month: savings $0.23, 3.01 / 0.23 = 13.09 -> month 14.
    page.get_by_test_id("monthly-volume").fill("200")
    expect(page.get_by_test_id("break-even-month")).to_have_text("month 14")
    expect(page.get_by_test_id("monthly-savings")).to_have_text("$0.23")
    expect(page.get_by_test_id("teacher-monthly")).to_have_text("$0.25")
    expect(page.get_by_test_id("break-even-chart")).to_have_attribute("data-rendered-volume", "200")
    assert chart_point(page, 0, 14) == pytest.approx(3.5)
    assert chart_point(page, 1, 14) == pytest.approx(3.29)

    # No requests: it never pays back.
    page.get_by_test_id("monthly-volume").fill("0")
    expect(page.get_by_test_id("break-even-month")).to_have_text("not within 36 months")
    expect(page.get_by_test_id("break-even-chart")).to_have_attribute("data-rendered-volume", "0")
