"""/api/v1 dataset versions through the real HTTP stack: freeze with the page's options (a job a
real worker runs: the same content hash as the page's freeze), read the version's counts, splits
and leakage summary, page through a split's rows, download its exports; bad input is refused by
field with nothing written."""

from __future__ import annotations

import pytest
from django.urls import reverse

from dataset_versions.models import DatasetItem, DatasetVersion
from jobs.models import Job
from teams.models import Role
from tests.conftest import wait_until
from tests.dataset_versions.test_datasets_freeze import freeze, reviewed_project
from tests.factories import MembershipFactory, ProjectFactory
from tests.helpers.api import Api, token_for

OPTIONS = {
    "seed": 3,
    # What the page's form submits by default (its initial value); the API takes the same.
    "max_synthetic_train_share": 0.5,
    "train": 0.5,
    "validation": 0.25,
    "test": 0.25,
    "stratify": True,
    "group_near_duplicates": True,
    "near_duplicate_threshold": 0.8,
}


def api_of(team, user, scopes=("read", "write")) -> Api:  # type: ignore[no-untyped-def]
    return Api(token_for(user.memberships.get(team=team), scopes=scopes))


def finished(job_id: int, worker) -> Job:  # type: ignore[no-untyped-def]
    wait_until(
        lambda: Job.objects.get(pk=job_id).status in {"succeeded", "failed"},
        timeout=90,
        message="the freeze job",
    )
    job = Job.objects.get(pk=job_id)
    assert job.status == "succeeded", job.error + "".join(worker.log[-30:])
    return job


def test_freeze_read_rows_and_download_like_the_page(team, owner, client_for, celery_worker):  # type: ignore[no-untyped-def]
    project, _, client = reviewed_project(team, owner, client_for)
    api = api_of(team, owner)
    response = api.post(f"/api/v1/projects/{project.slug}/versions", {"name": "v1-api", **OPTIONS})
    assert response.status_code == 202, response.content
    job = response.json()["job"]
    assert job["kind"] == "dataset_freeze" and job["status"] == "queued"
    finished(job["id"], celery_worker)
    # The page's freeze with the same options makes the same content.
    page_form = {k: ("on" if v is True else v) for k, v in OPTIONS.items()}
    assert (
        client.post(
            reverse("dataset_versions:dataset_new", args=[project.pk]),
            {"name": "v1-page", **page_form},
        ).status_code
        == 302
    )
    finished(Job.objects.filter(kind="dataset_freeze").latest("pk").pk, celery_worker)
    by_api = DatasetVersion.objects.get(project=project, name="v1-api")
    by_page = DatasetVersion.objects.get(project=project, name="v1-page")
    assert by_api.content_hash == by_page.content_hash
    assert by_api.params == by_page.params

    listed = api.get(f"/api/v1/projects/{project.slug}/versions").json()["results"]
    assert [v["name"] for v in listed] == ["v1-page", "v1-api"]
    detail = api.get(f"/api/v1/versions/{by_api.pk}").json()
    assert detail["row_count"] == by_api.row_count == 11  # the rejected output is left out
    assert sum(detail["splits"].values()) == detail["row_count"]
    assert (
        detail["splits"]["train"]
        == DatasetItem.objects.filter(version=by_api, split="train").count()
    )
    assert detail["leakage"]["summary"] == by_api.leakage["summary"]
    assert detail["leakage"]["ok"] is True and detail["job_id"] == job["id"]

    # A split's rows, page by page, in order, each once.
    seen = []
    page = api.get(f"/api/v1/versions/{by_api.pk}/rows", split="train", page_size=2).json()
    while True:
        seen += [(row["row_id"], row["split"]) for row in page["results"]]
        if not page["next"]:
            break
        page = api.get(page["next"]).json()
    assert seen == [(i.row_id, "train") for i in by_api.items.filter(split="train").order_by("id")]

    # Every export the page offers, streamed, byte for byte the stored file.
    formats = {(e["format"], e["split"]) for e in detail["exports"]}
    assert {("openai", "all"), ("hf", "test"), ("csv", "all")} <= formats
    for export in detail["exports"]:
        response = api.get(export["url"])
        assert response.status_code == 200, export
        page_file = client.get(
            reverse("dataset_versions:dataset_export", args=[project.pk, by_api.pk]),
            {"format": export["format"], "split": export["split"]},
        )
        body = b"".join(response.streaming_content)
        assert body == b"".join(page_file.streaming_content) and body
        assert response["Content-Disposition"] == page_file["Content-Disposition"]


@pytest.mark.django_db
def test_bad_freeze_input_is_refused_by_field_and_writes_nothing(team, owner, client_for):  # type: ignore[no-untyped-def]
    project, _, _ = reviewed_project(team, owner, client_for)
    freeze(project, owner, name="v1")
    api = api_of(team, owner)
    url = f"/api/v1/projects/{project.slug}/versions"
    jobs_before = Job.objects.count()

    out_of_range = api.post(url, {"name": "v2", "train": 1.5})
    assert out_of_range.status_code == 400
    assert out_of_range.json()["errors"][0]["field"] == "train"
    not_one = api.post(url, {"name": "v2", "train": 0.5, "validation": 0.1, "test": 0.1})
    assert not_one.status_code == 400 and not_one.json()["detail"]
    taken = api.post(url, {"name": "v1"})
    assert taken.status_code == 409
    assert taken.json()["errors"] == [
        {"field": "name", "message": "this project already has a version named 'v1'"}
    ]
    no_name = api.post(url, {"seed": 1})
    assert no_name.status_code == 422 and no_name.json()["errors"][0]["field"] == "name"
    empty = ProjectFactory(team=team, created_by=owner)
    nothing = api.post(f"/api/v1/projects/{empty.slug}/versions", {"name": "v1"})
    assert nothing.status_code == 400 and "Nothing to freeze yet" in nothing.json()["detail"]
    # Roles as in the UI: an engineer's write token stops writing once they are a viewer.
    membership = MembershipFactory(team=team, role=Role.ENGINEER)
    demoted = api_of(team, membership.user)
    membership.role = Role.VIEWER
    membership.save()
    refused = demoted.post(url, {"name": "v9"})
    assert refused.status_code == 403 and "viewer" in refused.json()["detail"]
    assert Job.objects.count() == jobs_before
    assert list(DatasetVersion.objects.values_list("name", flat=True)) == ["v1"]


@pytest.mark.django_db
def test_unknown_split_or_format_names_the_field(team, owner, client_for):  # type: ignore[no-untyped-def]
    project, _, _ = reviewed_project(team, owner, client_for)
    version = freeze(project, owner, name="v1")
    api = api_of(team, owner, scopes=("read",))
    rows = api.get(f"/api/v1/versions/{version.pk}/rows", split="dev")
    assert rows.status_code == 400 and rows.json()["errors"][0]["field"] == "split"
    fmt = api.get(f"/api/v1/versions/{version.pk}/export", format="parquet")
    assert fmt.status_code == 400 and fmt.json()["errors"][0]["field"] == "format"
    split = api.get(f"/api/v1/versions/{version.pk}/export", format="hf", split="dev")
    assert split.status_code == 400 and split.json()["errors"][0]["field"] == "split"
    everything = api.get(f"/api/v1/versions/{version.pk}/rows").json()["results"]
    assert len(everything) == version.row_count
