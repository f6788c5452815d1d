"""Ask the teacher for new inputs from the browser, watch the job finish, find them marked."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from projects.models import InputRow
from tests.fakes.responders import synthetic_inputs_responder
from tests.teachers.teacher_support import label_project, openai_credential

pytestmark = pytest.mark.browser


def test_ask_for_synthetic_inputs_and_find_them_marked(
    signed_in, live_server, team, owner, celery_worker, fake_provider
):  # type: ignore[no-untyped-def]
    fake_provider.responder = synthetic_inputs_responder
    project = label_project(team, owner, n=4, name="Ticket routing")
    openai_credential(team, owner, fake_provider)
    first = project.inputs.order_by("pk").first()
    assert first is not None

    page = signed_in(owner)
    page.goto(f"{live_server.url}/projects/{project.pk}/inputs/")
    page.get_by_test_id("synthesize").click()
    page.select_option("#id_credential", label="prod-openai (OpenAI)")
    page.fill("#id_model", "gpt-4o-mini")
    page.get_by_label(f"#{first.pk}: Ticket 0: where is my new card?").check()
    page.fill("#id_count", "12")
    page.fill("#id_per_call", "6")
    page.get_by_test_id("estimate").click()
    expect(page.get_by_test_id("estimate-calls")).to_have_text("2")
    expect(page.get_by_test_id("estimate-usd")).to_contain_text("$0.0")
    page.get_by_test_id("start-synthesis").click()

    # The job page polls until the inputs are in: 12 written, 2 copies and 2 near copies dropped.
    expect(page.get_by_test_id("job-status")).to_have_text("Succeeded", timeout=60_000)
    expect(page.get_by_test_id("job-result")).to_contain_text("Added")
    page.get_by_test_id("job-next").click()
    expect(page.get_by_test_id("inputs-total")).to_have_text("8 synthetic inputs")
    expect(page.get_by_test_id("synthetic-badge")).to_have_count(8)
    assert InputRow.objects.filter(project=project, synthetic=True).count() == 8
