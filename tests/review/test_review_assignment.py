"""Splitting the queue among reviewers with an overlap, blind second reviews on the overlap,
agreement (percent and Cohen's kappa), and conflicts that an owner resolves."""

from __future__ import annotations

import re
from collections import Counter

from django.test import Client
from django.urls import reverse

from dataset_versions import services as dataset_services
from review.models import AuditEvent, ReviewAssignment
from teachers.models import TeacherOutput
from teams.models import Role
from tests.factories import MembershipFactory
from tests.review.review_support import decide, make_outputs


def reviewer(team, name):  # type: ignore[no-untyped-def]
    user = MembershipFactory(team=team, role=Role.REVIEWER, user__username=name).user
    client = Client()
    client.force_login(user)
    return user, client


def test_assignment_splits_the_queue_with_the_overlap_asked_for(team, project, owner, client_for):  # type: ignore[no-untyped-def]
    ann, _ = reviewer(team, "ann")
    bob, _ = reviewer(team, "bob")
    make_outputs(project, ["card_arrival"] * 40)
    response = client_for(owner).post(
        reverse("review:review_assign", args=[project.pk]),
        {"reviewers": [ann.pk, bob.pk], "overlap_percent": 25, "seed": 3},
    )
    assert response.status_code == 302
    per_output = Counter(ReviewAssignment.objects.values_list("output_id", flat=True))
    assert len(per_output) == 40
    assert sum(1 for n in per_output.values() if n == 2) == 10  # 25 % of 40
    per_reviewer = Counter(ReviewAssignment.objects.values_list("reviewer__username", flat=True))
    assert per_reviewer == {"ann": 25, "bob": 25}
    event = AuditEvent.objects.get(action="assignment")
    assert event.after["overlap_outputs"] == 10


def test_overlap_reviews_are_blind_and_disagreements_become_conflicts(
    team, project, owner, client_for
):  # type: ignore[no-untyped-def]
    ann, ann_client = reviewer(team, "ann")
    bob, bob_client = reviewer(team, "bob")
    outs = make_outputs(project, ["card_arrival"] * 6)
    owner_client = client_for(owner)
    owner_client.post(
        reverse("review:review_assign", args=[project.pk]),
        {"reviewers": [ann.pk, bob.pk], "overlap_percent": 100, "seed": 0},
    )
    assert all(
        ReviewAssignment.objects.filter(output=o).count() == 2 for o in outs
    )  # everything double-reviewed

    # Ann's queue ("to do") holds all six; she approves four, rejects one, edits one.
    todo = ann_client.get(reverse("review:review_queue", args=[project.pk]), {"assigned": "todo"})
    assert "6 outputs match" in todo.content.decode()
    for o in outs[:4]:
        assert decide(ann_client, o, "approve").status_code == 200
    decide(ann_client, outs[4], "reject")
    decide(ann_client, outs[5], "edit", value="top_up_failed")

    # Bob does not see Ann's decisions before he decides; his card says it waits for him.
    card = bob_client.get(reverse("review:review_item", args=[project.pk, outs[0].pk]))
    html = card.content.decode()
    assert "Awaiting your independent review" in html and "ann" not in html.split("assigned:")[0]
    # Bob decides on the version he saw before Ann (his page was loaded earlier): accepted as
    # his own, second review.
    for o in outs[:3]:
        response = bob_client.post(
            reverse("review:review_decide", args=[project.pk, o.pk]),
            {"action": "approve", "seen_version": 0},
            HTTP_X_REVIEW_FRAGMENT="1",
        )
        assert response.status_code == 200
    decide(bob_client, outs[3], "reject")  # conflict
    decide(bob_client, outs[4], "reject")  # agrees
    decide(bob_client, outs[5], "edit", value="lost_or_stolen_card")  # a different edit: conflict

    statuses = {o.pk: (o.review_status, o.review_conflict) for o in TeacherOutput.objects.all()}
    # The first reviewer's decision stands; disagreements are marked for an owner.
    assert [statuses[o.pk] for o in outs] == [
        ("approved", False),
        ("approved", False),
        ("approved", False),
        ("approved", True),
        ("rejected", False),
        ("edited", True),
    ]
    page = owner_client.get(reverse("review:review_agreement", args=[project.pk])).content.decode()
    assert re.search(r'data-testid="agreement-percent">66\.7 %', page)
    # kappa over (approve x3, approve/reject, reject/reject, edit/edit') computed by sklearn
    assert re.search(r'data-testid="agreement-kappa">0\.4\d', page)
    assert page.count('data-testid="conflict-row"') == 2
    assert "Use ann&#x27;s edit" in page and "Use bob&#x27;s edit" in page

    # A reviewer cannot settle a conflict by deciding again.
    again = decide(ann_client, outs[3], "approve")
    assert again.status_code == 409

    # Conflicted outputs stay out of datasets until resolved.
    rows = dataset_services.dataset_rows(project=project, include_references=False)
    assert {r.row_id for r in rows} == {f"out-{o.pk}" for o in outs[:3]}

    # The owner resolves: takes Bob's edit on #6, rejects #4.
    resolve = reverse("review:review_resolve", args=[project.pk, outs[5].pk])
    owner_client.post(resolve, {"action": "edit", "value": "lost_or_stolen_card"})
    owner_client.post(
        reverse("review:review_resolve", args=[project.pk, outs[3].pk]), {"action": "reject"}
    )
    final = {
        o.pk: (o.review_status, o.review_conflict, o.edited_value)
        for o in TeacherOutput.objects.all()
    }
    assert final[outs[5].pk] == ("edited", False, "lost_or_stolen_card")
    assert final[outs[3].pk] == ("rejected", False, None)
    assert AuditEvent.objects.filter(action="resolution").count() == 2
    page = owner_client.get(reverse("review:review_agreement", args=[project.pk])).content.decode()
    assert 'data-testid="no-conflicts"' in page


def test_reviewers_cannot_assign_or_resolve(team, project, client_for, member_with_role):  # type: ignore[no-untyped-def]
    rev = member_with_role("reviewer")
    (out,) = make_outputs(project, ["card_arrival"])
    TeacherOutput.objects.filter(pk=out.pk).update(review_conflict=True)
    client = client_for(rev)
    assign = client.post(
        reverse("review:review_assign", args=[project.pk]),
        {"reviewers": [rev.pk], "overlap_percent": 0},
    )
    assert assign.status_code == 403
    resolve = client.post(
        reverse("review:review_resolve", args=[project.pk, out.pk]), {"action": "approve"}
    )
    assert resolve.status_code == 403
    assert not ReviewAssignment.objects.exists()
    out.refresh_from_db()
    assert out.review_conflict and out.review_status == "unreviewed"
    # ... but they can read the agreement page.
    assert client.get(reverse("review:review_agreement", args=[project.pk])).status_code == 200
