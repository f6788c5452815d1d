"""What a user sees on the pages a Label Studio / Kiln user complained about: a styled 403 that
names the role, no link or key that only leads to a 403, the next step of the journey and the
latest verdict on the project page, one number per object, the teacher run leading on to review,
JSON review field by field, and blind votes with the teacher on the left as A."""

from __future__ import annotations

import json
import re

import pytest
from django.urls import reverse

from evaluations.models import EvalVote
from jobs.models import Job
from reports import selectors as report_selectors
from teams.models import Role
from tests.evaluations.evaluation_support import (
    FIXED_ROWS,
    finished_evaluation,
    label_project_with_references,
)
from tests.factories import (
    InputRowFactory,
    JobFactory,
    ProjectFactory,
    TeacherOutputFactory,
    TeacherRunFactory,
)
from tests.review.review_support import decide, make_outputs

pytestmark = pytest.mark.django_db


def page(client, url):  # type: ignore[no-untyped-def]
    response = client.get(url)
    assert response.status_code == 200, url
    return response.content.decode()


# 403 and favicon --------------------------------------------------------------------------------


def test_a_refused_page_is_styled_and_names_what_the_role_cannot_do(
    project, member_with_role, client_for
):  # type: ignore[no-untyped-def]
    client = client_for(member_with_role(Role.VIEWER))
    response = client.get(reverse("teachers:teacher_run_new", args=[project.pk]))
    assert response.status_code == 403
    html = response.content.decode()
    assert 'class="topbar"' in html and "css/app.css" in html  # the site's layout
    reason = re.search(r'data-testid="forbidden-reason">([^<]*)<', html).group(1)
    assert reason == "Your role (Viewer) cannot do this."
    assert "Ask an owner of the team" in html


def test_the_favicon_is_linked_and_served(client_for, owner, project):  # type: ignore[no-untyped-def]
    client = client_for(owner)
    html = page(client, reverse("projects:project_detail", args=[project.pk]))
    assert 'rel="icon"' in html and "favicon.svg" in html
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon["Content-Type"] == "image/svg+xml"
    assert b"<svg" in icon.content


# Controls only for roles that may use them -------------------------------------------------------


def test_viewers_see_no_controls_that_lead_to_a_403(project, member_with_role, client_for):  # type: ignore[no-untyped-def]
    make_outputs(project, ["card_arrival"])
    run = TeacherRunFactory(project=project)
    client = client_for(member_with_role(Role.VIEWER))

    runs = page(client, reverse("teachers:teacher_runs", args=[project.pk]))
    assert reverse("teachers:teacher_run_new", args=[project.pk]) not in runs
    assert reverse("teachers:teacher_run_import", args=[project.pk]) not in runs
    detail = page(client, reverse("teachers:teacher_run", args=[run.pk]))
    assert 'data-testid="run-pause"' not in detail and 'data-testid="run-cancel"' not in detail

    queue = page(client, reverse("review:review_queue", args=[project.pk]))
    hint = re.search(r'data-testid="keys-hint">(.*?)</span>', queue, re.S).group(1)
    assert "move" in hint and "approve" not in hint and "undo" not in hint
    assert "<kbd>a</kbd></td>" not in queue  # the key list has no decision keys either
    assert reverse("review:review_bulk", args=[project.pk]) not in queue

    home = page(client, reverse("projects:project_detail", args=[project.pk]))
    assert reverse("projects:inputs_upload", args=[project.pk]) not in home


def test_reviewers_keep_their_keys_and_engineers_their_buttons(
    project, member_with_role, client_for
):  # type: ignore[no-untyped-def]
    make_outputs(project, ["card_arrival"])
    queue = page(
        client_for(member_with_role(Role.REVIEWER)),
        reverse("review:review_queue", args=[project.pk]),
    )
    hint = re.search(r'data-testid="keys-hint">(.*?)</span>', queue, re.S).group(1)
    assert "approve" in hint and "undo" in hint
    runs = page(
        client_for(member_with_role(Role.ENGINEER)),
        reverse("teachers:teacher_runs", args=[project.pk]),
    )
    assert reverse("teachers:teacher_run_new", args=[project.pk]) in runs


# The teacher run leads on to review ---------------------------------------------------------------


