"""The comparison page (filters, highlights), votes by every role, vote totals and the DPO export."""

from __future__ import annotations

import json

import pytest

from evaluations.models import EvalVote
from jobs.models import JobStatus
from teams.models import Role
from tests.evaluations.evaluation_support import (
    FIXED_ROWS,
    finished_evaluation,
    label_project_with_references,
)

pytestmark = pytest.mark.django_db


@pytest.fixture
def evaluation(team, owner):  # type: ignore[no-untyped-def]
    project = label_project_with_references(team, owner, n=1)
    return finished_evaluation(project, owner, FIXED_ROWS)


def shown(client, evaluation, query=""):  # type: ignore[no-untyped-def]
    response = client.get(f"/evaluations/{evaluation.pk}/compare/{query}")
    assert response.status_code == 200
    html = response.content.decode()
    return response, html.count('data-testid="example-row"')


def test_filters_find_disagreements_and_mistakes(client_for, owner, evaluation):  # type: ignore[no-untyped-def]
    client = client_for(owner)
    assert shown(client, evaluation)[1] == 5
    assert shown(client, evaluation, "?show=disagree")[1] == 3  # rows 2, 3, 5
    assert shown(client, evaluation, "?show=student_wrong")[1] == 3  # rows 2, 4, 5
    assert shown(client, evaluation, "?show=teacher_wrong")[1] == 2  # rows 3, 4
    assert shown(client, evaluation, "?label=top_up_failed")[1] == 2  # rows 4, 5
    response, n = shown(client, evaluation, "?show=disagree&label=card_arrival")
    assert n == 1 and "where is my new card?" in response.content.decode()
    # Unknown filter names fall back to all examples.
    assert shown(client, evaluation, "?show=bogus")[1] == 5


def test_wrong_and_disagreeing_answers_are_highlighted(client_for, owner, evaluation):  # type: ignore[no-untyped-def]
    _, rows = _rows(client_for(owner), evaluation)
    # Row 3: the teacher is wrong; the student is right but disagrees with the teacher.
    assert 'data-testid="cell-teacher" data-wrong="1"' in rows[2]
    assert 'data-testid="cell-distilled" data-wrong="0" data-disagrees="1"' in rows[2]
    # Row 1: nobody is wrong, nobody disagrees.
    assert 'data-wrong="1"' not in rows[0] and 'data-disagrees="1"' not in rows[0]
    # Row 5: the unparseable answer is shown with its reason.
    assert "not in the label set" in rows[4]


def _rows(client, evaluation):  # type: ignore[no-untyped-def]
    html = client.get(f"/evaluations/{evaluation.pk}/compare/").content.decode()
    parts = html.split('data-testid="example-row"')[1:]
    return html, parts


def vote(client, evaluation, example, choice, a, b, htmx=False):  # type: ignore[no-untyped-def]
    extra = {"HTTP_HX_REQUEST": "true"} if htmx else {}
    return client.post(
        f"/evaluations/{evaluation.pk}/examples/{example.pk}/vote/",
        {"choice": choice, "a": a.pk, "b": b.pk},
        **extra,
    )


def test_every_role_votes_and_the_totals_and_preference_rate_add_up(
    client, member_with_role, owner, evaluation
):  # type: ignore[no-untyped-def]
    teacher, student = evaluation.candidates.order_by("position")
    first = evaluation.examples.get(position=0)
    choices = {Role.VIEWER: "a", Role.REVIEWER: "a", Role.ENGINEER: "b", Role.OWNER: "both_ok"}
    for role, choice in choices.items():
        user = owner if role == Role.OWNER else member_with_role(role)
        client.force_login(user)
        response = vote(client, evaluation, first, choice, student, teacher, htmx=True)
        assert response.status_code == 200, (role, response.content)
        assert f'value="{choice}" class="chosen"' in response.content.decode()
    # A viewer changes their mind: still one vote each.
    viewer = EvalVote.objects.get(choice="a", user__memberships__role=Role.VIEWER).user
    client.force_login(viewer)
    response = vote(client, evaluation, first, "both_wrong", student, teacher)
    assert response.status_code == 302
    assert EvalVote.objects.filter(example=first).count() == 4
    assert EvalVote.objects.get(user=viewer).choice == "both_wrong"

    html = client.get(f"/evaluations/{evaluation.pk}/compare/").content.decode()
    assert 'data-testid="votes-a">1<' in html
    assert 'data-testid="votes-b">1<' in html
    assert 'data-testid="votes-both-ok">1<' in html
    assert 'data-testid="votes-both-wrong">1<' in html
    # Preference for A: 1 of the 2 decisive votes.
    assert "50 % of 2 decisive votes" in html


