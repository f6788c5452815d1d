"""Automatic checks over the whole population, auto rules (set by owners, applied and recorded
as the rule's decisions) and the optional LLM judge, run as a job by a real worker against the
loopback provider server."""

from __future__ import annotations

import json
import re
from decimal import Decimal

import pytest
from django.urls import reverse

from jobs.models import Job
from review import services as review_services
from review.models import AuditEvent, ReviewAssignment, ReviewDecision, ReviewRule
from teachers import checks as teacher_checks
from teachers import services as teacher_services
from teachers.models import OutputFlag, TeacherOutput
from teams import services as team_services
from tests.conftest import wait_until
from tests.factories import ProjectFactory
from tests.review.review_support import make_outputs


def codes(output: TeacherOutput) -> list[str]:
    output.refresh_from_db()
    return output.flag_codes


def test_population_checks_flag_length_outliers_and_repeated_outputs(team, owner):  # type: ignore[no-untyped-def]
    project = ProjectFactory(team=team, output_kind="text", label_set=[])
    answers = [f"The customer asks about card delivery number {i}." for i in range(24)]
    # The same answer for three different inputs.
    answers += ["The customer asks about a refund of the card fee."] * 3
    answers.append("A very long answer that rambles on. " * 40)
    outs = make_outputs(project, answers)
    result = teacher_checks.population_checks_run(project=project)
    assert result["outputs_checked"] == 28
    assert codes(outs[-1]) == ["length_outlier"]
    assert all(codes(o) == ["repeated_output"] for o in outs[24:27])
    assert codes(outs[0]) == []
    assert "3 different inputs" in OutputFlag.objects.filter(code="repeated_output").first().message

    # The population changed (the repeats were fixed upstream): the old flags go.
    TeacherOutput.objects.filter(pk=outs[25].pk).update(
        raw_text="The customer asks to block the card."
    )
    TeacherOutput.objects.filter(pk=outs[26].pk).update(
        raw_text="The customer asks for a new PIN code."
    )
    teacher_checks.population_checks_run(project=project)
    assert codes(outs[24]) == []
    assert codes(outs[-1]) == ["length_outlier"]


def test_population_checks_keep_the_per_output_flags(project, owner):  # type: ignore[no-untyped-def]
    (out,) = make_outputs(project, ["refund_request"])
    OutputFlag.objects.create(output=out, project=project, code="label_outside_set", message="x")
    TeacherOutput.objects.filter(pk=out.pk).update(flag_codes=["label_outside_set"])
    teacher_checks.population_checks_run(project=project)
    assert codes(out) == ["label_outside_set"]


RULE_FORM = {
    "name": "confident and clean",
    "action": "approve",
    "unflagged": "yes",
    "min_confidence": "0.9",
}


def test_an_owner_sets_a_rule_and_its_decisions_are_recorded_as_the_rules(
    project, owner, member_with_role, client_for
):  # type: ignore[no-untyped-def]
    outs = make_outputs(project, ["card_arrival"] * 4, confidences=[0.95, 0.99, 0.5, 0.97])
    OutputFlag.objects.create(output=outs[3], project=project, code="low_confidence", message="x")
    TeacherOutput.objects.filter(pk=outs[3].pk).update(flag_codes=["low_confidence"])
    reviewer = member_with_role("reviewer")
    ReviewAssignment.objects.create(project=project, output=outs[1], reviewer=reviewer)
    client = client_for(owner)
    client.post(reverse("review:review_rule_create", args=[project.pk]), RULE_FORM)
    rule = ReviewRule.objects.get()
    assert rule.definition == {
        "action": "approve",
        "when": {"unflagged": True, "min_confidence": 0.9},
    }
    client.post(reverse("review:review_rules_apply", args=[project.pk]))

    statuses = {o.pk: o.review_status for o in TeacherOutput.objects.all()}
    # #1 matches; #2 is assigned to a person; #3 is not confident; #4 is flagged.
    assert [statuses[o.pk] for o in outs] == ["approved", "unreviewed", "unreviewed", "unreviewed"]
    decided = TeacherOutput.objects.get(pk=outs[0].pk)
    assert decided.reviewed_by is None and decided.decided_by_rule == rule
    decision = ReviewDecision.objects.get()
    assert decision.kind == "rule" and decision.rule == rule and decision.reviewer is None
    event = AuditEvent.objects.get(action="rule_applied")
    assert event.rule == rule and event.detail["output_ids"] == [outs[0].pk]
    assert "confident and clean" in event.summary and "run by olive" in event.summary
    card = client.get(reverse("review:review_item", args=[project.pk, outs[0].pk]))
    assert "auto-approved by rule “confident and clean”" in card.content.decode()
    queue = client.get(reverse("review:review_queue", args=[project.pk]), {"reviewer": "rule"})
    assert re.findall(r'data-output-id="(\d+)"', queue.content.decode()) == [str(outs[0].pk)]


