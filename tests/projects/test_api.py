"""/api/v1/projects: projects, task specs and input batches through the same services as pages."""

from __future__ import annotations

import pytest

from projects.models import InputRow
from tests.factories import MembershipFactory, ProjectFactory
from tests.helpers.api import Api, token_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def api_and_project():  # type: ignore[no-untyped-def]
    owner = MembershipFactory()
    return Api(token_for(owner)), ProjectFactory(team=owner.team, name="Support intents")


def test_a_project_is_created_and_read_by_its_slug(api_and_project):  # type: ignore[no-untyped-def]
    api, project = api_and_project
    body = api.get(f"/api/v1/projects/{project.slug}").json()
    assert body["slug"] == "support-intents" and body["metric"] == "accuracy"
    assert body["task"]["label_set"] == project.label_set
    created = api.post("/api/v1/projects", {"name": "Support intents"})
    assert created.status_code == 201 and created.json()["slug"] == "support-intents-2"


def test_a_task_spec_the_page_would_refuse_is_refused_with_its_field(api_and_project):  # type: ignore[no-untyped-def]
    api, project = api_and_project
    response = api.send(
        "PUT",
        f"/api/v1/projects/{project.slug}/task",
        {"input_fields": ["text"], "instruction_template": "{{ body }}", "output_kind": "text"},
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "instruction_template"
    assert "unknown field 'body'" in response.json()["detail"]
    bad_kind = api.send(
        "PUT",
        f"/api/v1/projects/{project.slug}/task",
        {"input_fields": ["text"], "instruction_template": "{{ text }}", "output_kind": "poem"},
    )
    assert bad_kind.status_code == 422
    assert bad_kind.json()["errors"][0]["field"] == "output_kind"


def test_a_batch_of_inputs_is_written_whole_with_duplicates_counted(api_and_project):  # type: ignore[no-untyped-def]
    api, project = api_and_project
    rows = [{"inputs": {"text": f"card {n % 3}"}} for n in range(5)]
    first = api.post(f"/api/v1/projects/{project.slug}/inputs", {"rows": rows})
    assert first.status_code == 201
    assert first.json() == {
        "received": 5,
        "created": 3,
        "duplicates_in_batch": 2,
        "already_present": 0,
    }
    again = api.post(f"/api/v1/projects/{project.slug}/inputs", {"rows": rows[:2]}).json()
    assert again["created"] == 0 and again["already_present"] == 2
    listed = api.get(f"/api/v1/projects/{project.slug}/inputs", search="card 1").json()
    assert [r["inputs"] for r in listed["results"]] == [{"text": "card 1"}]


def test_a_bad_row_names_its_row_and_field_and_writes_nothing(api_and_project):  # type: ignore[no-untyped-def]
    api, project = api_and_project
    rows = [{"inputs": {"text": "fine"}}, {"inputs": {"txt": "typo"}}, {"inputs": {"text": ""}}]
    response = api.post(f"/api/v1/projects/{project.slug}/inputs", {"rows": rows})
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"row": 2, "field": "txt", "message": "unknown field 'txt'; the input fields are text"},
        {"row": 3, "field": None, "message": "every input field is empty"},
    ]
    assert not InputRow.objects.filter(project=project).exists()
    malformed = api.post(f"/api/v1/projects/{project.slug}/inputs", {"rows": [{"nope": 1}]})
    assert malformed.status_code == 422
    assert malformed.json()["errors"][0] == {
        "row": 1,
        "field": "inputs",
        "message": "Field required",
    }


def test_a_batch_over_the_limit_is_413(api_and_project, settings):  # type: ignore[no-untyped-def]
    settings.API_MAX_BATCH_ROWS = 3
    api, project = api_and_project
    rows = [{"inputs": {"text": str(n)}} for n in range(4)]
    response = api.post(f"/api/v1/projects/{project.slug}/inputs", {"rows": rows})
    assert response.status_code == 413 and "at most 3 — split it" in response.json()["detail"]
    assert not InputRow.objects.filter(project=project).exists()
