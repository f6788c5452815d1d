"""/api/v1 fine-tunes and students through the real HTTP stack: start from a version with the
start form's fields (refusals name the field, nothing written), a real gpu-queue worker trains
the tiny model, the API shows progress and the loss points the worker stored, cancel/resume as the
page allows, and the distilled student's files download byte for byte."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from finetunes.models import FineTune, TrainingPoint
from jobs import storage
from jobs.models import Job
from tests.conftest import wait_until
from tests.finetunes.finetune_support import WORKER_ENV, frozen_version, tiny_student
from tests.helpers.api import Api, token_for


def api_of(team, user, scopes=("read", "write")) -> Api:  # type: ignore[no-untyped-def]
    return Api(token_for(user.memberships.get(team=team), scopes=scopes))


@pytest.mark.django_db
def test_bad_settings_name_the_field_and_write_nothing(team, owner, tiny_model_dir):  # type: ignore[no-untyped-def]
    version = frozen_version(team, owner)
    base = tiny_student(team, tiny_model_dir)
    api = api_of(team, owner)
    url = f"/api/v1/versions/{version.pk}/finetunes"
    jobs_before = Job.objects.count()
    for body, field in [
        ({"student": str(base.pk), "method": "qlora"}, "method"),  # no GPU worker reported in
        ({"student": str(base.pk), "method": "full", "lora_r": 8}, "lora_r"),
        ({"student": "999999"}, "student"),
        ({"student": str(base.pk), "batch_size": 0}, "batch_size"),
        ({"student": str(base.pk), "preset": "huge"}, "preset"),
        ({"student": "local"}, "local_path"),
        ({"student": str(base.pk), "lora_targets": "q_proj; rm -rf"}, "lora_targets"),
    ]:
        response = api.post(url, body)
        assert response.status_code == 400, (body, response.content)
        assert field in [e["field"] for e in response.json()["errors"]], (body, response.json())
    assert api.post(url, {"preset": "quick"}).status_code == 422  # no student at all
    assert Job.objects.count() == jobs_before and not FineTune.objects.exists()


@pytest.mark.django_db
def test_cancel_and_resume_as_the_page_allows(team, owner, tiny_model_dir):  # type: ignore[no-untyped-def]
    version = frozen_version(team, owner)
    base = tiny_student(team, tiny_model_dir)
    api = api_of(team, owner)
    started = api.post(f"/api/v1/versions/{version.pk}/finetunes", {"student": str(base.pk)})
    assert started.status_code == 201, started.content
    body = started.json()
    assert body["progress"]["status"] == "queued" and body["preset"]  # the suggested preset
    assert body["base_model_id"] == base.pk and body["dataset_version_id"] == version.pk
    cancelled = api.post(f"/api/v1/finetunes/{body['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["progress"]["status"] == "cancelled"
    again = api.post(f"/api/v1/finetunes/{body['id']}/cancel")
    assert again.status_code == 409 and "only a live one" in again.json()["detail"]
    resume = api.post(f"/api/v1/finetunes/{body['id']}/resume")
    assert resume.status_code == 409 and "no checkpoint" in resume.json()["detail"]
    # A retried start with the same Idempotency-Key answers the first response, starts nothing.
    key = {"Idempotency-Key": "nightly-1"}
    url = f"/api/v1/versions/{version.pk}/finetunes"
    first = api.post(url, {"student": str(base.pk), "preset": "quick"}, headers=key)
    retry = api.post(url, {"student": str(base.pk), "preset": "quick"}, headers=key)
    assert first.status_code == retry.status_code == 201
    assert retry.json()["id"] == first.json()["id"]
    assert FineTune.objects.count() == 2
    read_only = api_of(team, owner, scopes=("read",))
    assert read_only.post(f"/api/v1/finetunes/{body['id']}/resume").status_code == 403
    listed = api.get(f"/api/v1/projects/{version.project.slug}/finetunes").json()["results"]
    assert [f["id"] for f in listed] == [first.json()["id"], body["id"]]


def test_a_fine_tune_started_by_the_api_trains_and_its_student_downloads(  # type: ignore[no-untyped-def]
    worker_factory, team, owner, tiny_model_dir
):
    worker = worker_factory(queues="gpu", concurrency=1, extra_env=WORKER_ENV)
    version = frozen_version(team, owner)
    base = tiny_student(team, tiny_model_dir)
    api = api_of(team, owner)
    response = api.post(
        f"/api/v1/versions/{version.pk}/finetunes",
        {
            "student": str(base.pk),
            "preset": "quick",
            "max_steps": 12,
            "checkpoint_every_steps": 6,
            "batch_size": 4,
            "learning_rate": 0.01,
        },
    )
    assert response.status_code == 201, response.content
    finetune_id = response.json()["id"]
    wait_until(
        lambda: (
            api.get(f"/api/v1/finetunes/{finetune_id}").json()["progress"]["status"]
            in {"succeeded", "failed", "cancelled"}
        ),
        timeout=180,
        message="the fine-tune to end",
    )
    detail = api.get(f"/api/v1/finetunes/{finetune_id}").json()
    assert detail["progress"]["status"] == "succeeded", detail["progress"]["error"] + "".join(
        worker.log[-30:]
    )
    assert detail["progress"]["percent"] == 100 and detail["progress"]["step"] == 12
    stored = TrainingPoint.objects.filter(fine_tune_id=finetune_id).order_by("step")
    assert [(p["step"], p["loss"]) for p in detail["points"]] == [(p.step, p.loss) for p in stored]
    assert [p["step"] for p in detail["points"]] == list(range(1, 13))
    assert detail["resolved_hyperparameters"]["total_steps"] == 12
    later = api.get(f"/api/v1/finetunes/{finetune_id}/points", after=10).json()
    assert [p["step"] for p in later["points"]] == [11, 12] and later["status"] == "succeeded"
    assert api.post(f"/api/v1/finetunes/{finetune_id}/resume").status_code == 409

    # The distilled student: in the registry, with the downloads the page offers.
    student_id = detail["result_student_id"]
    distilled = api.get("/api/v1/students", kind="distilled").json()["results"]
    assert [s["id"] for s in distilled] == [student_id]
    assert [s["id"] for s in api.get("/api/v1/students", kind="base").json()["results"]] == [
        base.pk
    ]
    assert api.get("/api/v1/students", kind="huge").json()["errors"][0]["field"] == "kind"
    student = api.get(f"/api/v1/students/{student_id}").json()
    assert student["fine_tune_id"] == finetune_id and student["base_model_id"] == base.pk
    assert {a["key"] for a in student["artifacts"]} == {"model", "adapter", "tokenizer"}
    assert detail["artifacts"] == student["artifacts"]
    merged = FineTune.objects.get(pk=finetune_id).result_model
    assert merged is not None
    one = api.get(f"/api/v1/students/{student_id}/download/model/model.safetensors")
    assert one.status_code == 200
    assert (
        b"".join(one.streaming_content)
        == (storage.data_path(merged.path) / "model.safetensors").read_bytes()
    )
    adapter = next(a for a in student["artifacts"] if a["key"] == "adapter")
    zipped = api.get(adapter["url"])
    assert zipped.status_code == 200 and zipped["Content-Type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(b"".join(zipped.streaming_content)))
    names = {Path(n).name for n in archive.namelist()}
    assert names == {f["name"] for f in adapter["files"]}
    for bad in ("training.log", "..", "missing.bin"):
        missing = api.get(f"/api/v1/students/{student_id}/download/model/{bad}")
        assert missing.status_code == 404 and missing.json()["detail"] == "not found"
