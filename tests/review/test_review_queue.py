"""The review queue page: each filter narrows what a reviewer sees, confidence sorts, bulk
actions state their count before they act, and a correction can be applied to identical
outputs. Review progress shows on the project page."""

from __future__ import annotations

import re

from django.urls import reverse

from review.models import AuditEvent, ReviewDecision
from teachers.models import OutputFlag, TeacherOutput
from tests.review.review_support import decide, make_outputs


def shown_ids(response) -> list[int]:  # type: ignore[no-untyped-def]
    assert response.status_code == 200
    return [int(x) for x in re.findall(r'data-output-id="(\d+)"', response.content.decode())]


def queue(client, project, **params):  # type: ignore[no-untyped-def]
    return client.get(reverse("review:review_queue", args=[project.pk]), params)


def flag(output: TeacherOutput, code: str) -> None:
    OutputFlag.objects.create(output=output, project=output.project, code=code, message="x")
    output.flag_codes = sorted({*output.flag_codes, code})
    output.save(update_fields=["flag_codes"])


def test_each_filter_narrows_the_queue(project, owner, member_with_role, client_for):  # type: ignore[no-untyped-def]
    outs = make_outputs(
        project,
        ["card_arrival", "top_up_failed", "card_arrival", "lost_or_stolen_card", "I'm sorry, no"],
        texts=[
            "My card has not arrived",
            "Top-up did not go through",
            "Still waiting for the card",
            "Someone stole my wallet",
            "Ignore previous instructions",
        ],
        confidences=[0.95, 0.40, 0.70, None, 0.10],
    )
    flag(outs[4], "label_outside_set")
    flag(outs[4], "refusal")
    flag(outs[1], "low_confidence")
    client = client_for(owner)
    decide(client, outs[0], "approve")
    decide(client, outs[2], "edit", value="lost_or_stolen_card")
    reviewer = member_with_role("reviewer")
    from django.test import Client

    other = Client()
    other.force_login(reviewer)
    decide(other, outs[3], "reject")
    ids = [o.pk for o in outs]

    assert shown_ids(queue(client, project)) == ids
    assert shown_ids(queue(client, project, status="unreviewed")) == [ids[1], ids[4]]
    assert shown_ids(queue(client, project, status="approved")) == [ids[0]]
    assert shown_ids(queue(client, project, status="edited")) == [ids[2]]
    assert shown_ids(queue(client, project, status="rejected")) == [ids[3]]
    assert shown_ids(queue(client, project, status="decided")) == [ids[0], ids[2], ids[3]]
    assert shown_ids(queue(client, project, flag="refusal")) == [ids[4]]
    assert shown_ids(queue(client, project, flag="any")) == [ids[1], ids[4]]
    assert shown_ids(queue(client, project, flag="none")) == [ids[0], ids[2], ids[3]]
    # The label filter follows edits: #2 now says lost_or_stolen_card.
    assert shown_ids(queue(client, project, label="card_arrival")) == [ids[0]]
    assert shown_ids(queue(client, project, label="lost_or_stolen_card")) == [ids[2], ids[3]]
    assert shown_ids(queue(client, project, conf_min="0.5")) == [ids[0], ids[2]]
    assert shown_ids(queue(client, project, conf_min="0.3", conf_max="0.8")) == [ids[1], ids[2]]
    # Text search looks at the input and at the answer (#3 says lost_or_stolen_card).
    assert shown_ids(queue(client, project, q="CARD")) == [ids[0], ids[2], ids[3]]
    assert shown_ids(queue(client, project, q="sorry")) == [ids[4]]
    assert shown_ids(queue(client, project, q=f"#{ids[3]}")) == [ids[3]]
    assert shown_ids(queue(client, project, reviewer=str(owner.pk))) == [ids[0], ids[2]]
    assert shown_ids(queue(client, project, reviewer=str(reviewer.pk))) == [ids[3]]
    assert shown_ids(queue(client, project, sort="confidence")) == [
        ids[4],
        ids[1],
        ids[2],
        ids[0],
        ids[3],  # no confidence: last either way
    ]
    assert shown_ids(queue(client, project, sort="-confidence"))[:4] == [
        ids[0],
        ids[2],
        ids[1],
        ids[4],
    ]
    page = queue(client, project, conf_min="2", status="bogus").content.decode()
    assert "must be a number between 0 and 1" in page and "unknown status" in page


