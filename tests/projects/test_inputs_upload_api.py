"""POST /api/v1/projects/{slug}/inputs/upload: a file → an import job a real worker runs, polled
through GET /api/v1/jobs/{id} as the CLI's --wait does; a bad file or mapping keeps nothing."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile

from jobs.models import Job
from projects.models import InputRow, InputUpload
from tests.conftest import wait_until
from tests.factories import MembershipFactory, ProjectFactory
from tests.helpers.api import Api, token_for


def _upload(api: Api, slug: str, name: str, content: bytes, **form: str):  # type: ignore[no-untyped-def]
    return api.client.post(
        f"/api/v1/projects/{slug}/inputs/upload",
        {"file": SimpleUploadedFile(name, content), **form},
        headers=api._headers(None),
    )


def _stored_upload_files(project) -> list[Path]:  # type: ignore[no-untyped-def]
    root = settings.DATA_DIR / "uploads" / f"team-{project.team_id}" / f"project-{project.pk}"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_an_uploaded_csv_is_imported_by_a_worker_and_the_job_reports_it(celery_worker):  # type: ignore[no-untyped-def]
    owner = MembershipFactory()
    project = ProjectFactory(team=owner.team)
    api = Api(token_for(owner))
    content = (
        b"utterance,intent\n"
        b"Where is my card?,card_arrival\n"
        b"My card was stolen,lost_or_stolen_card\n"
        b"Where is my card?,card_arrival\n"
    )
    response = _upload(
        api,
        project.slug,
        "tickets.csv",
        content,
        field_map='{"text": "utterance"}',
        reference_column="intent",
    )
    assert response.status_code == 201, response.content
    job = response.json()
    assert job["kind"] == "import_inputs" and job["project"] == project.slug
    assert job["status"] in ("queued", "running", "succeeded")

    def finished():  # type: ignore[no-untyped-def]
        body = api.get(f"/api/v1/jobs/{job['id']}").json()
        return body if body["is_terminal"] else None

    done = wait_until(finished, timeout=90, message="the import job to finish")
    assert done["status"] == "succeeded", done["error"]
    assert done["result"] == {
        "rows_read": 3,
        "imported": 2,
        "duplicates_in_file": 1,
        "already_present": 0,
    }
    assert done["percent"] == 100 and done["progress_done"] == done["progress_total"]
    rows = InputRow.objects.filter(project=project).order_by("id")
    assert [(r.data, r.reference_output) for r in rows] == [
        ({"text": "Where is my card?"}, "card_arrival"),
        ({"text": "My card was stolen"}, "lost_or_stolen_card"),
    ]
    listed = api.get("/api/v1/jobs", project=project.slug, kind="import_inputs").json()
    assert [j["id"] for j in listed["results"]] == [job["id"]]


def test_the_mapping_is_suggested_from_column_names_when_not_given(
    db, django_capture_on_commit_callbacks
):  # type: ignore[no-untyped-def]
    owner = MembershipFactory()
    project = ProjectFactory(team=owner.team)
    api = Api(token_for(owner))
    with django_capture_on_commit_callbacks(execute=False):
        response = _upload(api, project.slug, "in.jsonl", b'{"Text": "hello", "other": 1}\n')
    assert response.status_code == 201, response.content
    job = Job.objects.get(pk=response.json()["id"])
    assert job.params["field_map"] == {"text": "Text"}


def test_a_bad_file_is_refused_naming_the_line_and_nothing_is_kept(db):  # type: ignore[no-untyped-def]
    owner = MembershipFactory()
    project = ProjectFactory(team=owner.team)
    api = Api(token_for(owner))
    response = _upload(api, project.slug, "in.jsonl", b'{"text": "fine"}\n{"text": broken\n')
    assert response.status_code == 400
    body = response.json()
    assert "in.jsonl, line 2" in body["detail"]
    assert body["errors"][0]["field"] == "file" and body["errors"][0]["line"] == 2
    unknown_format = _upload(api, project.slug, "in.xlsx", b"PK\x03\x04")
    assert unknown_format.status_code == 400 and "in.xlsx" in unknown_format.json()["detail"]
    assert not InputUpload.objects.exists() and not Job.objects.exists()
    assert _stored_upload_files(project) == []


def test_a_mapping_that_does_not_fit_is_refused_and_nothing_is_kept(db):  # type: ignore[no-untyped-def]
    owner = MembershipFactory()
    project = ProjectFactory(team=owner.team)
    api = Api(token_for(owner))
    response = _upload(
        api, project.slug, "t.csv", b"utterance\nhello\n", field_map='{"text": "body"}'
    )
    assert response.status_code == 400
    assert response.json()["errors"] == [
        {"field": "field_map", "message": "no column named 'body' in t.csv"}
    ]
    missing = _upload(api, project.slug, "t.csv", b"utterance\nhello\n")  # nothing to suggest
    assert missing.status_code == 400
    assert "choose a column for input field(s): text" in missing.json()["detail"]
    not_json = _upload(api, project.slug, "t.csv", b"text\nhello\n", field_map="{text")
    assert not_json.status_code == 422 and not_json.json()["errors"][0]["field"] == "field_map"
    assert not InputUpload.objects.exists() and not Job.objects.exists()
    assert _stored_upload_files(project) == []


def test_a_reviewer_token_may_not_upload(db):  # type: ignore[no-untyped-def]
    reviewer = MembershipFactory(role="reviewer")
    project = ProjectFactory(team=reviewer.team)
    response = _upload(Api(token_for(reviewer)), project.slug, "t.csv", b"text\nhello\n")
    assert response.status_code == 403
    assert not InputUpload.objects.exists()