def test_a_finished_teacher_run_links_to_the_review_queue(project, member_with_role, client_for):  # type: ignore[no-untyped-def]
    (output,) = make_outputs(project, ["card_arrival"])
    url = reverse("teachers:teacher_run", args=[output.run_id])
    html = page(client_for(member_with_role(Role.REVIEWER)), url)
    link = re.search(
        r'<a class="btn" href="([^"]+)" data-testid="review-outputs">([^<]+)</a>', html
    )
    assert link.group(1).startswith(reverse("review:review_queue", args=[project.pk]))
    assert link.group(2) == "Review the outputs →"
    viewer = page(client_for(member_with_role(Role.VIEWER)), url)
    assert "See the outputs in the review queue →" in viewer


def test_a_running_teacher_run_does_not_offer_review_yet(project, owner, client_for):  # type: ignore[no-untyped-def]
    run = TeacherRunFactory(project=project, job=JobFactory(project=project, status="running"))
    html = page(client_for(owner), reverse("teachers:teacher_run", args=[run.pk]))
    assert 'data-testid="review-outputs"' not in html


def test_parsed_json_is_shown_as_json_not_a_python_repr(team, owner, client_for):  # type: ignore[no-untyped-def]
    project = json_project(team)
    output = TeacherOutputFactory(project=project, raw_text='{"total": 12.5, "paid": true}')
    html = page(client_for(owner), reverse("teachers:teacher_run", args=[output.run_id]))
    parsed = re.search(r'data-testid="parsed">(.*?)</pre>', html, re.S).group(1)
    assert "&quot;paid&quot;: true" in parsed and "&quot;total&quot;: 12.5" in parsed
    assert "True" not in parsed and "&#x27;" not in parsed


# The project page: next step and verdict ----------------------------------------------------------


def next_step(html: str) -> tuple[str, str]:
    found = re.search(r'data-testid="next-step" data-step="([^"]+)">(.*?)</div>', html, re.S)
    return found.group(1), re.sub(r"<[^>]+>", "", found.group(2))


def test_the_project_page_says_the_next_step(team, owner, member_with_role, client_for):  # type: ignore[no-untyped-def]
    project = ProjectFactory(team=team, created_by=owner, instruction_template="", input_fields=[])
    client = client_for(owner)
    url = reverse("projects:project_detail", args=[project.pk])
    assert next_step(page(client, url)) == ("task", "Define the task →")

    project = label_project_with_references(team, owner, n=2)
    url = reverse("projects:project_detail", args=[project.pk])
    html = page(client, url)
    assert next_step(html) == ("teacher", "Start a teacher run →")
    assert reverse("teachers:teacher_run_new", args=[project.pk]) in html
    # A viewer is told the step without a link that would answer 403.
    viewer = page(client_for(member_with_role(Role.VIEWER)), url)
    assert next_step(viewer) == ("teacher", "Start a teacher run")
    assert "Your role cannot do this step" in viewer
    assert reverse("teachers:teacher_run_new", args=[project.pk]) not in viewer

    make_outputs(project, ["card_arrival"])
    html = page(client_for(owner), url)
    assert next_step(html) == ("review", "Review the teacher&#x27;s answers →")


def test_the_project_page_shows_the_latest_verdict(team, owner, client_for):  # type: ignore[no-untyped-def]
    project = label_project_with_references(team, owner, n=1)
    client = client_for(owner)
    url = reverse("projects:project_detail", args=[project.pk])
    assert 'data-testid="project-verdict" data-level="none">Not evaluated yet<' in page(client, url)
    finished_evaluation(project, owner, FIXED_ROWS)
    verdict = report_selectors.report_for(project=project).verdict
    html = page(client, url)
    assert f'data-testid="project-verdict" data-level="{verdict.level}">{verdict.title}<' in html
    assert reverse("reports:report", args=[project.pk]) in html


# One number per object --------------------------------------------------------------------------


def test_a_teacher_run_has_one_number_everywhere(project, owner, client_for):  # type: ignore[no-untyped-def]
    for _ in range(3):  # job ids run ahead of run ids
        JobFactory(project=project, kind="import_inputs")
    run = TeacherRunFactory(project=project)
    assert run.pk != run.job_id
    client = client_for(owner)
    home = page(client, reverse("projects:project_detail", args=[project.pk]))
    run_url = reverse("teachers:teacher_run", args=[run.pk])
    assert f'<a href="{run_url}">Teacher run #{run.pk}</a>' in home
    assert f"Teacher run #{run.job_id}<" not in home
    job_page = page(client, reverse("jobs:job_detail", args=[run.job_id]))
    assert re.search(r'data-testid="job-title">\s*Teacher run #(\d+)\s*<', job_page).group(
        1
    ) == str(run.pk)
    assert f"#{run.job_id}" not in job_page
    # A job without an object of its own keeps its own number.
    imported = Job.objects.filter(project=project, kind="import_inputs").first()
    assert f"Input import #{imported.pk}" in home


