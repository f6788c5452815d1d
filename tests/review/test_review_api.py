"""/api/v1/projects/{slug}/outputs: the review queue's outputs, filters, decisions and bulk
decisions through the same services as the pages (optimistic seen_version → 409)."""

from __future__ import annotations

import pytest

from review.models import AuditEvent
from teachers.models import OutputFlag, ReviewStatus, TeacherOutput
from tests.factories import MembershipFactory, ProjectFactory
from tests.helpers.api import Api, token_for
from tests.review.review_support import LABELS, make_outputs

pytestmark = pytest.mark.django_db


def flag(output: TeacherOutput, code: str) -> None:
    OutputFlag.objects.create(output=output, project=output.project, code=code, message="odd")
    output.flag_codes = sorted({*output.flag_codes, code})
    output.save(update_fields=["flag_codes"])


@pytest.fixture
def setup():  # type: ignore[no-untyped-def]
    owner = MembershipFactory()
    project = ProjectFactory(team=owner.team, label_set=list(LABELS))
    outputs = make_outputs(
        project,
        [LABELS[0], LABELS[1], LABELS[0], "no idea"],
        texts=["where is my card", "card stolen", "card arrival?", "hmm"],
    )
    flag(outputs[3], "label_outside_set")
    return owner, project, outputs


def outputs_url(project, *rest: object) -> str:  # type: ignore[no-untyped-def]
    return "/".join([f"/api/v1/projects/{project.slug}/outputs", *map(str, rest)])


def test_outputs_are_listed_with_flags_and_filtered_like_the_queue(setup):  # type: ignore[no-untyped-def]
    owner, project, outputs = setup
    api = Api(token_for(owner))
    everything = api.get(outputs_url(project)).json()["results"]
    assert [o["id"] for o in everything] == [o.pk for o in outputs]  # queue order
    last = everything[3]
    assert last["flags"] == [{"code": "label_outside_set", "message": "odd", "score": None}]
    assert last["inputs"] == {"text": "hmm"} and last["review_status"] == "unreviewed"
    flagged = api.get(outputs_url(project), flag="any").json()["results"]
    assert [o["id"] for o in flagged] == [outputs[3].pk]
    by_label = api.get(outputs_url(project), label=LABELS[0]).json()["results"]
    assert [o["id"] for o in by_label] == [outputs[0].pk, outputs[2].pk]
    searched = api.get(outputs_url(project), q="stolen").json()["results"]
    assert [o["id"] for o in searched] == [outputs[1].pk]
    bad = api.get(outputs_url(project), status="maybe")
    assert bad.status_code == 400 and "unknown status 'maybe'" in bad.json()["detail"]
    one = api.get(outputs_url(project, outputs[1].pk)).json()
    assert one["answer"] == LABELS[1] and one["review_version"] == 0


def test_approve_reject_and_edit_one_output(setup):  # type: ignore[no-untyped-def]
    owner, project, outputs = setup
    api = Api(token_for(owner))
    approved = api.post(
        outputs_url(project, outputs[0].pk, "decision"), {"action": "approve", "seen_version": 0}
    )
    assert approved.status_code == 200
    assert approved.json()["review_status"] == "approved"
    assert approved.json()["reviewed_by"] == owner.user.username
    edited = api.post(
        outputs_url(project, outputs[3].pk, "decision"),
        {"action": "edit", "seen_version": 0, "value": LABELS[2], "reason": "obvious"},
    ).json()
    assert edited["review_status"] == "edited" and edited["answer"] == LABELS[2]
    refused = api.post(
        outputs_url(project, outputs[1].pk, "decision"),
        {"action": "edit", "seen_version": 0, "value": "not a label"},
    )
    assert refused.status_code == 400 and refused.json()["errors"][0]["field"] == "value"
    outputs[1].refresh_from_db()
    assert outputs[1].review_status == ReviewStatus.UNREVIEWED
    assert AuditEvent.objects.filter(project=project).count() == 2
    decided = api.get(outputs_url(project), status="decided").json()["results"]
    assert [o["id"] for o in decided] == [outputs[0].pk, outputs[3].pk]


def test_a_decision_on_a_stale_version_is_a_409_and_writes_nothing(setup):  # type: ignore[no-untyped-def]
    owner, project, outputs = setup
    colleague = MembershipFactory(team=owner.team, role="reviewer")
    first = Api(token_for(colleague)).post(
        outputs_url(project, outputs[0].pk, "decision"), {"action": "reject", "seen_version": 0}
    )
    assert first.status_code == 200
    late = Api(token_for(owner)).post(
        outputs_url(project, outputs[0].pk, "decision"), {"action": "approve", "seen_version": 0}
    )
    assert late.status_code == 409
    assert f"{colleague.user.username} decided this output first" in late.json()["detail"]
    assert late.json()["errors"][0] == {
        "field": "seen_version",
        "message": "the output is now at version 1",
    }
    outputs[0].refresh_from_db()
    assert outputs[0].review_status == ReviewStatus.REJECTED


def test_bulk_decision_by_filter_counts_then_approves(setup):  # type: ignore[no-untyped-def]
    owner, project, outputs = setup
    api = Api(token_for(owner))
    url = f"/api/v1/projects/{project.slug}/outputs/bulk-decision"
    body = {"action": "approve", "filters": {"flag": "none", "status": "unreviewed"}}
    dry = api.post(url, {**body, "dry_run": True}).json()
    assert dry["matched"] == 3 and dry["changed"] == 0
    assert dry["filter"] == ["status: unreviewed", "not flagged"]
    stale = api.post(url, {**body, "expected_count": 2})
    assert stale.status_code == 409 and "now matches 3 outputs" in stale.json()["detail"]
    assert not TeacherOutput.objects.exclude(review_status=ReviewStatus.UNREVIEWED).exists()
    done = api.post(url, {**body, "expected_count": 3}).json()
    assert done["changed"] == 3
    statuses = dict(TeacherOutput.objects.values_list("pk", "review_status"))
    assert statuses == {
        outputs[0].pk: "approved",
        outputs[1].pk: "approved",
        outputs[2].pk: "approved",
        outputs[3].pk: "unreviewed",
    }
    again = api.post(url, body).json()
    assert again["matched"] == 0 and again["changed"] == 0


def test_a_viewer_reads_outputs_but_may_not_decide(setup):  # type: ignore[no-untyped-def]
    owner, project, outputs = setup
    viewer = Api(token_for(MembershipFactory(team=owner.team, role="viewer"), scopes=("read",)))
    assert viewer.get(outputs_url(project)).status_code == 200
    refused = viewer.post(
        outputs_url(project, outputs[0].pk, "decision"), {"action": "approve", "seen_version": 0}
    )
    assert refused.status_code == 403
    bulk = viewer.post(
        f"/api/v1/projects/{project.slug}/outputs/bulk-decision", {"action": "approve"}
    )
    assert bulk.status_code == 403
    assert not TeacherOutput.objects.exclude(review_status=ReviewStatus.UNREVIEWED).exists()
