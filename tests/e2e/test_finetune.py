"""Start a fine-tune of the tiny model from a dataset version, watch the loss chart fill in while
it trains, and see the job finish with the distilled student and its downloads."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from finetunes.models import FineTune
from tests.finetunes.finetune_support import WORKER_ENV, frozen_version, tiny_student

pytestmark = [pytest.mark.browser, pytest.mark.slow]

STEPS = 600


def test_start_a_fine_tune_watch_the_loss_chart_and_get_the_student(
    signed_in, live_server, owner, team, worker_factory, tiny_model_dir
):  # type: ignore[no-untyped-def]
    worker_factory(queues="default,gpu", concurrency=1, extra_env=WORKER_ENV)
    version = frozen_version(team, owner)
    base = tiny_student(team, tiny_model_dir)

    page = signed_in(owner)
    page.goto(f"{live_server.url}/projects/{version.project_id}/fine-tunes/")
    page.get_by_test_id(f"finetune-from-{version.pk}").click()
    expect(page.get_by_test_id("presets")).to_contain_text("balanced (suggested)")
    page.select_option("#id_student", str(base.pk))
    page.select_option("#id_method", "qlora")
    page.get_by_test_id("start-finetune").click()
    expect(page.get_by_test_id("error-method")).to_contain_text("QLoRA needs a CUDA GPU")

    page.select_option("#id_method", "lora")
    page.fill("#id_max_steps", str(STEPS))
    page.fill("#id_batch_size", "4")
    page.fill("#id_learning_rate", "0.01")
    page.fill("#id_checkpoint_every_steps", "100")
    page.get_by_test_id("start-finetune").click()

    # The job page: the chart fills in while the job runs.
    chart = page.get_by_test_id("loss-chart")
    page.wait_for_function(
        "() => Number(document.getElementById('loss-chart').dataset.points) > 0",
        timeout=120_000,
    )
    first = int(chart.get_attribute("data-points") or 0)
    expect(page.get_by_test_id("finetune-status")).to_have_text("Running")
    page.wait_for_function(
        f"() => Number(document.getElementById('loss-chart').dataset.points) > {first}",
        timeout=60_000,
    )
    assert first < STEPS  # it was drawn before training ended, and grew
    expect(page.get_by_test_id("finetune-speed")).not_to_have_text("—")
    expect(chart.locator(".scatterlayer .trace").first).to_be_visible()

    # It finishes: the page shows the result, the full curve and the downloads.
    expect(page.get_by_test_id("finetune-status")).to_have_text("Succeeded", timeout=180_000)
    expect(page.get_by_test_id("finetune-result")).to_be_visible()
    page.wait_for_function(
        f"() => Number(document.getElementById('loss-chart').dataset.points) === {STEPS}"
    )
    fine_tune = FineTune.objects.get()
    student = fine_tune.result_model
    assert student is not None
    expect(page.get_by_test_id("student-link")).to_have_text(student.name)
    expect(page.get_by_test_id("file-model-model.safetensors")).to_be_visible()
    with page.expect_download() as download:
        page.get_by_test_id("download-adapter").click()
    assert download.value.suggested_filename.endswith("-adapter.zip")
    page.get_by_test_id("student-link").click()
    expect(page.get_by_test_id("student-lineage")).to_contain_text(version.name)
    expect(page.get_by_test_id("student-lineage")).to_contain_text(base.name)
