"""/api/v1 evaluations through the real HTTP stack: start with the evaluation form's choices
(refusals name the field, nothing written), each candidate's figures with the same 95 % intervals
the evaluation page shows, and the per-example results in cursor pages."""

from __future__ import annotations

import html as html_lib
import re

import pytest

from evaluations.figures import figures_for
from evaluations.models import EvalOutput, Evaluation
from evaluations.selectors import candidate_results
from tests.evaluations.evaluation_support import finished_evaluation, label_project_with_references
from tests.finetunes.finetune_support import frozen_version, tiny_student
from tests.helpers.api import Api, token_for
from tests.reports.test_report_figures import LABEL_ROWS

pytestmark = pytest.mark.django_db


def api_of(team, user, scopes=("read", "write")) -> Api:  # type: ignore[no-untyped-def]
    return Api(token_for(user.memberships.get(team=team), scopes=scopes))


def cell(page: str, testid: str) -> str:
    match = re.search(rf'data-testid="{testid}"[^>]*>(.*?)</td>', page, re.DOTALL)
    assert match, testid
    return html_lib.unescape(re.sub(r"<[^>]+>", "", match.group(1)))


def test_figures_with_their_intervals_equal_the_evaluation_page(client_for, owner, team):  # type: ignore[no-untyped-def]
    project = label_project_with_references(team, owner, n=2)
    evaluation = finished_evaluation(project, owner, LABEL_ROWS)
    api = api_of(team, owner, scopes=("read",))
    body = api.get(f"/api/v1/evaluations/{evaluation.pk}").json()
    assert body["status"] == "succeeded" and body["project"] == project.slug
    page = client_for(owner).get(f"/evaluations/{evaluation.pk}/").content.decode()
    rows = figures_for(evaluation=evaluation, results=candidate_results(evaluation=evaluation))
    assert [c["id"] for c in body["candidates"]] == [r.result.candidate.pk for r in rows]
    for candidate, row in zip(body["candidates"], rows, strict=True):
        role = candidate["role"]
        assert candidate["metric"]["value"] == row.metric.value
        assert (candidate["metric"]["low"], candidate["metric"]["high"]) == (
            row.metric.low,
            row.metric.high,
        )
        assert f"95 % {candidate['metric']['range_shown']}" in cell(page, f"headline-{role}")
        assert cell(page, f"headline-{role}").startswith(f"{candidate['headline']:.3f}")
    distilled = next(c for c in body["candidates"] if c["role"] == "distilled")
    assert distilled["headline"] == 0.75  # 3 of 4 right
    assert distilled["agree"] == 3 and distilled["agreement"]["n"] == 4
    assert distilled["percent_of_teacher"]["scale"] == "percent"
    listed = api.get(f"/api/v1/projects/{project.slug}/evaluations").json()["results"]
    assert [e["id"] for e in listed] == [evaluation.pk]


def test_per_example_results_in_cursor_pages(owner, team):  # type: ignore[no-untyped-def]
    project = label_project_with_references(team, owner, n=2)
    evaluation = finished_evaluation(project, owner, LABEL_ROWS)
    api = api_of(team, owner, scopes=("read",))
    seen = []
    page = api.get(f"/api/v1/evaluations/{evaluation.pk}/examples", page_size=3).json()
    while True:
        seen += page["results"]
        if not page["next"]:
            break
        page = api.get(page["next"]).json()
    assert [e["inputs"]["text"] for e in seen] == [row[0] for row in LABEL_ROWS]
    assert [e["reference"] for e in seen] == [row[1] for row in LABEL_ROWS]
    for example in seen:
        stored = {o.candidate_id: o for o in EvalOutput.objects.filter(example_id=example["id"])}
        assert {a["candidate_id"] for a in example["answers"]} == set(stored)
        for answer in example["answers"]:
            assert answer["raw_text"] == stored[answer["candidate_id"]].raw_text
            assert answer["correct"] == stored[answer["candidate_id"]].correct
    wrong = [e for e in seen if any(a["correct"] is False for a in e["answers"])]
    assert [e["inputs"]["text"] for e in wrong] == ["I lost my card"]


def test_start_with_the_forms_choices_and_refusals_by_field(owner, team, tiny_model_dir):  # type: ignore[no-untyped-def]
    version = frozen_version(team, owner)
    other = frozen_version(team, owner, name="elsewhere")
    base = tiny_student(team, tiny_model_dir)
    api = api_of(team, owner)
    url = f"/api/v1/projects/{version.project.slug}/evaluations"
    for body, field in [
        ({"dataset_version": other.pk, "base_model": base.pk}, "dataset_version"),
        ({"dataset_version": version.pk, "teacher_source": "oracle"}, "teacher_source"),
        ({"dataset_version": version.pk, "batch_size": 0}, "batch_size"),
        ({"dataset_version": version.pk, "distilled": [base.pk]}, "distilled"),  # not distilled
        ({"dataset_version": version.pk, "max_new_tokens": 10**9}, "max_new_tokens"),
    ]:
        response = api.post(url, body)
        assert response.status_code == 400, (body, response.content)
        assert field in [e["field"] for e in response.json()["errors"]], response.json()
    assert api.post(url, {"base_model": base.pk}).status_code == 422
    assert not Evaluation.objects.exists()
    assert (
        api_of(team, owner, scopes=("read",)).post(url, {"dataset_version": 1}).status_code == 403
    )

    started = api.post(
        url, {"dataset_version": version.pk, "base_model": base.pk, "name": "nightly"}
    )
    assert started.status_code == 201, started.content
    body = started.json()
    assert body["status"] == "queued" and body["name"] == "nightly"
    assert body["dataset_version_id"] == version.pk and body["split"] == "test"
    assert [c["role"] for c in body["candidates"]] == ["teacher", "base"]
    assert all(c["metric"] is None for c in body["candidates"])  # nothing measured yet
    evaluation = Evaluation.objects.get()
    assert evaluation.job.queue == "gpu" and evaluation.created_by == owner
