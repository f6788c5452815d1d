"""Two reviewers (here: twenty requests) deciding the same output at the same moment produce
exactly one decision and one audit row; everyone else is told, and nothing else is written."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from django.db import connections
from django.test import Client
from django.urls import reverse

from review.models import AuditEvent, ReviewDecision
from teams.models import Role
from tests.factories import MembershipFactory
from tests.review.review_support import make_outputs


def _race(users, url, data_for, n=20):  # type: ignore[no-untyped-def]
    barrier = threading.Barrier(n)
    results: list[int] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        try:
            client = Client()
            client.force_login(users[i % len(users)])
            barrier.wait(timeout=30)
            response = client.post(url, data_for(i), HTTP_X_REVIEW_FRAGMENT="1")
            with lock:
                results.append(response.status_code)
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    return Counter(results)


@pytest.mark.django_db(transaction=True)
def test_twenty_parallel_approvals_make_one_decision_and_one_audit_row(team, owner, project):  # type: ignore[no-untyped-def]
    reviewers = [
        MembershipFactory(team=team, role=Role.REVIEWER, user__username=f"rev{i}").user
        for i in range(4)
    ]
    (output,) = make_outputs(project, ["card_arrival"])
    url = reverse("review:review_decide", args=[project.pk, output.pk])
    statuses = _race(reviewers, url, lambda i: {"action": "approve", "seen_version": 0})
    assert statuses == Counter({200: 1, 409: 19})
    assert ReviewDecision.objects.filter(output=output).count() == 1
    assert AuditEvent.objects.filter(output=output, action="decision").count() == 1
    output.refresh_from_db()
    assert output.review_status == "approved"
    assert output.review_version == 1


@pytest.mark.django_db(transaction=True)
def test_parallel_conflicting_decisions_leave_exactly_one(team, owner, project):  # type: ignore[no-untyped-def]
    reviewer = MembershipFactory(team=team, role=Role.REVIEWER, user__username="rita").user
    (output,) = make_outputs(project, ["card_arrival"])
    url = reverse("review:review_decide", args=[project.pk, output.pk])
    statuses = _race(
        [owner, reviewer],
        url,
        lambda i: {"action": "approve" if i % 2 else "reject", "seen_version": 0},
    )
    assert statuses == Counter({200: 1, 409: 19})
    decision = ReviewDecision.objects.get(output=output)
    output.refresh_from_db()
    assert output.review_status == decision.status
    assert output.reviewed_by_id == decision.reviewer_id
    assert AuditEvent.objects.filter(output=output).count() == 1
