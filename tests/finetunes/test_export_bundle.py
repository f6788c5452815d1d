"""Export bundles end to end: a tiny Llama student fine-tuned by a real gpu-queue worker, then
"Build export bundle" on its page. llama.cpp's own converter and quantiser make the GGUFs, the
quant check runs each on the test split in llama.cpp, and the files load back: the GGUF answers
in llama.cpp, the adapter loads with peft on the base and answers like the merged model.

One quant breaks on purpose: the worker is configured to also make TQ1_0 (llama.cpp's ternary
type, 1.69 bits per weight, meant for models trained ternary). On an ordinary model it wipes out
what was learned, and the check must mark it "do not use" with the numbers. The student is a
256-wide variant of the tiny test model so its rows are whole 256-value quant blocks: with
narrower rows llama.cpp falls back to 4/5-bit types and nothing would break.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from django.urls import reverse

from finetunes.models import ExportBundle, StudentKind, StudentModel, StudentSource
from jobs import storage
from jobs.models import Job, JobStatus
from tests.conftest import wait_until
from tests.finetunes.finetune_support import (
    LABELS,
    WORKER_ENV,
    frozen_version,
    job_of,
    start,
    tiny_student,
)
from tests.helpers.tiny_model import build_tiny_model

pytestmark = pytest.mark.slow

TERMINAL = {"succeeded", "failed", "cancelled"}
QUANTS = "Q8_0,Q4_K_M,TQ1_0"


@pytest.fixture(scope="module")
def wide_tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(
        tmp_path_factory.mktemp("wide_tiny_model") / "model", hidden_size=256, num_heads=4
    )


def export_finished(bundle: ExportBundle, timeout: float = 900) -> Job:
    wait_until(
        lambda: Job.objects.get(pk=bundle.job_id).status in TERMINAL,
        timeout=timeout,
        message="the export job to end",
    )
    return Job.objects.get(pk=bundle.job_id)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_export_bundle_files_load_back_and_a_broken_quant_is_flagged(
    worker_factory, team, owner, outsider, wide_tiny_model_dir, client_for
):  # type: ignore[no-untyped-def]
    worker = worker_factory(
        queues="gpu",
        concurrency=1,
        extra_env={**WORKER_ENV, "DISTILLERY_EXPORT_QUANT_TYPES": QUANTS},
    )
    version = frozen_version(team, owner, n=60)
    base = tiny_student(team, wide_tiny_model_dir, name="tiny-llama-256")
    fine_tune = start(version, owner, base, max_steps=40, learning_rate=1e-2)
    wait_until(lambda: job_of(fine_tune).status in TERMINAL, timeout=300, message="fine-tune")
    assert job_of(fine_tune).status == JobStatus.SUCCEEDED, job_of(fine_tune).error
    fine_tune.refresh_from_db()
    student = fine_tune.result_model
    assert student is not None

    # The button on the student's page starts a job; the page links it (lineage).
    client = client_for(owner)
    page = client.get(reverse("finetunes:student_detail", args=[student.pk])).content.decode()
    assert "Build export bundle" in page
    response = client.post(reverse("finetunes:export_start", args=[student.pk]))
    bundle = ExportBundle.objects.get(student=student)
    assert response.status_code == 302 and response["Location"] == reverse(
        "finetunes:export_detail", args=[bundle.pk]
    )
    job = export_finished(bundle)
    assert job.status == JobStatus.SUCCEEDED, job.error + "".join(worker.log[-40:])
    assert job.progress_done == job.progress_total > 0
    bundle.refresh_from_db()
    page = client.get(reverse("finetunes:student_detail", args=[student.pk])).content.decode()
    assert f"Export bundle #{bundle.pk}" in page

    # Every file listed with its size and sha256, as on disk and as downloaded.
    folder = storage.data_path(bundle.folder)
    names = {f["name"] for f in bundle.files}
    slug = bundle.slug
    for quant in ("F16", "Q8_0", "Q4_K_M", "TQ1_0"):
        assert f"gguf/{slug}-{quant}.gguf" in names
    assert {"Modelfile", "DEPLOY.md", "merged/model.safetensors", "merged/tokenizer.json"} <= names
    assert {"adapter/adapter_model.safetensors", "adapter/adapter_config.json"} <= names
    for listed in bundle.files:
        on_disk = (folder / listed["name"]).read_bytes()
        assert listed["size"] == len(on_disk) and listed["sha256"] == sha256(on_disk)
    response = client.get(reverse("finetunes:export_file", args=[bundle.pk, "Modelfile"]))
    assert response.status_code == 200
    assert b"".join(response.streaming_content).decode() == bundle.modelfile
    gguf_name = f"gguf/{slug}-Q8_0.gguf"
    response = client.get(reverse("finetunes:export_file", args=[bundle.pk, gguf_name]))
    listed = next(f for f in bundle.files if f["name"] == gguf_name)
    assert sha256(b"".join(response.streaming_content)) == listed["sha256"]
    for bad in ("manifest.json", "../Modelfile", "gguf/../Modelfile", "nothing"):
        url = reverse("finetunes:export_file", args=[bundle.pk, "x"])[:-1] + bad
        assert client.get(url).status_code == 404, bad
    outsider_client = client_for(outsider)
    assert (
        outsider_client.get(reverse("finetunes:export_detail", args=[bundle.pk])).status_code == 404
    )
    assert (
        outsider_client.get(
            reverse("finetunes:export_file", args=[bundle.pk, gguf_name])
        ).status_code
        == 404
    )
    client = client_for(owner)

    # The quant check: the unquantised student, then each GGUF; TQ1_0 is marked "do not use".
    checks = {c["name"]: c for c in bundle.quant_checks}
    print(  # the measured figures, in the test log
        "export bundle:",
        {k: round(100 * c["value"], 1) for k, c in checks.items()},
        bundle.timings,
    )
    assert list(checks) == ["unquantised", "F16", "Q8_0", "Q4_K_M", "TQ1_0"]
    reference = checks["unquantised"]
    assert reference["metric"] == "accuracy" and reference["n"] == 6
    assert reference["value"] >= 0.8, reference
    # F16 and 8-bit keep what the student learned; Q4_K_M is judged by its own numbers (on a
    # random 256-wide model, 4 bits may or may not cost a test row); TQ1_0 breaks it.
    for name in ("F16", "Q8_0"):
        assert not checks[name]["do_not_use"], checks
    q4 = checks["Q4_K_M"]
    assert q4["delta_points"] == round(100 * (q4["value"] - reference["value"]), 2)
    assert q4["do_not_use"] == (q4["delta_points"] < -bundle.margin_points)
    broken = checks["TQ1_0"]
    assert broken["do_not_use"] and broken["delta_points"] < -bundle.margin_points, checks
    page = client.get(reverse("finetunes:export_detail", args=[bundle.pk])).content.decode()
    assert 'data-testid="do-not-use-TQ1_0"' in page
    assert f"{round(100 * broken['value'], 1)} % vs {round(100 * reference['value'], 1)} %" in page
    assert 'data-testid="do-not-use-Q8_0"' not in page
    # The Modelfile loads the smallest quant that passed.
    expected = "Q8_0" if q4["do_not_use"] else "Q4_K_M"
    assert bundle.ollama_gguf == expected
    assert bundle.modelfile.splitlines()[1] == f"FROM ./gguf/{slug}-{expected}.gguf"

    # The GGUF loads in llama.cpp and answers with its own embedded chat template and
    # tokenizer, as Ollama would run it.
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(folder / f"gguf/{slug}-Q8_0.gguf"), n_ctx=512, verbose=False, seed=0
    )
    from finetunes.training_job import training_examples
    from worker.taskspec import without_label_list

    # The prompt as the student was trained to read it (its label list left out).
    example = training_examples(version, "test")[0]
    prompt = without_label_list(list(example.messages))
    assert prompt[0] == {"role": "system", "content": version.project.system_prompt}
    answer = llm.create_chat_completion(messages=prompt, temperature=0, max_tokens=8)
    text = answer["choices"][0]["message"]["content"].strip()
    assert text in LABELS and text == checks["Q8_0"]["outputs"][0]
    llm.close()

    # The adapter alone loads with peft on the base and answers like the merged model.
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder / "merged"))
    ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    base_model = AutoModelForCausalLM.from_pretrained(
        str(storage.data_path(base.path)), dtype=torch.float32
    )
    with_adapter = PeftModel.from_pretrained(base_model, str(folder / "adapter"))
    merged = AutoModelForCausalLM.from_pretrained(str(folder / "merged"), dtype=torch.float32)
    with torch.inference_mode():
        a = with_adapter.generate(ids, max_new_tokens=6, do_sample=False)
        b = merged.generate(ids, max_new_tokens=6, do_sample=False)
    assert a.tolist() == b.tolist()

    # Modelfile and commands, from the student's real chat template and the task.
    modelfile = bundle.modelfile
    assert '{{ else if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n' in modelfile
    assert f'SYSTEM """{version.project.system_prompt}"""' in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile and "PARAMETER temperature 0" in modelfile
    assert bundle.commands["ollama"].startswith(
        f"ollama create {slug} -f Modelfile\nollama run {slug} "
    )
    assert bundle.commands["vllm_merged"].startswith(
        f"vllm serve ./merged --served-model-name {slug}"
    )
    base_path = str(storage.data_path(base.path))
    assert bundle.commands["vllm_lora"].startswith(
        f"vllm serve {base_path} --enable-lora --lora-modules {slug}=./adapter"
    )
    assert "/v1/chat/completions" in bundle.commands["curl"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["files"] == bundle.files
    assert "do_not_use" in json.dumps(manifest["quant_checks"])


def test_exporting_a_student_whose_files_are_gone_fails_with_a_message(
    worker_factory, team, owner, client_for
):  # type: ignore[no-untyped-def]
    worker_factory(queues="gpu", concurrency=1, extra_env=WORKER_ENV)
    version = frozen_version(team, owner)
    student = StudentModel.objects.create(
        team=team,
        name="Ticket intents · v1 · LoRA #999",
        kind=StudentKind.DISTILLED,
        source=StudentSource.FINE_TUNE,
        path=f"finetunes/team-{team.pk}/gone/merged",
        adapter_path=f"finetunes/team-{team.pk}/gone/adapter",
        project=version.project,
        dataset_version=version,
    )
    client = client_for(owner)
    client.post(reverse("finetunes:export_start", args=[student.pk]))
    bundle = ExportBundle.objects.get(student=student)
    job = export_finished(bundle, timeout=120)
    assert job.status == JobStatus.FAILED
    assert job.error.startswith("the student's merged model is not on the server any more")
    assert "Traceback" not in job.error
    page = client.get(reverse("finetunes:export_detail", args=[bundle.pk])).content.decode()
    assert "the student&#x27;s merged model is not on the server any more" in page
    assert not storage.data_path(bundle.folder).exists()


def test_a_base_model_is_not_exported(team, owner, client_for, tiny_model_dir):  # type: ignore[no-untyped-def]
    base = tiny_student(team, tiny_model_dir)
    client = client_for(owner)
    page = client.get(reverse("finetunes:student_detail", args=[base.pk])).content.decode()
    assert "Build export bundle" not in page
    response = client.post(reverse("finetunes:export_start", args=[base.pk]), follow=True)
    assert "only a distilled student" in response.content.decode()
    assert not ExportBundle.objects.exists()
