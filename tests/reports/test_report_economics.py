"""The go/no-go report on fixed, hand-checked figures: costs from the ledger, the measured
throughput and the measured training time; break-even for any volume; the verdict; the share link;
roles; the team dashboard."""

from __future__ import annotations

from decimal import Decimal

import pytest

from reports import selectors as report_selectors
from reports import services as report_services
from teams.models import Role
from tests.evaluations.evaluation_support import finished_evaluation, label_project_with_references
from tests.reports.report_support import metered_teacher, trained_student

pytestmark = pytest.mark.django_db

ALL_RIGHT = [
    ("my card has not arrived yet", "card_arrival", "card_arrival", "card_arrival"),
    ("I lost my card", "lost_or_stolen_card", "lost_or_stolen_card", "lost_or_stolen_card"),
    ("my top up failed", "top_up_failed", "top_up_failed", "top_up_failed"),
    ("where is my card", "card_arrival", "card_arrival", "card_arrival"),
]


def settings(project, owner, **overrides):  # type: ignore[no-untyped-def]
    values = {
        "serving_mode": "hourly",
        "serving_hourly_usd": Decimal("0.90"),
        "managed_input_usd_per_mtok": Decimal("0.20"),
        "managed_output_usd_per_mtok": Decimal("0.60"),
        "training_hourly_usd": Decimal("2.00"),
        "teacher_usd_per_1k": None,
        "monthly_volume": 10_000,
        "quality_target_percent": 95,
    }
    values.update(overrides)
    return report_services.report_settings_update(project=project, user=owner, **values)


@pytest.fixture
def project(team, owner):  # type: ignore[no-untyped-def]
    return label_project_with_references(team, owner, n=2)


@pytest.fixture
def evaluated(project, owner):  # type: ignore[no-untyped-def]
    metered_teacher(project)
    student = trained_student(project, owner)
    finished_evaluation(
        project,
        owner,
        ALL_RIGHT,
        student_model=student,
        student_performance={"throughput": {"examples_per_s": 2.5, "n": 4, "seconds": 1.6}},
    )
    settings(project, owner)
    return project


def test_costs_come_from_the_ledger_the_measured_throughput_and_the_training_time(evaluated):  # type: ignore[no-untyped-def]
    report = report_selectors.report_for(project=evaluated)
    # Teacher: 8 calls x $0.00125 = $0.01 -> $0.01 / 8 x 1000 = $1.25 per 1,000 requests.
    assert report.teacher_per_1k.value == Decimal("1.25")
    assert "8 metered calls" in report.teacher_per_1k.basis
    # Student: $0.90/h / (2.5 req/s x 3600 s/h) = $0.0001 per request = $0.10 per 1,000.
    assert report.student_per_1k.value == Decimal("0.1")
    # Distilling: 5400 s = 1.5 h x $2.00/h = $3.00, + $0.01 of teacher calls = $3.01.
    assert report.fine_tuning.value == Decimal("3.01")
    # 10,000 requests a month: teacher $12.50, student $1.00, savings $11.50; 3.01 < 11.50 -> month 1.
    be = report.break_even
    assert be.teacher_monthly == Decimal("12.5") and be.student_monthly == Decimal("1")
    assert be.monthly_savings == Decimal("11.5")
    assert be.break_even_month == 1
    assert report.verdict.level == "go"
    assert "100 % of the teacher's quality" in report.verdict.sentence
    assert (
        "month 1" in report.verdict.sentence
        and "10,000 requests a month" in report.verdict.sentence
    )


def test_break_even_for_other_volumes_through_the_calculator(client_for, owner, evaluated):  # type: ignore[no-untyped-def]
    client = client_for(owner)
    url = f"/projects/{evaluated.pk}/report/break-even/"
    # 200 a month: teacher $0.25, student $0.02, savings $0.23; 13 x 0.23 = 2.99 < 3.01 <= 14 x 0.23.
    data = client.get(url, {"volume": 200}).json()
    assert Decimal(data["monthly_savings"]) == Decimal("0.23")
    assert data["break_even_month"] == 14
    assert data["shown"]["break_even"] == "month 14"
    assert data["chart"]["months"][:3] == [0, 1, 2]
    assert data["chart"]["teacher_only"][14] == pytest.approx(3.5)  # 14 x 0.25
    assert data["chart"]["distil_then_student"][14] == pytest.approx(3.29)  # 3.01 + 14 x 0.02
    # Nothing to save at 0 requests: never pays back.
    none = client.get(url, {"volume": 0}).json()
    assert (
        none["break_even_month"] is None and none["shown"]["break_even"] == "not within 36 months"
    )
    for bad in ("-5", "abc", "", "1e3"):
        assert client.get(url, {"volume": bad}).status_code == 400
    assert client.post(url, {"volume": 5}).status_code == 405


def test_a_managed_per_token_price_uses_the_teacher_calls_average_tokens(project, owner):  # type: ignore[no-untyped-def]
    metered_teacher(project)
    settings(project, owner, serving_mode="tokens")
    report = report_selectors.report_for(project=project)
    # 400 in x $0.20/1M + 5 out x $0.60/1M = $0.000083 per request = $0.083 per 1,000.
    assert report.student_per_1k.value == Decimal("0.083")


