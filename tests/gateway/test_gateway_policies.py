"""The gateway over real HTTP (Django test client → /api/v1/projects/<slug>/infer), the teacher
through the real openai SDK on a loopback fake, the student leg on a loopback OpenAI-compatible
server answering like the serving process; each policy, its recording and its accounting."""

from __future__ import annotations

from decimal import Decimal

import pytest

from gateway import routing
from gateway.models import GatewayRequest, PolicyChange
from gateway.recorder import DISAGREEMENT_FLAG
from projects.models import InputRow
from teachers.models import LedgerEntry, OutputFlag, TeacherOutput, TeacherRun
from tests.gateway.gateway_support import flush

pytestmark = pytest.mark.django_db(transaction=True)


def test_teacher_mode_answers_records_meters_and_caches(gw):  # type: ignore[no-untyped-def]
    first = gw.infer({"text": "my card was stolen"})
    assert first.status_code == 200, first.content
    result = first.json()["results"][0]
    assert result["answer"] == "lost_or_stolen_card"
    assert result["answered_by"] == "teacher"
    assert Decimal(result["cost_usd"]) > 0 and result["from_cache"] is False
    assert result["latency_ms"] > 0

    again = gw.infer({"text": "my card was stolen"}).json()["results"][0]
    assert again["answer"] == "lost_or_stolen_card"
    assert again["from_cache"] is True and Decimal(again["cost_usd"]) == 0
    assert gw.teacher.count("openai.chat") == 1  # the same request is never paid twice

    flush()
    assert GatewayRequest.objects.filter(project=gw.project).count() == 2
    # Recorded once (deduplicated by content) as an input and a teacher output of the project.
    rows = InputRow.objects.filter(project=gw.project)
    assert [r.data for r in rows] == [{"text": "my card was stolen"}]
    run = TeacherRun.objects.get(project=gw.project, source=routing.GATEWAY_SOURCE)
    output = TeacherOutput.objects.get(run=run)
    assert output.parsed == "lost_or_stolen_card" and output.input_id == rows[0].pk
    # Metered: one completed ledger row, and the run's totals equal the ledger.
    ledger = LedgerEntry.objects.get(run=run)
    assert ledger.status == "completed" and ledger.cost_usd == Decimal(result["cost_usd"])
    run.refresh_from_db()
    assert run.cost_usd == ledger.cost_usd and run.calls_made == 1 and run.cache_hits == 1


def test_batch_and_bad_input(gw):  # type: ignore[no-untyped-def]
    texts = ["card not arrived", "top up failed", "lost my card"]
    reply = gw.infer([{"text": t} for t in texts])
    assert reply.status_code == 200, reply.content
    assert [r["answer"] for r in reply.json()["results"]] == [
        "card_arrival",
        "top_up_failed",
        "lost_or_stolen_card",
    ]
    too_many = gw.infer([{"text": f"t{i}"} for i in range(101)])
    assert too_many.status_code == 400
    assert too_many.json()["errors"][0]["field"] == "inputs"
    missing = gw.infer({"body": "no text field"})
    assert missing.status_code == 400
    assert "inputs[0]" in missing.json()["detail"] and "text" in missing.json()["detail"]


def test_sampling_and_the_recording_switch(gw):  # type: ignore[no-untyped-def]
    gw.policy(sample_rate=0.5, seed=7)
    texts = [f"ticket number {i} about my card" for i in range(30)]
    for t in texts:
        assert gw.infer({"text": t}).status_code == 200
    flush()
    expected = sum(1 for r in GatewayRequest.objects.filter(project=gw.project) if r.sampled)
    assert 0 < expected < 30
    assert InputRow.objects.filter(project=gw.project).count() == expected

    gw.policy(record_inputs=False)
    gw.infer({"text": "one more, not recorded"})
    flush()
    assert InputRow.objects.filter(project=gw.project).count() == expected


def test_shadow_tracks_agreement_and_flags_disagreements_for_review(gw):  # type: ignore[no-untyped-def]
    gw.policy(mode="shadow")
    ok = gw.infer({"text": "lost card"}).json()["results"][0]
    bad = gw.infer({"text": "wrong answer please, card arrival"}).json()["results"][0]
    assert ok["answered_by"] == bad["answered_by"] == "teacher"
    flush()
    rows = {r.input_hash: r for r in GatewayRequest.objects.filter(project=gw.project)}
    assert sorted(r.agrees for r in rows.values()) == [False, True]
    assert gw.student.count("openai.chat") == 2  # the student answered both, in the background
    # The student leg carries the task's input, not the teacher's prompt: the serving process
    # renders the prompt its student was trained on around it (a prompt inside a prompt made
    # the real student disagree with everything).
    sent = sorted((r.body["messages"] for r in gw.student.requests("openai.chat")), key=str)
    assert sent == [
        [{"role": "user", "content": "lost card"}],
        [{"role": "user", "content": "wrong answer please, card arrival"}],
    ]
    assert all(r.body["logprobs"] is True for r in gw.student.requests("openai.chat"))
    flag = OutputFlag.objects.get(project=gw.project, code=DISAGREEMENT_FLAG)
    assert "top_up_failed" in flag.message
    assert DISAGREEMENT_FLAG in flag.output.flag_codes


def test_canary_sends_the_seeded_share_to_the_student(gw):  # type: ignore[no-untyped-def]
    gw.policy(mode="canary", canary_percent=40, seed=3, sample_rate=0)
    texts = [f"where is card {i}" for i in range(40)]
    answered = [gw.infer({"text": t}).json()["results"][0]["answered_by"] for t in texts]
    snap = routing.snapshot_for(gw.project)
    from projects.services import content_hash

    expected = [
        "student" if routing.share(3, "canary", content_hash({"text": t})) < 0.4 else "teacher"
        for t in texts
    ]
    assert answered == expected and 5 < answered.count("student") < 30
    assert snap.mode == "canary"