# JSON review ------------------------------------------------------------------------------------


def json_project(team):  # type: ignore[no-untyped-def]
    return ProjectFactory(
        team=team,
        output_kind="json",
        label_set=[],
        json_schema={
            "type": "object",
            "properties": {
                "total": {"type": "number"},
                "vendor": {"type": "string"},
                "paid": {"type": "boolean"},
            },
            "required": ["total", "vendor"],
        },
    )


def json_output(project, answer, reference=None):  # type: ignore[no-untyped-def]
    row = InputRowFactory(
        project=project, data={"text": "INVOICE ACME ... " * 200}, reference_output=reference
    )
    return TeacherOutputFactory(project=project, input=row, raw_text=answer)


def card(client, output):  # type: ignore[no-untyped-def]
    return page(client, reverse("review:review_item", args=[output.project_id, output.pk]))


def test_json_review_puts_the_reference_next_to_the_answer_and_diffs_each_field(
    team, owner, client_for
):  # type: ignore[no-untyped-def]
    project = json_project(team)
    output = json_output(
        project,
        '{"total": 12.5, "vendor": "ACME", "paid": true}',
        reference='{"vendor": "ACME Ltd", "total": 12.50, "paid": true}',
    )
    html = card(client_for(owner), output)
    # The reference sits in the answer column, right after the teacher's answer.
    answer_at = html.index('data-testid="teacher-output"')
    reference_at = html.index('data-testid="reference-output"')
    assert 0 < reference_at - answer_at < 400
    assert html.index('data-testid="input-text"') < answer_at
    rows = dict(re.findall(r'data-testid="field-row" data-field="([^"]+)" data-same="(\d)"', html))
    assert rows == {"total": "1", "vendor": "0", "paid": "1"}
    assert "1 differs" in html
    assert "<th>Reference</th>" in html


def test_json_edits_one_box_per_field_and_the_diff_then_shows_the_edit(team, owner, client_for):  # type: ignore[no-untyped-def]
    project = json_project(team)
    output = json_output(project, '{"total": 12.5, "vendor": "ACME"}')
    client = client_for(owner)
    html = card(client, output)
    boxes = dict(re.findall(r'name="field\.([^"]+)" value="([^"]*)"', html))
    assert boxes == {"total": "12.5", "vendor": "ACME"}
    assert 'name="value"' not in html  # no raw JSON textarea for a flat object
    spec = json.dumps([["total", True], ["vendor", False]])

    bad = decide(
        client,
        output,
        "edit",
        json_fields=spec,
        **{"field.total": "twelve", "field.vendor": "ACME"},
    )
    assert bad.status_code == 400
    assert "total: &#x27;twelve&#x27; is not a number" in bad.content.decode()

    good = decide(
        client,
        output,
        "edit",
        json_fields=spec,
        **{"field.total": "13", "field.vendor": "ACME Ltd"},
    )
    assert good.status_code == 200
    output.refresh_from_db()
    assert output.review_status == "edited"
    assert output.edited_value == {"total": 13, "vendor": "ACME Ltd"}
    rows = dict(re.findall(r'data-field="([^"]+)" data-same="(\d)"', good.content.decode()))
    assert rows == {"total": "0", "vendor": "0"}
    assert "<th>Edited</th>" in good.content.decode()
    # The schema still checks what the boxes make.
    wrong_type = decide(
        client,
        output,
        "edit",
        json_fields=json.dumps([["total", False], ["vendor", False]]),
        **{"field.total": "13", "field.vendor": "ACME"},
    )
    assert wrong_type.status_code == 400 and "schema" in wrong_type.content.decode()


def test_a_nested_json_answer_is_edited_as_json_text(team, owner, client_for):  # type: ignore[no-untyped-def]
    project = ProjectFactory(
        team=team, output_kind="json", label_set=[], json_schema={"type": "object"}
    )
    output = json_output(project, '{"vendor": {"name": "ACME"}, "total": 1}')
    html = card(client_for(owner), output)
    assert 'name="field.' not in html
    assert re.search(r'<textarea[^>]*name="value"', html)


