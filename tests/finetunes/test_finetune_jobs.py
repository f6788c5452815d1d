"""Fine-tuning jobs end to end through a real Celery worker on the gpu queue, training the tiny
random model on CPU: live points, the registered student and its files, cancel, SIGTERM and
SIGKILL with resume from the checkpoint, and QLoRA refused on a CPU-only worker."""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path

import pytest
from django.core.cache import cache
from django.urls import reverse
from django.utils import timezone

from finetunes import services as finetune_services
from finetunes.models import FineTune, StudentKind, TrainingPoint
from jobs import services, storage
from jobs.models import Job, JobStatus, WorkerInfo
from tests.conftest import wait_until
from tests.finetunes.finetune_support import (
    WORKER_ENV,
    frozen_version,
    job_of,
    output_dir,
    start,
    status_of,
    tiny_student,
)
from worker.training import latest_checkpoint

pytestmark = pytest.mark.slow

TERMINAL = {"succeeded", "failed", "cancelled"}


def gpu_worker(worker_factory):  # type: ignore[no-untyped-def]
    return worker_factory(queues="gpu", concurrency=1, extra_env=WORKER_ENV)


def finished(fine_tune: FineTune, worker, timeout: float = 180) -> Job:  # type: ignore[no-untyped-def]
    wait_until(
        lambda: status_of(fine_tune) in TERMINAL, timeout=timeout, message="the fine-tune to end"
    )
    job = job_of(fine_tune)
    assert job.status != JobStatus.RUNNING
    return job


def steps_of(fine_tune: FineTune) -> list[int]:
    return list(
        TrainingPoint.objects.filter(fine_tune=fine_tune)
        .order_by("step")
        .values_list("step", flat=True)
    )


def test_a_fine_tune_trains_records_its_curve_and_registers_a_downloadable_student(
    worker_factory, team, owner, tiny_model_dir, client_for
):  # type: ignore[no-untyped-def]
    worker = gpu_worker(worker_factory)
    version = frozen_version(team, owner)
    base = tiny_student(team, tiny_model_dir)
    fine_tune = start(version, owner, base, max_steps=30, checkpoint_every_steps=10)
    assert job_of(fine_tune).queue == "gpu"

    job = finished(fine_tune, worker)
    assert job.status == JobStatus.SUCCEEDED, job.error + "".join(worker.log[-30:])
    fine_tune.refresh_from_db()

    # The live chart's points: one per step, loss going down, validation scored on the way.
    points = list(TrainingPoint.objects.filter(fine_tune=fine_tune).order_by("step"))
    assert [p.step for p in points] == list(range(1, 31))
    losses = [p.loss for p in points]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3, losses
    assert [p.step for p in points if p.eval_accuracy is not None][-1] == 30
    assert all(p.tokens_per_s and p.tokens_per_s > 0 for p in points)
    assert job.progress_done == job.progress_total == 30
    assert job.figures["tokens_per_s"] > 0 and job.figures["eta_s"] == 0

    # Job figures: resolved hyperparameters, hardware and the timing line.
    assert fine_tune.resolved_hyperparameters["total_steps"] == 30
    assert fine_tune.resolved_hyperparameters["learning_rate"] == 0.01
    assert fine_tune.hardware["device"] == "cpu" and fine_tune.hardware["threads"] == 1
    assert fine_tune.hardware["attention"] == "eager"  # every example is short
    assert fine_tune.hardware["base_dtype"] in ("bfloat16", "float32")
    assert set(fine_tune.timings) == {"load_s", "tokenize_s", "train_s", "save_s", "merge_s"}
    counts = finetune_services.split_counts(version)
    assert fine_tune.n_train == counts["train"] and fine_tune.n_eval == counts["validation"] > 0
    assert fine_tune.checkpoint_step == 30

    # The registered student and its lineage.
    student = fine_tune.result_model
    assert student is not None and job.result["student_model_id"] == student.pk
    assert student.kind == StudentKind.DISTILLED and student.team == team
    assert student.base_model == base and student.dataset_version == version
    assert student.method == "lora" and student.hyperparameters["total_steps"] == 30
    assert student.hyperparameters["epochs"] == round(30 * 4 / fine_tune.n_train, 2)
    assert student.code_version
    assert student.metrics["eval_accuracy"] == pytest.approx(points[-1].eval_accuracy)
    assert student.file_sizes["weights"] > 0 and student.file_sizes["adapter"] > 0
    assert student.provenance["dataset_hash"] == version.content_hash

    # Files: each one, and each artifact as a zip, byte for byte; nothing else.
    client = client_for(owner)
    page = client.get(reverse("finetunes:finetune_detail", args=[fine_tune.pk])).content.decode()
    assert student.name in page and "model.safetensors" in page
    assert "eager attention" in page and f"base weights {fine_tune.hardware['base_dtype']}" in page
    merged = storage.data_path(student.path)
    response = client.get(
        reverse("finetunes:student_file", args=[student.pk, "model", "model.safetensors"])
    )
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == (merged / "model.safetensors").read_bytes()
    response = client.get(reverse("finetunes:student_download", args=[student.pk, "adapter"]))
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content)))
    adapter = storage.data_path(student.adapter_path)
    names = {Path(n).name: n for n in archive.namelist()}
    assert "adapter_model.safetensors" in names and "adapter_config.json" in names
    assert (
        archive.read(names["adapter_model.safetensors"])
        == (adapter / "adapter_model.safetensors").read_bytes()
    )
    response = client.get(reverse("finetunes:student_download", args=[student.pk, "tokenizer"]))
    tokenizer_files = {
        Path(n).name
        for n in zipfile.ZipFile(io.BytesIO(b"".join(response.streaming_content))).namelist()
    }
    assert "tokenizer.json" in tokenizer_files and "model.safetensors" not in tokenizer_files
    base_url = f"/students/{student.pk}/download/model/"
    for bad in ("training.log", "..%2Ftraining.log", "%2E%2E%2Fspec.json", "..", "."):
        assert client.get(base_url + bad).status_code == 404, bad
    assert client.get(f"/students/{student.pk}/download/checkpoints/").status_code == 404


