"""Deciding one output at a time, as the keyboard queue does it: approve, reject with a reason,
edit (validated against the task, shown as a diff), comment, undo — each recorded in the audit
trail with who, what, before and after."""

from __future__ import annotations

import pytest
from django.urls import reverse

from review.models import AuditEvent, ReviewDecision
from teachers.models import TeacherOutput
from tests.factories import ProjectFactory
from tests.review.review_support import decide, make_outputs


def state(output: TeacherOutput) -> tuple[str, object]:
    output.refresh_from_db()
    return output.review_status, output.edited_value


def test_approve_reject_and_edit_save_and_are_audited(project, owner, client_for):  # type: ignore[no-untyped-def]
    a, b, c = make_outputs(project, ["card_arrival", "card_arrival", "top_up_failed"])
    client = client_for(owner)

    assert decide(client, a, "approve").status_code == 200
    response = decide(client, b, "reject", reason="the customer asks about a refund")
    assert response.status_code == 200
    response = decide(client, c, "edit", value="lost_or_stolen_card")
    assert response.status_code == 200
    html = response.content.decode()
    # The card that comes back shows the edit as a diff against the teacher's answer.
    assert "<del>top_up_failed</del>" in html and "<ins>lost_or_stolen_card</ins>" in html

    assert state(a) == ("approved", None)
    assert state(b) == ("rejected", None)
    assert state(c) == ("edited", "lost_or_stolen_card")
    assert ReviewDecision.objects.get(output=b).reason == "the customer asks about a refund"
    events = list(AuditEvent.objects.filter(project=project, action="decision").order_by("id"))
    assert [e.output_id for e in events] == [a.pk, b.pk, c.pk]
    assert all(e.actor == owner for e in events)
    assert events[2].before["status"] == "unreviewed"
    assert events[2].after["status"] == "edited"
    assert events[2].after["edited_value"] == "lost_or_stolen_card"
    assert "refund" in events[1].summary


def test_an_edit_outside_the_label_set_is_refused_with_the_reason(project, owner, client_for):  # type: ignore[no-untyped-def]
    (output,) = make_outputs(project, ["card_arrival"])
    response = decide(client_for(owner), output, "edit", value="refund_request")
    assert response.status_code == 400
    assert "not in the label set" in response.content.decode()
    assert state(output) == ("unreviewed", None)
    assert not ReviewDecision.objects.exists()
    assert not AuditEvent.objects.exists()


def test_json_edits_are_checked_against_the_schema_and_diffed(owner, team, client_for):  # type: ignore[no-untyped-def]
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
    (output,) = make_outputs(project, ['{"total": 12.5, "vendor": "ACME"}'])
    client = client_for(owner)
    bad = decide(client, output, "edit", value='{"total": "twelve", "vendor": "ACME"}')
    assert bad.status_code == 400
    assert "does not match the schema at total" in bad.content.decode()
    not_json = decide(client, output, "edit", value="{total: 12}")
    assert not_json.status_code == 400 and "not valid JSON" in not_json.content.decode()

    good = decide(client, output, "edit", value='{"vendor": "ACME Ltd", "total": 12.5}')
    assert good.status_code == 200
    assert state(output) == ("edited", {"vendor": "ACME Ltd", "total": 12.5})
    html = good.content.decode()
    assert "<ins>" in html and "Ltd" in html


def test_an_edit_that_says_what_the_teacher_said_is_an_approval(project, owner, client_for):  # type: ignore[no-untyped-def]
    (output,) = make_outputs(project, ["card_arrival"])
    decide(client_for(owner), output, "edit", value="card_arrival")
    assert state(output) == ("approved", None)


