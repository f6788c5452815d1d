"""A stakeholder opens a finished learning curve and the go/no-go report: the forecast in words
and the chart (measured students, fitted curve with its band, the target) drawn by the browser."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from reports.models import ReportSettings
from teams.models import Role
from tests.evaluations.curve_support import finished_curve
from tests.finetunes.finetune_support import frozen_version

pytestmark = pytest.mark.browser


def traces(page) -> list[str]:  # type: ignore[no-untyped-def]
    return page.evaluate("() => document.getElementById('curve-chart').data.map(t => t.name || '')")


def test_a_viewer_reads_the_learning_curve_on_the_evaluation_and_the_report(
    signed_in, live_server, team, owner, member_with_role
):  # type: ignore[no-untyped-def]
    version = frozen_version(team, owner)
    evaluation = finished_curve(
        version.project,
        owner,
        version,
        sizes=[100, 200, 400, 800],
        right=[120, 138, 150, 159],
        n_test=200,
    )
    ReportSettings.objects.create(project=version.project, quality_target_percent=82)
    page = signed_in(member_with_role(Role.VIEWER))

    page.goto(f"{live_server.url}/evaluations/{evaluation.pk}/")
    expect(page.get_by_test_id("curve-sentence").nth(1)).to_contain_text(
        "At 1,600 reviewed examples (twice today's 800) the student is expected to reach"
    )
    expect(page.get_by_test_id("curve-chart")).to_have_attribute("data-rendered", "1")
    assert traces(page) == ["", "95 % interval", "Expected (fitted curve)", "Measured student"]
    assert page.locator("#curve-chart .point").count() >= 4  # the four measured students

    page.goto(f"{live_server.url}/projects/{version.project.pk}/report/")
    expect(page.get_by_test_id("learning-curve")).to_contain_text("The 82 % target needs about")
    expect(page.get_by_test_id("curve-chart")).to_have_attribute("data-rendered", "1")
    assert "Measured student" in traces(page)