# Comparison and votes ---------------------------------------------------------------------------


@pytest.fixture
def evaluation(team, owner):  # type: ignore[no-untyped-def]
    project = label_project_with_references(team, owner, n=1)
    return finished_evaluation(project, owner, FIXED_ROWS)


def compare(client, evaluation, query=""):  # type: ignore[no-untyped-def]
    return page(client, reverse("evaluations:evaluation_compare", args=[evaluation.pk]) + query)


def test_the_teacher_on_the_left_is_a_and_votes_are_blind_with_keys(
    evaluation, member_with_role, client_for
):  # type: ignore[no-untyped-def]
    teacher, student = evaluation.candidates.order_by("position")
    client = client_for(member_with_role(Role.VIEWER))
    names = compare(client, evaluation)
    heads = re.findall(r'column-head">([^<]+) <span class="badge">([AB])</span>', names)
    assert heads == [("Teacher model", "A"), ("Distilled student", "B")]
    assert 'data-testid="vote-a"' not in names  # votes are cast on the blind page
    assert "?show=all&amp;a=" in names or "?show=all&a=" in names
    blind = compare(client, evaluation, f"?a={teacher.pk}&b={student.pk}&vote=1")
    table = blind[blind.index('data-testid="comparison"') :]
    assert "Teacher model" not in table and "Distilled student" not in table
    assert 'data-testid="cell-teacher"' not in table and "data-disagrees" not in table
    assert re.findall(r'data-testid="column-head"><span class="badge">([AB])</span>', blind) == [
        "A",
        "B",
    ]
    keys = re.findall(r'data-testid="vote-([a-z_]+)" data-key="(\d)"', blind)
    assert keys[:4] == [("a", "1"), ("b", "2"), ("both_ok", "3"), ("both_wrong", "4")]
    assert "Votes on A vs B" in blind
    # Voting on a row tells who was who on that row only.
    first = evaluation.examples.get(position=0)
    response = client.post(
        reverse("evaluations:evaluation_vote", args=[evaluation.pk, first.pk]),
        {"choice": "a", "a": teacher.pk, "b": student.pk},
        HTTP_HX_REQUEST="true",
    )
    revealed = response.content.decode()
    assert (
        "A was <strong>Teacher model</strong> · B was <strong>Distilled student</strong>"
        in revealed
    )
    after = compare(client, evaluation, f"?a={teacher.pk}&b={student.pk}&vote=1")
    assert after.count('data-testid="vote-revealed"') == 1


def test_a_pair_asked_the_other_way_round_still_puts_the_left_one_first(
    evaluation, owner, client_for
):  # type: ignore[no-untyped-def]
    teacher, student = evaluation.candidates.order_by("position")
    html = compare(client_for(owner), evaluation, f"?a={student.pk}&b={teacher.pk}&vote=1")
    assert f'name="a" value="{teacher.pk}"' in html and f'name="b" value="{student.pk}"' in html


def test_votes_stored_with_the_teacher_as_b_count_the_right_way_round(
    evaluation, owner, member_with_role, client_for
):  # type: ignore[no-untyped-def]
    teacher, student = evaluation.candidates.order_by("position")
    first = evaluation.examples.get(position=0)
    viewer = member_with_role(Role.VIEWER)
    # An older page stored (A=student, B=teacher); "a" then meant the student was better.
    EvalVote.objects.create(
        evaluation=evaluation,
        example=first,
        user=viewer,
        candidate_a=student,
        candidate_b=teacher,
        choice="a",
    )
    html = compare(client_for(owner), evaluation)
    assert 'data-testid="votes-a">0<' in html and 'data-testid="votes-b">1<' in html
    # The same voter changing their mind on today's page replaces that vote, not adds one.
    client = client_for(viewer)
    client.post(
        reverse("evaluations:evaluation_vote", args=[evaluation.pk, first.pk]),
        {"choice": "a", "a": teacher.pk, "b": student.pk},
    )
    votes = list(EvalVote.objects.filter(example=first).values_list("candidate_a", "choice"))
    assert votes == [(student.pk, "b")]  # stored the old way round: the teacher is better
    html = compare(client_for(owner), evaluation)
    assert 'data-testid="votes-a">1<' in html and 'data-testid="votes-b">0<' in html
