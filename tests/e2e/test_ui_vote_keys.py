"""Blind votes from the keyboard in headless Chromium, and a JSON answer corrected field by field:
1/2/3/4 vote on the current example and move on to the next one; names show only once voted."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from evaluations.models import EvalVote
from teachers.models import TeacherOutput
from tests.evaluations.evaluation_support import (
    FIXED_ROWS,
    finished_evaluation,
    label_project_with_references,
)
from tests.factories import InputRowFactory, ProjectFactory, TeacherOutputFactory

pytestmark = pytest.mark.browser


def test_blind_votes_with_number_keys(signed_in, live_server, owner, team):  # type: ignore[no-untyped-def]
    project = label_project_with_references(team, owner, n=1)
    evaluation = finished_evaluation(project, owner, FIXED_ROWS)
    teacher, student = evaluation.candidates.order_by("position")
    page = signed_in(owner)
    page.goto(f"{live_server.url}/evaluations/{evaluation.pk}/compare/")
    page.get_by_test_id("vote-blind").click()
    rows = page.get_by_test_id("example-row")
    expect(rows).to_have_count(len(FIXED_ROWS))
    expect(page.get_by_test_id("comparison")).not_to_contain_text("Teacher model")
    expect(rows.nth(0)).to_have_class("current")

    page.keyboard.press("1")  # A (the teacher, on the left) better on the first example
    expect(rows.nth(0).get_by_test_id("vote-revealed")).to_contain_text("A was Teacher model")
    expect(rows.nth(1)).to_have_class("current")
    page.keyboard.press("2")  # B better on the second
    expect(rows.nth(1).get_by_test_id("vote-revealed")).to_be_visible()
    page.keyboard.press("j")
    expect(rows.nth(3)).to_have_class("current")
    page.keyboard.press("3")  # both acceptable on the fourth
    expect(rows.nth(3).get_by_test_id("vote-revealed")).to_be_visible()
    expect(page.get_by_test_id("votes-a")).to_have_text("1")
    expect(page.get_by_test_id("votes-b")).to_have_text("1")
    expect(page.get_by_test_id("votes-both-ok")).to_have_text("1")

    votes = {
        v.example.position: (v.candidate_a_id, v.choice)
        for v in EvalVote.objects.select_related("example")
    }
    assert votes == {0: (teacher.pk, "a"), 1: (teacher.pk, "b"), 3: (teacher.pk, "both_ok")}
    assert student.pk not in {a for a, _ in votes.values()}


def test_a_json_answer_is_corrected_field_by_field(signed_in, live_server, owner, team):  # type: ignore[no-untyped-def]
    project = ProjectFactory(
        team=team,
        output_kind="json",
        label_set=[],
        json_schema={
            "type": "object",
            "properties": {"total": {"type": "number"}, "vendor": {"type": "string"}},
            "required": ["total", "vendor"],
        },
    )
    row = InputRowFactory(
        project=project,
        data={"text": "ACME invoice, total 13"},
        reference_output='{"total": 13, "vendor": "ACME"}',
    )
    output = TeacherOutputFactory(
        project=project, input=row, raw_text='{"total": 12, "vendor": "ACME"}'
    )
    page = signed_in(owner)
    page.goto(f"{live_server.url}/projects/{project.pk}/review/")
    card = page.locator(f"#output-{output.pk}")
    expect(card.locator("[data-testid=field-row][data-field=total]")).to_have_attribute(
        "data-same", "0"
    )
    page.keyboard.press("e")
    total = card.locator("[data-testid=edit-field][data-field=total]")
    expect(total).to_be_focused()
    total.fill("thirteen")
    page.keyboard.press("Enter")
    expect(page.get_by_test_id("toast")).to_contain_text("is not a number")
    expect(card.locator("[data-testid=edit-field][data-field=total]")).to_have_value("thirteen")
    card.locator("[data-testid=edit-field][data-field=total]").fill("13")
    page.keyboard.press("Enter")
    expect(card.get_by_test_id("item-status")).to_have_text("Edited")
    output = TeacherOutput.objects.get(pk=output.pk)
    assert output.edited_value == {"total": 13, "vendor": "ACME"}