def test_bad_votes_are_refused_and_change_nothing(client_for, owner, evaluation, team):  # type: ignore[no-untyped-def]
    client = client_for(owner)
    teacher, student = evaluation.candidates.order_by("position")
    example = evaluation.examples.get(position=0)
    assert vote(client, evaluation, example, "maybe", student, teacher).status_code == 400
    assert vote(client, evaluation, example, "a", student, student).status_code == 400
    other = finished_evaluation(evaluation.project, owner, FIXED_ROWS[:1])
    foreign = other.candidates.get(role="teacher")
    assert vote(client, evaluation, example, "a", student, foreign).status_code == 400
    # The example must belong to the evaluation in the URL.
    assert vote(client, other, example, "a", student, teacher).status_code == 404
    assert (
        client.get(f"/evaluations/{evaluation.pk}/examples/{example.pk}/vote/").status_code == 405
    )
    # Votes open once the evaluation has finished.
    evaluation.job.status = JobStatus.RUNNING
    evaluation.job.save(update_fields=["status"])
    assert vote(client, evaluation, example, "a", student, teacher).status_code == 400
    assert EvalVote.objects.count() == 0


def test_votes_export_as_dpo_pairs(client, member_with_role, owner, evaluation):  # type: ignore[no-untyped-def]
    teacher, student = evaluation.candidates.order_by("position")
    examples = list(evaluation.examples.order_by("position"))
    voters = [owner, member_with_role(Role.VIEWER), member_with_role(Role.REVIEWER)]
    plan = {
        0: ["b", "b", "a"],  # teacher preferred 2-1: chosen = teacher
        1: ["a", "b", "both_ok"],  # a tie between decisive votes: no pair
        2: ["both_ok", "both_wrong", "both_ok"],  # no preference: no pair
        3: ["a", "a", "a"],  # the student preferred
    }
    for index, choices in plan.items():
        for user, choice in zip(voters, choices, strict=True):
            client.force_login(user)
            assert (
                vote(client, evaluation, examples[index], choice, student, teacher).status_code
                == 302
            )
    client.force_login(voters[1])  # a viewer may download it
    response = client.get(f"/evaluations/{evaluation.pk}/votes/dpo.jsonl")
    assert response.status_code == 200
    assert "attachment" in response["Content-Disposition"]
    lines = [
        json.loads(line) for line in b"".join(response.streaming_content).decode().splitlines()
    ]
    assert len(lines) == 2
    first, second = lines
    assert first["prompt"] == examples[0].messages
    assert first["chosen"] == [{"role": "assistant", "content": FIXED_ROWS[0][2]}]
    assert first["rejected"] == [{"role": "assistant", "content": FIXED_ROWS[0][3]}]
    assert second["prompt"] == examples[3].messages
    assert second["chosen"][0]["content"] == FIXED_ROWS[3][3]  # the student's answer
    assert second["rejected"][0]["content"] == FIXED_ROWS[3][2]
    assert set(first) == {"prompt", "chosen", "rejected"}


def test_the_results_page_shows_the_headline_with_its_interval(client_for, owner, evaluation):  # type: ignore[no-untyped-def]
    html = client_for(owner).get(f"/evaluations/{evaluation.pk}/").content.decode()
    # Teacher 3/5 right, student 2/5 right: 2/5 ÷ 3/5 = 67 %; they agree on rows 1 and 4.
    assert "The distilled student reaches 67 % of the teacher&#x27;s quality" in html
    assert "accuracy 0.400 vs 0.600 on 5 examples" in html
    assert "agrees with the teacher on 40 % of inputs (2 of 5;" in html
    assert "Reference: human reference outputs (5 examples)." in html
    assert "(2/5)" in html and "(3/5)" in html  # k/n next to each 95 % interval


def test_the_job_page_leads_to_the_results(client_for, owner, evaluation):  # type: ignore[no-untyped-def]
    html = client_for(owner).get(f"/jobs/{evaluation.job_id}/").content.decode()
    assert f'href="/evaluations/{evaluation.pk}/"' in html
