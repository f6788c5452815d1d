"""Start a small teacher run from the browser against the loopback provider and watch it finish."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

import pytest
from playwright.sync_api import expect

from teachers.models import TeacherOutput, TeacherRun
from tests.teachers.teacher_support import LABELS, label_project, openai_credential

pytestmark = pytest.mark.browser


def test_start_a_teacher_run_and_watch_it_reach_100_percent(
    signed_in, live_server, team, owner, celery_worker, fake_provider
):  # type: ignore[no-untyped-def]
    fake_provider.latency_s = 0.05
    project = label_project(team, owner, n=20, name="Ticket routing")
    openai_credential(team, owner, fake_provider)

    page = signed_in(owner)
    page.goto(f"{live_server.url}/projects/{project.pk}/")
    page.click("text=Teacher runs")
    page.click("text=New teacher run")
    page.select_option("#id_teacher", label="prod-openai (OpenAI)")
    page.fill("#id_model", "gpt-4o-mini")
    page.fill("#id_max_tokens", "16")
    page.get_by_test_id("estimate").click()

    # The estimate comes first: calls, tokens with the counting method, dollars.
    expect(page.get_by_test_id("estimate-calls")).to_have_text("20")
    expect(page.get_by_test_id("estimate-prompt-tokens")).to_contain_text("tiktoken o200k_base")
    expect(page.get_by_test_id("estimate-usd")).to_contain_text("$0.0")
    page.get_by_test_id("start-run").click()

    # The run page polls its progress fragment until every answer is in.
    expect(page.get_by_test_id("run-percent")).to_have_text("100 %", timeout=60_000)
    expect(page.get_by_test_id("run-status")).to_have_text("Succeeded")
    expect(page.get_by_test_id("run-calls")).to_have_text("20")
    page.reload()
    expect(page.get_by_test_id("outputs")).to_contain_text(LABELS[0])

    run = TeacherRun.objects.get(project=project)
    assert TeacherOutput.objects.filter(run=run).count() == 20
    shown = Decimal(page.get_by_test_id("run-cost").inner_text().lstrip("$"))
    assert shown == run.cost_usd.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP) > 0