def test_cancel_stops_within_one_step_and_keeps_the_checkpoint(
    worker_factory, team, owner, tiny_model_dir
):  # type: ignore[no-untyped-def]
    worker = gpu_worker(worker_factory)
    version = frozen_version(team, owner)
    fine_tune = start(
        version,
        owner,
        tiny_student(team, tiny_model_dir),
        max_steps=20_000,
        checkpoint_every_steps=5000,
    )
    wait_until(lambda: len(steps_of(fine_tune)) >= 3, timeout=120, message="training to start")
    finetune_services.fine_tune_cancel(fine_tune=fine_tune)
    asked = time.monotonic()
    job = finished(fine_tune, worker, timeout=60)
    assert job.status == JobStatus.CANCELLED, job.error
    assert time.monotonic() - asked < 30

    fine_tune.refresh_from_db()
    out = output_dir(fine_tune)
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    steps = [e for e in events if e["type"] == "step"]
    stopped_at = steps[-1]["step"]
    assert stopped_at < 20_000
    # The engine saw the request and finished at most the step it was in. A file's mtime comes
    # from the kernel's coarse clock (one tick, up to 10 ms, behind the real time), so a step
    # that ended just before the file existed can look later than it: allow one tick.
    cancel_seen = (out / "CANCEL").stat().st_mtime
    assert len([e for e in steps if e["t"] > cancel_seen + 0.010]) <= 1
    # It kept a checkpoint of the step it stopped at.
    assert latest_checkpoint(out) == out / "checkpoints" / f"checkpoint-{stopped_at}"
    assert fine_tune.checkpoint_step == stopped_at
    assert fine_tune.result_model is None
    assert steps_of(fine_tune)[-1] == stopped_at


