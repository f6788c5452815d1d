"""Role rules for review and datasets, through the real views: reviewers review, viewers only
read, engineers also run checks and freeze, owners also set rules, assign and resolve conflicts.
A role without the permission gets 403 and the database is unchanged."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from django.urls import reverse

from dataset_versions import services as dataset_services
from dataset_versions.models import DatasetVersion
from review import services as review_services
from review.models import (
    AuditEvent,
    ReviewAssignment,
    ReviewComment,
    ReviewDecision,
    ReviewRule,
    ReviewSettings,
)
from teachers.models import TeacherOutput
from teams.models import Role
from tests.review.review_support import make_outputs


@dataclass
class World:
    project: Any
    owner: Any
    outputs: list[Any]
    rule: Any
    conflict: Any


@pytest.fixture
def world(project, owner) -> World:  # type: ignore[no-untyped-def]
    outputs = make_outputs(project, ["card_arrival"] * 4 + ["top_up_failed"] * 2)
    review_services.output_decide(
        project=project, user=owner, output_id=outputs[5].pk, action="approve", seen_version=0
    )
    TeacherOutput.objects.filter(pk=outputs[4].pk).update(review_conflict=True)
    rule = review_services.rule_create(
        project=project,
        user=owner,
        name="r",
        definition={"action": "approve", "when": {"unflagged": True}},
    )
    return World(project, owner, outputs, rule, outputs[4])


def snapshot(w: World) -> dict[str, Any]:
    return {
        "outputs": list(
            TeacherOutput.objects.filter(project=w.project)
            .order_by("id")
            .values_list("review_status", "edited_value", "review_conflict", "review_version")
        ),
        "decisions": ReviewDecision.objects.count(),
        "comments": ReviewComment.objects.count(),
        "audit": AuditEvent.objects.count(),
        "rules": list(ReviewRule.objects.values_list("name", "definition")),
        "assignments": ReviewAssignment.objects.count(),
        "versions": DatasetVersion.objects.count(),
        "settings": list(ReviewSettings.objects.values_list("judge_rubric", flat=True)),
    }


def url(name: str, w: World, *args: Any) -> str:
    app = "dataset_versions" if name.startswith(("dataset_", "datasets_")) else "review"
    return reverse(f"{app}:{name}", args=[w.project.pk, *args])


def _decide_first(w: World, user: Any) -> None:
    review_services.output_decide(
        project=w.project, user=user, output_id=w.outputs[0].pk, action="approve", seen_version=0
    )


# name -> (prepare, request, what the database shows when it worked)
ACTIONS: dict[str, tuple[Any, Any, Any]] = {
    "approve": (
        None,
        lambda c, w: c.post(
            url("review_decide", w, w.outputs[1].pk), {"action": "approve", "seen_version": 0}
        ),
        lambda w: TeacherOutput.objects.get(pk=w.outputs[1].pk).review_status == "approved",
    ),
    "edit": (
        None,
        lambda c, w: c.post(
            url("review_decide", w, w.outputs[1].pk),
            {"action": "edit", "seen_version": 0, "value": "top_up_failed"},
        ),
        lambda w: TeacherOutput.objects.get(pk=w.outputs[1].pk).review_status == "edited",
    ),
    "undo": (
        _decide_first,
        lambda c, w: c.post(url("review_undo", w)),
        lambda w: TeacherOutput.objects.get(pk=w.outputs[0].pk).review_status == "unreviewed",
    ),
    "comment": (
        None,
        lambda c, w: c.post(url("review_comment", w, w.outputs[1].pk), {"text": "hm"}),
        lambda w: ReviewComment.objects.exists(),
    ),
    "bulk reject": (
        None,
        lambda c, w: c.post(
            url("review_bulk", w), {"action": "reject", "status": "unreviewed", "expected_count": 4}
        ),
        lambda w: TeacherOutput.objects.filter(review_status="rejected").count() == 4,
    ),
    "apply to identical": (
        None,
        lambda c, w: c.post(url("review_identical", w, w.outputs[5].pk), {"expected_count": 0}),
        # No identical unreviewed output: the action is refused politely, but only after the
        # role check, so a 200/302 here means the role was allowed to try.
        lambda w: True,
    ),
    "save judge settings": (
        None,
        lambda c, w: c.post(
            url("review_automation", w), {"form": "judge", "rubric": "be right", "scale": "1-5"}
        ),
        lambda w: ReviewSettings.objects.filter(judge_rubric="be right").exists(),
    ),
    "run checks": (
        None,
        lambda c, w: c.post(url("review_automation", w), {"form": "checks"}),
        lambda w: w.project.jobs.filter(kind="review_checks").exists(),
    ),
    "create rule": (
        None,
        lambda c, w: c.post(
            url("review_rule_create", w), {"action": "reject", "unflagged": "no", "name": "flagged"}
        ),
        lambda w: ReviewRule.objects.filter(name="flagged").exists(),
    ),
    "delete rule": (
        None,
        lambda c, w: c.post(url("review_rule_delete", w, w.rule.pk)),
        lambda w: not ReviewRule.objects.filter(pk=w.rule.pk).exists(),
    ),
    "apply rules": (
        None,
        lambda c, w: c.post(url("review_rules_apply", w)),
        lambda w: ReviewDecision.objects.filter(kind="rule").exists(),
    ),
    "assign": (
        None,
        lambda c, w: c.post(
            url("review_assign", w), {"reviewers": [w.owner.pk], "overlap_percent": 0, "seed": 0}
        ),
        lambda w: ReviewAssignment.objects.exists(),
    ),
    "resolve conflict": (
        None,
        lambda c, w: c.post(url("review_resolve", w, w.conflict.pk), {"action": "reject"}),
        lambda w: not TeacherOutput.objects.get(pk=w.conflict.pk).review_conflict,
    ),
    "freeze": (
        None,
        lambda c, w: c.post(
            url("dataset_new", w),
            {
                "name": "v9",
                "seed": 0,
                "train": 1,
                "validation": 0,
                "test": 0,
                "near_duplicate_threshold": 0.8,
            },
        ),
        lambda w: w.project.jobs.filter(kind="dataset_freeze").exists(),
    ),
}

REVIEW = {"approve", "edit", "undo", "comment", "bulk reject", "apply to identical"}
WRITE = REVIEW | {"save judge settings", "run checks", "freeze"}
ALLOWED = {
    Role.OWNER: set(ACTIONS),
    Role.ENGINEER: WRITE,
    Role.REVIEWER: REVIEW,
    Role.VIEWER: set(),
}
CASES = [(role, action) for role in ALLOWED for action in ACTIONS]


def actor(role: str, w: World, member_with_role: Any) -> Any:
    return w.owner if role == Role.OWNER else member_with_role(role)


@pytest.mark.parametrize(
    ("role", "action"),
    [c for c in CASES if c[1] not in ALLOWED[c[0]]],
    ids=lambda v: str(v).replace(" ", "-"),
)
def test_a_role_without_the_permission_gets_403_and_nothing_changes(
    world, member_with_role, client_for, role, action, django_capture_on_commit_callbacks
):  # type: ignore[no-untyped-def]
    user = actor(role, world, member_with_role)
    prepare, request, _worked = ACTIONS[action]
    if prepare:
        prepare(world, user)
    client = client_for(user)
    before = snapshot(world)
    with django_capture_on_commit_callbacks(execute=False):
        response = request(client, world)
    assert response.status_code == 403
    assert snapshot(world) == before


@pytest.mark.parametrize(
    ("role", "action"),
    [c for c in CASES if c[1] in ALLOWED[c[0]]],
    ids=lambda v: str(v).replace(" ", "-"),
)
def test_a_role_with_the_permission_succeeds(
    world, member_with_role, client_for, role, action, django_capture_on_commit_callbacks
):  # type: ignore[no-untyped-def]
    user = actor(role, world, member_with_role)
    prepare, request, worked = ACTIONS[action]
    if prepare:
        prepare(world, user)
    client = client_for(user)
    with django_capture_on_commit_callbacks(execute=False):
        response = request(client, world)
    assert response.status_code in (200, 302)
    assert worked(world), f"{role} could not {action}"


@pytest.mark.parametrize("role", [Role.REVIEWER, Role.VIEWER])
def test_every_review_page_is_readable_by_every_role(world, member_with_role, client_for, role):  # type: ignore[no-untyped-def]
    version = dataset_services.dataset_version_create(
        project=world.project, user=world.owner, options=dataset_services.freeze_options(name="v1")
    )
    client = client_for(member_with_role(role))
    for name, args in [
        ("review_queue", []),
        ("review_item", [world.outputs[0].pk]),
        ("review_automation", []),
        ("review_agreement", []),
        ("audit_log", []),
        ("datasets_list", []),
        ("dataset_detail", [version.pk]),
    ]:
        assert client.get(url(name, world, *args)).status_code == 200, name
    assert (
        client.get(url("dataset_export", world, version.pk), {"format": "csv"}).status_code == 200
    )
    # Pages that only exist to write are refused even when only opened.
    assert client.get(url("review_assign", world)).status_code == 403
    assert client.get(url("dataset_new", world)).status_code == 403
    if role == Role.VIEWER:
        assert client.get(url("review_bulk", world), {"action": "approve"}).status_code == 403
        assert client.get(url("review_identical", world, world.outputs[5].pk)).status_code == 403