def test_cascade_keeps_confident_student_answers_only(gw):  # type: ignore[no-untyped-def]
    gw.policy(mode="cascade", cascade_threshold=0.9)
    sure = gw.infer({"text": "lost card"}).json()["results"][0]
    assert (sure["answered_by"], sure["confidence"]) == ("student", 0.97)
    unsure = gw.infer({"text": "unsure, it was stolen"}).json()["results"][0]
    assert unsure["answered_by"] == "teacher" and unsure["reason"] == "low_confidence"
    assert unsure["answer"] == "lost_or_stolen_card"
    flush()
    low = GatewayRequest.objects.get(project=gw.project, reason="low_confidence")
    assert low.agrees is False and low.student_confidence == 0.4


def test_student_mode_falls_back_to_the_teacher_when_the_student_is_down_or_slow(gw):  # type: ignore[no-untyped-def]
    gw.policy(mode="student", sample_rate=0)
    assert gw.infer({"text": "lost card"}).json()["results"][0]["answered_by"] == "student"
    gw.student.latency_s = 1.0
    gw.policy(student_timeout_ms=200)
    slow = gw.infer({"text": "stolen card"}).json()["results"][0]
    assert (slow["answered_by"], slow["reason"]) == ("teacher", "student_timeout")
    gw.student.stop()
    down = gw.infer({"text": "my stolen card"}).json()["results"][0]
    assert (down["answered_by"], down["reason"]) == ("teacher", "student_down")


def test_sampled_student_answers_are_checked_by_the_teacher_in_the_background(gw):  # type: ignore[no-untyped-def]
    gw.policy(mode="student", sample_rate=1.0)
    reply = gw.infer({"text": "wrong one: lost card"}).json()["results"][0]
    assert reply["answered_by"] == "student" and reply["answer"] == "top_up_failed"
    flush()
    row = GatewayRequest.objects.get(project=gw.project)
    assert row.agrees is False and row.cost_usd > 0
    assert OutputFlag.objects.filter(project=gw.project, code=DISAGREEMENT_FLAG).count() == 1


def test_teacher_retries_within_the_deadline_then_gives_up_clearly(gw):  # type: ignore[no-untyped-def]
    gw.teacher.fail_next(500, 2)
    retried = gw.infer({"text": "lost card"})
    assert retried.status_code == 200 and retried.json()["results"][0]["answered_by"] == "teacher"
    gw.teacher.latency_s = 2.0
    late = gw.infer({"text": "a new ticket"}, deadline_ms=300)
    assert late.status_code == 504
    assert "deadline of 300 ms" in late.json()["detail"]


def test_monthly_budget_stops_teacher_calls_or_hands_over_to_the_student(gw):  # type: ignore[no-untyped-def]
    gw.policy(monthly_budget_usd=Decimal("0.0001"), budget_fallback_to_student=False)
    assert gw.infer({"text": "first ticket"}).status_code == 200
    flush()
    refused = gw.infer({"text": "second ticket"})
    assert refused.status_code == 402
    assert "monthly teacher budget of $0.0001" in refused.json()["detail"]
    gw.policy(budget_fallback_to_student=True)
    fallback = gw.infer({"text": "second ticket"}).json()["results"][0]
    assert (fallback["answered_by"], fallback["reason"]) == ("student", "over_budget")


def test_policy_changes_are_audited_and_take_effect_without_restart(gw, settings):  # type: ignore[no-untyped-def]
    settings.GATEWAY_POLICY_CACHE_S = 0
    assert gw.infer({"text": "lost card"}).json()["results"][0]["answered_by"] == "teacher"
    # A change made elsewhere (another process: no cache to forget here) is read per request.
    from gateway.models import GatewayPolicy

    GatewayPolicy.objects.filter(project=gw.project).update(mode="student")
    assert gw.infer({"text": "lost card"}).json()["results"][0]["answered_by"] == "student"
    change = PolicyChange.objects.filter(policy__project=gw.project).first()
    assert change is not None and change.user == gw.owner and "served_model" in change.changes


def test_a_cached_project_is_still_one_teams_and_still_needs_the_serve_scope(gw):  # type: ignore[no-untyped-def]
    """Within the policy's cache time the gateway skips the project lookup; who may call it
    and which team's project a slug names are decided exactly as without the cache."""
    from tests.factories import MembershipFactory, ProjectFactory
    from tests.helpers.api import Api, token_for

    assert gw.infer({"text": "lost card"}).status_code == 200
    assert routing.cached_snapshot(gw.project.team_id, gw.project.slug) is not None
    member = MembershipFactory()
    outsider = Api(token_for(member, scopes=("serve",)))
    path = f"/api/v1/projects/{gw.project.slug}/infer"
    body = {"inputs": {"text": "lost card"}}
    assert outsider.post(path, body).status_code == 404
    namesake = ProjectFactory(team=member.team, name=gw.project.name)
    assert namesake.slug == gw.project.slug
    theirs = outsider.post(path, body)
    assert theirs.status_code == 503  # their own project, with no teacher set up: not ours
    assert "no teacher" in theirs.json()["detail"]
    owner = gw.owner.memberships.get(team=gw.project.team)
    reader = Api(token_for(owner, scopes=("read",))).post(path, body)
    assert reader.status_code == 403 and "its scopes are read" in reader.json()["detail"]