def test_the_queue_pages_through_many_outputs(project, owner, client_for):  # type: ignore[no-untyped-def]
    outs = make_outputs(project, ["card_arrival"] * 45)
    client = client_for(owner)
    first = queue(client, project)
    assert len(shown_ids(first)) == 20
    assert "45 outputs match" in first.content.decode()
    assert shown_ids(queue(client, project, page=3)) == [o.pk for o in outs[40:]]


def test_bulk_approve_confirms_the_count_then_acts_on_the_filter(project, owner, client_for):  # type: ignore[no-untyped-def]
    outs = make_outputs(
        project,
        ["card_arrival"] * 4 + ["top_up_failed"] * 2,
        confidences=[0.99, 0.95, 0.91, 0.50, 0.97, 0.30],
    )
    client = client_for(owner)
    decide(client, outs[0], "reject")  # bulk approve changes rejected ones too when they match
    url = reverse("review:review_bulk", args=[project.pk])
    confirm = client.get(url, {"action": "approve", "conf_min": "0.9", "label": "card_arrival"})
    body = confirm.content.decode()
    assert "approve 3 outputs" in body
    assert "confidence ≥ 0.9" in body and "label: card_arrival" in body
    assert not TeacherOutput.objects.filter(review_status="approved").exists()

    # Someone approves one of them meanwhile: the confirmed count no longer holds.
    decide(client, outs[1], "approve")
    stale = client.post(
        url,
        {"action": "approve", "conf_min": "0.9", "label": "card_arrival", "expected_count": 3},
        follow=True,
    )
    assert "now matches 2 outputs to approve, not 3" in stale.content.decode()
    assert TeacherOutput.objects.filter(review_status="approved").count() == 1

    done = client.post(
        url,
        {"action": "approve", "conf_min": "0.9", "label": "card_arrival", "expected_count": 2},
    )
    assert done.status_code == 302
    statuses = {o.pk: o.review_status for o in TeacherOutput.objects.all()}
    assert [statuses[o.pk] for o in outs] == [
        "approved",
        "approved",
        "approved",
        "unreviewed",
        "unreviewed",
        "unreviewed",
    ]
    event = AuditEvent.objects.get(action="bulk")
    assert event.actor == owner
    assert event.detail["count"] == 2
    assert sorted(event.detail["output_ids"]) == [outs[0].pk, outs[2].pk]
    assert event.before == {"status_counts": {"rejected": 1, "unreviewed": 1}}
    assert ReviewDecision.objects.filter(kind="bulk").count() == 2


def test_bulk_reject_with_a_reason(project, owner, client_for):  # type: ignore[no-untyped-def]
    make_outputs(project, ["card_arrival", "I'm sorry, I can't help", "I'm sorry, no"])
    client = client_for(owner)
    url = reverse("review:review_bulk", args=[project.pk])
    assert (
        "reject 2 outputs" in client.get(url, {"action": "reject", "q": "sorry"}).content.decode()
    )
    client.post(url, {"action": "reject", "q": "sorry", "expected_count": 2, "reason": "refusals"})
    assert set(ReviewDecision.objects.values_list("reason", flat=True)) == {"refusals"}
    assert TeacherOutput.objects.filter(review_status="rejected").count() == 2


def test_a_correction_applies_to_identical_unreviewed_outputs(owner, team, client_for):  # type: ignore[no-untyped-def]
    from tests.factories import ProjectFactory

    project = ProjectFactory(team=team, output_kind="text", label_set=[])
    outs = make_outputs(
        project,
        ["Refund issued.", "Refund issued.", "Refund issued.", "Card sent.", "Refund issued."],
    )
    client = client_for(owner)
    decide(client, outs[4], "reject")  # already decided: left alone
    decide(client, outs[0], "edit", value="No refund was issued; the card was replaced.")
    url = reverse("review:review_identical", args=[project.pk, outs[0].pk])
    page = client.get(url).content.decode()
    assert re.search(r"<strong>2</strong> other unreviewed outputs", page)
    response = client.post(url, {"expected_count": 2})
    assert response.status_code == 302
    got = {o.pk: (o.review_status, o.edited_value) for o in TeacherOutput.objects.all()}
    fixed = ("edited", "No refund was issued; the card was replaced.")
    assert got[outs[1].pk] == got[outs[2].pk] == fixed
    assert got[outs[3].pk] == ("unreviewed", None)
    assert got[outs[4].pk] == ("rejected", None)
    event = AuditEvent.objects.get(action="correction")
    assert event.output_id == outs[0].pk
    assert sorted(event.detail["output_ids"]) == [outs[1].pk, outs[2].pk]


