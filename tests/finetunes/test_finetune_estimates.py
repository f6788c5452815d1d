"""The fine-tune start form says how long each preset takes on the gpu-queue worker: from the
runs measured there, or a first-run estimate that says it is one and where its rate comes from."""

from __future__ import annotations

import pytest
from django.urls import reverse
from django.utils import timezone

from finetunes import services as finetune_services
from finetunes.estimates import FIRST_RUN, training_measurements
from finetunes.forms import FineTuneForm
from finetunes.models import FineTune
from jobs import services as job_services
from jobs.models import Job, WorkerInfo
from jobs.throughput import about
from jobs.workers import Hardware
from tests.finetunes.finetune_support import frozen_version, start, tiny_student

pytestmark = pytest.mark.django_db


@pytest.fixture
def version(team, owner):  # type: ignore[no-untyped-def]
    return frozen_version(team, owner)


@pytest.fixture
def base(team, tiny_model_dir):  # type: ignore[no-untyped-def]
    return tiny_student(team, tiny_model_dir)


def a_cpu_worker(cores: int = 2) -> WorkerInfo:
    return WorkerInfo.objects.create(
        hostname="cpu-1@laptop", queues=["gpu"], cpu_cores=cores, started_at=timezone.now()
    )


def finished_run(version, owner, base, *, samples_per_s: float, cores: int = 2) -> FineTune:  # type: ignore[no-untyped-def]
    """A fine-tune that trained on a ``cores``-core CPU worker, recorded as the worker does."""
    fine_tune = start(version, owner, base, max_steps=10)
    job = job_services.job_claim(job_id=fine_tune.job_id)
    assert job is not None
    FineTune.objects.filter(pk=fine_tune.pk).update(
        hardware={"worker": "laptop", "device": "cpu", "threads": cores, "cpu_cores": cores},
        timings={"load_s": 20.0, "tokenize_s": 5.0, "train_s": 300.0, "save_s": 15.0},
        train_seconds=300.0,
    )
    job_services.job_succeed(job=job, result={"samples_per_s": samples_per_s, "steps": 10})
    return fine_tune


def new_url(version) -> str:  # type: ignore[no-untyped-def]
    return reverse("finetunes:finetune_new", args=[version.project_id, version.pk])


def test_the_form_shows_the_time_measured_on_this_workers_last_runs(
    client_for, owner, version, base
):  # type: ignore[no-untyped-def]
    a_cpu_worker(cores=2)
    finished_run(version, owner, base, samples_per_s=0.05)
    [measured] = training_measurements(method="lora")
    assert measured.hardware_key == "cpu:2" and measured.overhead_s == 40.0
    html = client_for(owner).get(new_url(version)).content.decode()
    assert 'data-testid="measured-estimate"' in html
    assert "measured on the last 1 run on this hardware" in html
    assert "first-run-estimate" not in html
    n_train = finetune_services.split_counts(version)["train"]
    quick = finetune_services.preset_table(n_train=n_train, gpu=False)[0]
    expected = about(40.0 + quick["samples"] / 0.05)
    assert f'<td data-testid="estimate">{expected}</td>' in html
    assert "on 2 CPU cores" in html
    # No promise the estimate does not support.
    assert "minutes on a laptop" not in html and "takes minutes" not in html


def test_a_run_on_other_hardware_is_no_measurement_here(client_for, owner, version, base):  # type: ignore[no-untyped-def]
    a_cpu_worker(cores=8)
    finished_run(version, owner, base, samples_per_s=0.05, cores=2)
    html = client_for(owner).get(new_url(version)).content.decode()
    assert 'data-testid="first-run-estimate"' in html and "measured-estimate" not in html


def test_without_measurements_the_estimate_says_it_is_a_first_run_one(
    client_for, owner, version, base
):  # type: ignore[no-untyped-def]
    a_cpu_worker(cores=2)
    html = client_for(owner).get(new_url(version)).content.decode()
    assert 'data-testid="first-run-estimate"' in html
    assert "first-run estimate: nothing measured on 2 CPU cores yet" in html
    assert "0.6 samples/s per CPU core" in html  # where the rate comes from
    assert 'data-testid="estimate">' in html


def test_with_no_worker_there_is_no_estimate(client_for, owner, version, base):  # type: ignore[no-untyped-def]
    html = client_for(owner).get(new_url(version)).content.decode()
    assert 'data-testid="no-estimate"' in html and 'data-testid="estimate"' not in html


def test_preset_choices_name_their_steps_and_time_when_the_dataset_size_is_known(
    team, version, base
):  # type: ignore[no-untyped-def]
    a_cpu_worker(cores=2)
    form = FineTuneForm(team=team, students=[base], has_gpu=False, n_train=16)
    labels = dict(form.fields["preset"].choices)  # type: ignore[attr-defined]
    assert labels["quick"].startswith("Quick — the fewest steps and a small adapter · 4 steps, ")
    assert labels["quick"].endswith("on 2 CPU cores (first-run estimate)")
    plain = FineTuneForm(team=team, students=[base], has_gpu=False)
    assert dict(plain.fields["preset"].choices)["balanced"] == "Balanced"  # type: ignore[attr-defined]


def test_hardware_from_a_worker_and_from_a_stored_record() -> None:
    gpu = Hardware.of_record(
        {"device": "cuda", "cpu_cores": 16, "cuda_devices": [{"name": "NVIDIA H100"}]}
    )
    assert (
        gpu == Hardware(gpu="NVIDIA H100", cpu_cores=16) and gpu.describe() == "NVIDIA H100 (GPU)"
    )
    assert Hardware.of_record({"device": "cpu", "cores": 4, "name": "Xeon"}) == Hardware("", 4)
    assert Hardware.of_record({}) is None
    assert FIRST_RUN.per_core_per_s > 0
    assert Job.objects.count() == 0