def test_a_rule_that_could_never_match_is_refused(project, owner, client_for):  # type: ignore[no-untyped-def]
    client = client_for(owner)
    response = client.post(
        reverse("review:review_rule_create", args=[project.pk]),
        {"action": "reject", "min_confidence": "0.9", "max_confidence": "0.2"},
        follow=True,
    )
    assert "is above when.max_confidence, so nothing could match" in response.content.decode()
    empty = client.post(
        reverse("review:review_rule_create", args=[project.pk]), {"action": "reject"}, follow=True
    )
    assert "give at least one condition" in empty.content.decode()
    assert not ReviewRule.objects.exists()


@pytest.mark.parametrize("role", ["engineer", "reviewer", "viewer"])
def test_only_owners_set_or_apply_rules(project, owner, member_with_role, client_for, role):  # type: ignore[no-untyped-def]
    make_outputs(project, ["card_arrival"], confidences=[0.99])
    rule = review_services.rule_create(
        project=project,
        user=owner,
        name="r",
        definition={"action": "approve", "when": {"unflagged": True}},
    )
    client = client_for(member_with_role(role))
    assert (
        client.post(reverse("review:review_rule_create", args=[project.pk]), RULE_FORM).status_code
        == 403
    )
    assert client.post(reverse("review:review_rules_apply", args=[project.pk])).status_code == 403
    assert (
        client.post(reverse("review:review_rule_delete", args=[project.pk, rule.pk])).status_code
        == 403
    )
    assert ReviewRule.objects.count() == 1
    assert not TeacherOutput.objects.exclude(review_status="unreviewed").exists()
    page = client.get(reverse("review:review_automation", args=[project.pk])).content.decode()
    assert "Only owners set rules" in page


JUDGE_KEY = "sk-test-judge-1234"


def judge_responder(request):  # type: ignore[no-untyped-def]
    """A judge that dislikes answers saying top_up_failed, and cannot score #3's."""
    answer = request.last_user_text.split("<answer>")[1].split("</answer>")[0].strip()
    if answer == "top_up_failed":
        return json.dumps({"score": 2, "reason": "The ticket is about a card, not a top-up."})
    if answer == "lost_or_stolen_card":
        return "I would rather not say."
    return "Score: 5/5. Reason: the intent matches the ticket."


def _priced_judge(team, owner, base_url):  # type: ignore[no-untyped-def]
    """A judge credential for the fake provider, and a price for its model."""
    credential = team_services.credential_create(
        team=team,
        user=owner,
        name="judge",
        provider="openai",
        api_key=JUDGE_KEY,
        base_url=base_url,
        allow_private_network=True,
    )
    teacher_services.price_entry_save(
        team=team,
        user=owner,
        model="judge-model",
        input_usd_per_mtok=Decimal("1"),
        output_usd_per_mtok=Decimal("2"),
    )
    return credential


def _finished(job):  # type: ignore[no-untyped-def]
    """The job, once the worker finished it (succeeded or failed)."""
    wait_until(
        lambda: Job.objects.get(pk=job.pk).status in {"succeeded", "failed"},
        timeout=90,
        message=f"checks job #{job.pk}",
    )
    job.refresh_from_db()
    return job


