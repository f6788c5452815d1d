"""Keyboard review of ten outputs in headless Chromium: move with j/k, approve with a, reject
with a reason (r, Enter), edit a label and see the diff (e, Enter), undo (u), the key list (?)."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from review.models import AuditEvent, ReviewDecision
from teachers.models import TeacherOutput
from tests.review.review_support import make_outputs

pytestmark = pytest.mark.browser

TICKETS = [
    "I am still waiting on my card?",
    "What can I do if my card still hasn't arrived after 2 weeks?",
    "My card was stolen at the station this morning",
    "I have been waiting over a week. Is the card still coming?",
    "Why did my top up not go through?",
    "Can I track my card while it is in the process of delivery?",
    "Top-up failed, please help",
    "I lost my card, what should I do?",
    "How do I know if I will get my card, or if it is lost?",
    "When will I get my card?",
]
ANSWERS = [
    "card_arrival",
    "card_arrival",
    "card_arrival",  # wrong: the card was stolen
    "card_arrival",
    "top_up_failed",
    "card_arrival",
    "top_up_failed",
    "lost_or_stolen_card",
    "card_arrival",
    "card_arrival",
]


def test_keyboard_review_of_ten_outputs(signed_in, live_server, owner, project):  # type: ignore[no-untyped-def]
    outputs = make_outputs(project, ANSWERS, texts=TICKETS)
    page = signed_in(owner)
    page.goto(f"{live_server.url}/projects/{project.pk}/review/")
    items = page.get_by_test_id("review-item")
    expect(items).to_have_count(10)

    def item(i: int):  # type: ignore[no-untyped-def]
        return page.locator(f"#output-{outputs[i].pk}")

    def status(i: int):  # type: ignore[no-untyped-def]
        return item(i).get_by_test_id("item-status")

    expect(item(0)).to_have_class(lambda_current())

    # a: approve #1; the cursor moves on to #2.
    page.keyboard.press("a")
    expect(status(0)).to_have_text("Approved")
    expect(item(1)).to_have_class(lambda_current())

    # r: reject #2 with a reason.
    page.keyboard.press("r")
    reason = item(1).get_by_test_id("reject-reason")
    expect(reason).to_be_focused()
    reason.type("asks about a delay, not a lost card")
    page.keyboard.press("Enter")
    expect(status(1)).to_have_text("Rejected")
    expect(page.get_by_test_id("toast")).to_contain_text(f"Rejected #{outputs[1].pk}")

    # j/k move without deciding.
    expect(item(2)).to_have_class(lambda_current())
    page.keyboard.press("j")
    expect(item(3)).to_have_class(lambda_current())
    page.keyboard.press("k")
    expect(item(2)).to_have_class(lambda_current())

    # e: correct #3's label; the card shows the change as a diff.
    page.keyboard.press("e")
    field = item(2).get_by_test_id("edit-value")
    expect(field).to_be_focused()
    # The current label is selected: typing replaces it (a list of labels suggests as you type).
    page.keyboard.type("lost_or_stolen_card")
    expect(field).to_have_value("lost_or_stolen_card")
    page.keyboard.press("Enter")
    expect(status(2)).to_have_text("Edited")
    diff = item(2).get_by_test_id("edit-diff")
    expect(diff.locator("del")).to_have_text("card_arrival")
    expect(diff.locator("ins")).to_have_text("lost_or_stolen_card")
    expect(item(3)).to_have_class(lambda_current())

    # u: undo the edit; #3 is unreviewed again and becomes the current output.
    page.keyboard.press("u")
    expect(status(2)).to_have_text("Unreviewed")
    expect(item(2)).to_have_class(lambda_current())
    expect(item(2).get_by_test_id("edit-diff")).to_have_count(0)
    expect(page.get_by_test_id("toast")).to_contain_text("Undid your last decision")

    # ?: the list of keys; Esc closes it.
    page.keyboard.press("?")
    expect(page.get_by_test_id("keys-help")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.get_by_test_id("keys-help")).to_be_hidden()

    # Edit #3 again, then approve the other seven, one key each.
    page.keyboard.press("e")
    page.keyboard.type("top_up_failed")
    page.keyboard.press("Enter")
    expect(status(2)).to_have_text("Edited")
    for i in range(3, 10):
        expect(item(i)).to_have_class(lambda_current())
        page.keyboard.press("a")
        expect(status(i)).to_have_text("Approved")

    statuses = [TeacherOutput.objects.get(pk=o.pk).review_status for o in outputs]
    assert statuses == ["approved", "rejected", "edited"] + ["approved"] * 7
    assert TeacherOutput.objects.get(pk=outputs[2].pk).edited_value == "top_up_failed"
    assert (
        ReviewDecision.objects.get(output=outputs[1]).reason
        == "asks about a delay, not a lost card"
    )
    assert AuditEvent.objects.filter(action="undo").count() == 1
    assert AuditEvent.objects.filter(action="decision").count() == 11

    # A reload shows the same picture (nothing lived only in the page).
    page.reload()
    expect(page.locator(f"#output-{outputs[2].pk}").get_by_test_id("edit-diff")).to_be_visible()
    expect(page.locator(f"#output-{outputs[1].pk}").get_by_test_id("item-status")).to_have_text(
        "Rejected"
    )


def lambda_current():  # type: ignore[no-untyped-def]
    import re

    return re.compile(r"\bcurrent\b")