def test_the_verdict_says_no_go_below_the_quality_target(evaluated, owner):  # type: ignore[no-untyped-def]
    settings(evaluated, owner, quality_target_percent=101)
    report = report_selectors.report_for(project=evaluated)
    assert report.verdict.level == "no_go"
    assert "the target is 101 %" in report.verdict.sentence


def test_imported_teacher_outputs_need_the_users_teacher_price(project, owner):  # type: ignore[no-untyped-def]
    student = trained_student(project, owner)
    finished_evaluation(
        project,
        owner,
        ALL_RIGHT,
        student_model=student,
        student_performance={"throughput": {"examples_per_s": 2.5}},
    )
    settings(project, owner)
    report = report_selectors.report_for(project=project)
    assert report.teacher_per_1k.value is None and "imported" in report.teacher_per_1k.basis
    assert report.break_even is None
    assert report.verdict.level == "pending"
    settings(project, owner, teacher_usd_per_1k=Decimal("2.00"))
    report = report_selectors.report_for(project=project)
    assert report.teacher_per_1k.value == Decimal("2.00")
    assert "your figure" in report.teacher_per_1k.basis
    # Upfront is training only: 1.5 h x $2 = $3; savings (2.00 - 0.10) x 10 = $19 -> month 1.
    assert report.fine_tuning.value == Decimal("3.00")
    assert report.break_even.break_even_month == 1


def test_a_share_link_shows_the_report_read_only_without_sign_in_until_revoked(
    client, client_for, owner, evaluated
):  # type: ignore[no-untyped-def]
    owner_client = client_for(owner)
    assert owner_client.post(f"/projects/{evaluated.pk}/report/share/").status_code == 302
    token = report_selectors.settings_for(project=evaluated).share_token
    assert token and len(token) >= 40
    client.logout()
    page = client.get(f"/share/reports/{token}/")
    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-testid="verdict-title">Go<' in html
    assert "report-settings" not in html and "share-enable" not in html  # read-only
    assert page["X-Robots-Tag"] == "noindex, nofollow"
    assert (
        client.get(f"/share/reports/{token}/break-even/", {"volume": 200}).json()[
            "break_even_month"
        ]
        == 14
    )
    assert client.get(f"/share/reports/{token}x/").status_code == 404
    owner_client = client_for(owner)
    owner_client.post(f"/projects/{evaluated.pk}/report/share/", {"action": "disable"})
    client.logout()
    assert client.get(f"/share/reports/{token}/").status_code == 404
    assert client.get(f"/share/reports/{token}/break-even/", {"volume": 1}).status_code == 404


def test_report_roles(client, member_with_role, evaluated):  # type: ignore[no-untyped-def]
    form = {
        "serving_mode": "hourly",
        "serving_hourly_usd": "1.80",
        "managed_input_usd_per_mtok": "0",
        "managed_output_usd_per_mtok": "0",
        "training_hourly_usd": "2",
        "monthly_volume": "10000",
        "quality_target_percent": "95",
    }
    for role in (Role.VIEWER, Role.REVIEWER):
        client.force_login(member_with_role(role))
        assert client.get(f"/projects/{evaluated.pk}/report/").status_code == 200
        assert client.post(f"/projects/{evaluated.pk}/report/settings/", form).status_code == 403
        assert client.post(f"/projects/{evaluated.pk}/report/share/").status_code == 403
    client.force_login(member_with_role(Role.ENGINEER))
    assert client.post(f"/projects/{evaluated.pk}/report/share/").status_code == 403
    assert report_selectors.settings_for(project=evaluated).share_token is None
    response = client.post(f"/projects/{evaluated.pk}/report/settings/", form)
    assert response.status_code == 302
    assert report_selectors.settings_for(project=evaluated).serving_hourly_usd == Decimal("1.80")
    bad = client.post(
        f"/projects/{evaluated.pk}/report/settings/", {**form, "monthly_volume": "-1"}
    )
    assert bad.status_code == 400 and b'data-testid="error-monthly_volume"' in bad.content


def test_the_team_dashboard_shows_each_projects_stage_verdict_and_savings(
    client_for, team, owner, evaluated
):  # type: ignore[no-untyped-def]
    fresh = label_project_with_references(team, owner, n=0)
    fresh.name = "Fresh project"
    fresh.save()
    html = client_for(owner).get("/").content.decode()
    rows = html.split('data-testid="project-row"')[1:]
    by_name = {("Fresh project" if "Fresh project" in r else "Tickets"): r for r in rows}
    assert 'data-testid="stage">Evaluated<' in by_name["Tickets"]
    assert "<strong>Go</strong>" in by_name["Tickets"]
    assert 'data-testid="savings">$11.50<' in by_name["Tickets"]
    assert 'data-testid="stage">New<' in by_name["Fresh project"]
    assert "not evaluated" in by_name["Fresh project"]