def test_a_worker_killed_mid_training_is_reaped_and_the_next_attempt_resumes_from_the_checkpoint(
    worker_factory, team, owner, tiny_model_dir
):  # type: ignore[no-untyped-def]
    first = gpu_worker(worker_factory)
    version = frozen_version(team, owner)
    total = 400
    fine_tune = start(
        version,
        owner,
        tiny_student(team, tiny_model_dir),
        max_steps=total,
        checkpoint_every_steps=20,
    )
    wait_until(
        lambda: FineTune.objects.get(pk=fine_tune.pk).checkpoint_step >= 20,
        timeout=120,
        message="a first checkpoint",
    )
    first.kill()
    out = output_dir(fine_tune)
    checkpoint = latest_checkpoint(out)
    assert checkpoint is not None
    kept = int(checkpoint.name.split("-")[1])
    assert 20 <= kept < total, "training finished before the kill; make it longer"
    assert status_of(fine_tune) == JobStatus.RUNNING  # nobody told the database
    # Points are written in batches: the last few before the kill may be missing (here: made
    # so). The next attempt fills them in from the engine's events file.
    TrainingPoint.objects.filter(fine_tune=fine_tune, step__gt=kept - 5).delete()

    # No heartbeat any more: the reaper re-queues the job and another worker takes it.
    Job.objects.filter(pk=fine_tune.job_id).update(
        heartbeat_at=timezone.now() - timezone.timedelta(hours=1)
    )
    cache.delete(services.live_progress_key(fine_tune.job_id))
    second = gpu_worker(worker_factory)
    assert services.jobs_reap_stale(stale_after_s=60, max_attempts=3) == {
        "requeued": 1,
        "failed": 0,
        "sent": 0,
    }
    job = finished(fine_tune, second)
    assert job.status == JobStatus.SUCCEEDED, job.error + "".join(second.log[-30:])
    assert job.attempts == 2
    fine_tune.refresh_from_db()
    assert fine_tune.resumed_from_step == kept  # not zero
    started = [
        json.loads(line)
        for line in (out / "events.jsonl").read_text().splitlines()
        if '"started"' in line
    ]
    assert [e["resumed_from_step"] for e in started] == [0, kept]
    assert steps_of(fine_tune) == list(range(1, total + 1))
    assert fine_tune.result_model is not None


def test_sigterm_checkpoints_requeues_and_the_next_worker_resumes(
    worker_factory, team, owner, tiny_model_dir
):  # type: ignore[no-untyped-def]
    first = gpu_worker(worker_factory)
    version = frozen_version(team, owner)
    total = 400
    fine_tune = start(
        version,
        owner,
        tiny_student(team, tiny_model_dir),
        max_steps=total,
        checkpoint_every_steps=1000,
    )
    wait_until(lambda: len(steps_of(fine_tune)) >= 5, timeout=120, message="training to start")
    first.stop()  # SIGTERM to the worker's process group, as a service manager does
    assert first.proc is not None and first.proc.returncode is not None

    job = job_of(fine_tune)
    assert job.status == JobStatus.QUEUED, job.error + "".join(first.log[-30:])
    fine_tune.refresh_from_db()
    out = output_dir(fine_tune)
    kept = fine_tune.checkpoint_step
    assert 5 <= kept < total
    assert latest_checkpoint(out) == out / "checkpoints" / f"checkpoint-{kept}"

    second = gpu_worker(worker_factory)
    services.job_enqueue(job=job)  # (starting a test worker purged the re-queued message)
    job = finished(fine_tune, second)
    assert job.status == JobStatus.SUCCEEDED, job.error + "".join(second.log[-30:])
    fine_tune.refresh_from_db()
    assert fine_tune.resumed_from_step == kept
    assert steps_of(fine_tune) == list(range(1, total + 1))


def test_qlora_is_refused_clearly_by_a_cpu_only_worker(worker_factory, team, owner, tiny_model_dir):  # type: ignore[no-untyped-def]
    worker = gpu_worker(worker_factory)
    # A GPU worker reported in somewhere (so the form lets QLoRA through), but the job lands on
    # this CPU-only one.
    WorkerInfo.objects.create(
        hostname="gpu-box@elsewhere",
        queues=["gpu"],
        cuda_devices=[{"name": "NVIDIA H100", "memory_gb": 79.6}],
        cpu_cores=16,
        started_at=timezone.now(),
    )
    version = frozen_version(team, owner)
    fine_tune = start(
        version, owner, tiny_student(team, tiny_model_dir), method="qlora", max_steps=5
    )
    job = finished(fine_tune, worker, timeout=90)
    assert job.status == JobStatus.FAILED
    assert "QLoRA needs a CUDA GPU" in job.error and "Choose LoRA" in job.error
    assert not TrainingPoint.objects.filter(fine_tune=fine_tune).exists()
    # The worker itself reported in as CPU-only on the gpu queue.
    me = WorkerInfo.objects.exclude(hostname="gpu-box@elsewhere").get()
    assert me.queues == ["gpu"] and me.cuda_devices == [] and me.cpu_cores >= 1