def test_comments_are_shown_on_the_card_and_audited(project, owner, client_for):  # type: ignore[no-untyped-def]
    (output,) = make_outputs(project, ["card_arrival"])
    client = client_for(owner)
    response = client.post(
        reverse("review:review_comment", args=[project.pk, output.pk]),
        {"text": "Ask the support lead: is this a card delivery question?"},
        HTTP_X_REVIEW_FRAGMENT="1",
    )
    assert response.status_code == 200
    assert "Ask the support lead" in response.content.decode()
    assert AuditEvent.objects.get(action="comment").output_id == output.pk
    empty = client.post(
        reverse("review:review_comment", args=[project.pk, output.pk]),
        {"text": "  "},
        HTTP_X_REVIEW_FRAGMENT="1",
    )
    assert empty.status_code == 400


def test_undo_restores_the_previous_state_and_is_audited(project, owner, client_for):  # type: ignore[no-untyped-def]
    a, b = make_outputs(project, ["card_arrival", "top_up_failed"])
    client = client_for(owner)
    decide(client, a, "approve")
    decide(client, b, "edit", value="card_arrival")
    decide(client, b, "reject")  # changing one's mind is a new decision on the current version
    assert state(b) == ("rejected", None)

    undo = reverse("review:review_undo", args=[project.pk])
    response = client.post(undo, HTTP_X_REVIEW_FRAGMENT="1")
    assert response.status_code == 200 and response["X-Output-Id"] == str(b.pk)
    assert state(b) == ("edited", "card_arrival")
    client.post(undo, HTTP_X_REVIEW_FRAGMENT="1")
    assert state(b) == ("unreviewed", None)
    client.post(undo, HTTP_X_REVIEW_FRAGMENT="1")
    assert state(a) == ("unreviewed", None)
    nothing = client.post(undo, HTTP_X_REVIEW_FRAGMENT="1")
    assert nothing.status_code == 400 and "no decision to undo" in nothing.content.decode()
    assert AuditEvent.objects.filter(action="undo").count() == 3
    b.refresh_from_db()
    assert b.reviewed_by is None and b.reviewed_at is None


def test_undo_is_refused_when_someone_decided_after_you(
    project, owner, member_with_role, client_for
):  # type: ignore[no-untyped-def]
    (output,) = make_outputs(project, ["card_arrival"])
    decide(client_for(owner), output, "approve")
    reviewer = member_with_role("reviewer")
    from django.test import Client

    other = Client()
    other.force_login(reviewer)
    assert decide(other, output, "reject").status_code == 200
    mine = Client()
    mine.force_login(owner)
    response = mine.post(
        reverse("review:review_undo", args=[project.pk]), HTTP_X_REVIEW_FRAGMENT="1"
    )
    assert response.status_code == 409
    assert "changed after your decision" in response.content.decode()
    assert state(output) == ("rejected", None)


def test_a_decision_on_a_stale_card_is_refused_and_names_who_decided(
    project, owner, member_with_role, client_for
):  # type: ignore[no-untyped-def]
    (output,) = make_outputs(project, ["card_arrival"])
    seen = output.review_version
    from django.test import Client

    first = Client()
    first.force_login(member_with_role("reviewer"))
    assert decide(first, output, "approve").status_code == 200
    late = client_for(owner).post(
        reverse("review:review_decide", args=[project.pk, output.pk]),
        {"action": "reject", "seen_version": seen},
        HTTP_X_REVIEW_FRAGMENT="1",
    )
    assert late.status_code == 409
    assert "reviewer-user decided this output first" in late.content.decode()
    assert state(output) == ("approved", None)
    assert ReviewDecision.objects.count() == 1


@pytest.mark.parametrize("action", ["approve", "reject"])
def test_without_the_script_a_decision_redirects_back_to_the_queue(
    project, owner, client_for, action
):  # type: ignore[no-untyped-def]
    (output,) = make_outputs(project, ["card_arrival"])
    response = client_for(owner).post(
        reverse("review:review_decide", args=[project.pk, output.pk]),
        {
            "action": action,
            "seen_version": 0,
            "next": f"/projects/{project.pk}/review/?status=unreviewed",
        },
    )
    assert response.status_code == 302
    assert response["Location"] == f"/projects/{project.pk}/review/?status=unreviewed"
    assert state(output)[0] == {"approve": "approved", "reject": "rejected"}[action]