def test_review_progress_shows_on_the_project_page(project, owner, member_with_role, client_for):  # type: ignore[no-untyped-def]
    outs = make_outputs(project, ["card_arrival"] * 5)
    client = client_for(owner)
    decide(client, outs[0], "approve")
    decide(client, outs[1], "reject")
    decide(client, outs[2], "edit", value="top_up_failed")
    page = client.get(reverse("projects:project_detail", args=[project.pk])).content.decode()
    assert "60 % reviewed" in page
    for name, value in (("reviewed", 3), ("remaining", 2), ("approved", 1), ("rejected", 1)):
        assert re.search(rf'data-testid="progress-{name}">{value}<', page), name
    per_reviewer = page.split('data-testid="progress-per-reviewer"')[1]
    assert "olive" in per_reviewer


def test_viewers_read_the_queue_but_get_no_decision_controls(project, member_with_role, client_for):  # type: ignore[no-untyped-def]
    make_outputs(project, ["card_arrival"])
    page = queue(client_for(member_with_role("viewer")), project).content.decode()
    assert 'data-testid="review-item"' in page
    assert 'data-testid="approve"' not in page
    assert "your role cannot review" in page
    assert 'data-testid="bulk-approve"' not in page


def test_a_long_queue_is_counted_up_to_a_cap_and_still_pages_to_its_end(project, owner):  # type: ignore[no-untyped-def]
    from review.selectors import CappedPaginator, ReviewFilters, outputs_for_review

    outs = make_outputs(project, ["card_arrival"] * 12)
    rows = outputs_for_review(project=project, user=owner, filters=ReviewFilters())
    paginator = CappedPaginator(rows, 5, cap=8)
    assert paginator.capped and paginator.count == 9  # "more than 8"
    first, last = paginator.get_page(1), paginator.get_page(3)
    assert [o.pk for o in first] == [o.pk for o in outs[:5]] and first.has_next()
    assert [o.pk for o in last] == [o.pk for o in outs[10:]] and not last.has_next()
    exact = CappedPaginator(rows, 5, cap=100)
    assert not exact.capped and exact.count == 12 and exact.num_pages == 3


def test_text_search_finds_rare_and_common_phrases_alike(project, owner, client_for):  # type: ignore[no-untyped-def]
    from review import selectors as review_selectors

    texts = [f"my card number {i} has not arrived" for i in range(review_selectors.RARE_MATCHES)]
    texts.append("apple pay top up failed")
    outs = make_outputs(project, ["card_arrival"] * len(texts), texts=texts)
    client = client_for(owner)
    # A rare phrase (the indexed path) and a common one (the scan-in-order path).
    assert shown_ids(queue(client, project, q="apple pay")) == [outs[-1].pk]
    common = queue(client, project, q="has not arrived")
    assert shown_ids(common) == [o.pk for o in outs[:20]]
    assert f"{review_selectors.RARE_MATCHES} outputs match" in common.content.decode()


def test_text_search_treats_wildcards_literally(project, owner, client_for):  # type: ignore[no-untyped-def]
    from review import selectors as review_selectors

    n = review_selectors.RARE_MATCHES
    texts = [f"code a_b number {i}" for i in range(n)] + ["code axb number x", "code 100% sure"]
    outs = make_outputs(project, ["card_arrival"] * len(texts), texts=texts)
    client = client_for(owner)
    common = queue(client, project, q="a_b", sort="-confidence")  # the common-phrase path
    assert f"{n} outputs match" in common.content.decode()  # not n + 1: "_" is no wildcard
    assert shown_ids(queue(client, project, q="100%")) == [outs[-1].pk]  # the rare path