@pytest.mark.slow
def test_checks_job_with_the_llm_judge_through_a_real_worker(
    team, owner, project, celery_worker, fake_provider_factory, client_for
):  # type: ignore[no-untyped-def]
    server = fake_provider_factory(responder=judge_responder, api_keys={JUDGE_KEY})
    credential = _priced_judge(team, owner, server.openai_base_url)
    outs = make_outputs(project, ["card_arrival", "top_up_failed", "lost_or_stolen_card"])
    review_services.rule_create(
        project=project,
        user=owner,
        name="judge says no",
        definition={"action": "reject", "when": {"flag": "judge_low_score"}},
    )
    client = client_for(owner)
    url = reverse("review:review_automation", args=[project.pk])
    saved = client.post(
        url,
        {
            "form": "judge",
            "rubric": "The label must be the customer's actual intent.",
            "scale": "1-5",
            "pass_score": "",
            "credential": credential.pk,
            "model": "judge-model",
        },
    )
    assert saved.status_code == 302
    started = client.post(url, {"form": "checks", "judge": "on", "apply_rules": "on"})
    assert started.status_code == 302
    job = _finished(Job.objects.get(kind="review_checks"))
    assert job.status == "succeeded", job.error + "".join(celery_worker.log[-30:])
    assert job.result["judged"] == 3 and job.result["judge_calls"] == 3
    assert job.result["judge_low_scores"] == 1 and job.result["judge_errors"] == 1
    assert Decimal(job.result["judge_cost_usd"]) > 0

    good, bad, unreadable = (TeacherOutput.objects.get(pk=o.pk) for o in outs)
    assert good.judge_score == 1.0 and "intent matches" in good.judge_reason
    assert bad.judge_score == 0.25 and bad.flag_codes == ["judge_low_score"]
    assert "not a top-up" in bad.judge_reason
    assert unreadable.judge_score is None and unreadable.flag_codes == ["judge_error"]
    # The rule rejected the low-scoring output, as the rule.
    assert bad.review_status == "rejected" and bad.decided_by_rule is not None
    assert good.review_status == "unreviewed"
    # The judge saw the rubric and the answer, never the key in the prompt.
    sent = server.generation_requests()
    assert len(sent) == 3
    assert all("actual intent" in json.dumps(r.body) for r in sent)
    assert all(JUDGE_KEY not in json.dumps(r.body) for r in sent)
    assert AuditEvent.objects.filter(action="checks").count() == 1

    # Running the checks again asks the judge about what is still unreviewed, from the cache.
    client.post(url, {"form": "checks", "judge": "on"})
    second = _finished(Job.objects.filter(kind="review_checks").exclude(pk=job.pk).get())
    assert second.status == "succeeded", second.error
    assert second.result["judge_cache_hits"] == 2 and second.result["judge_calls"] == 0
    assert len(server.generation_requests()) == 3


def test_the_judge_needs_a_rubric_a_model_and_a_price(project, owner, team, client_for):  # type: ignore[no-untyped-def]
    make_outputs(project, ["card_arrival"])
    client = client_for(owner)
    url = reverse("review:review_automation", args=[project.pk])
    response = client.post(url, {"form": "checks", "judge": "on"}, follow=True)
    assert "Write the judge&#x27;s rubric first." in response.content.decode()
    credential = team_services.credential_create(
        team=team, user=owner, name="k", provider="openai", api_key="sk-test-12345678"
    )
    client.post(
        url,
        {
            "form": "judge",
            "rubric": "r",
            "scale": "1-5",
            "credential": credential.pk,
            "model": "no-such-model-xyz",
        },
    )
    response = client.post(url, {"form": "checks", "judge": "on"}, follow=True)
    assert "No price for the judge model" in response.content.decode()
    assert not Job.objects.filter(kind="review_checks").exists()
    bad_score = client.post(
        url,
        {
            "form": "judge",
            "rubric": "r",
            "scale": "0-1",
            "pass_score": "3",
            "credential": credential.pk,
            "model": "m",
        },
    )
    assert "between 0 and 1" in bad_score.content.decode()
