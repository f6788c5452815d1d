"""A newcomer's first hour: `load_demo` on a fresh database (the tiny model standing in for
SmolLM2), a real Celery worker runs the demo's fine-tune and evaluation, and the newcomer walks
dashboard → project → report in Chromium and finds a verdict with measured figures."""

from __future__ import annotations

import io
import re
import shutil
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from playwright.sync_api import expect

from evaluations.models import Evaluation
from finetunes.models import FineTune
from jobs.models import JobStatus
from reports.management.commands.load_demo import DEMO_PROJECT, TEACHER_MODEL
from tests.finetunes.finetune_support import WORKER_ENV

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def load(*args: str) -> str:
    out = io.StringIO()
    call_command("load_demo", *args, stdout=out)
    return out.getvalue()


def test_the_demo_reaches_its_report_on_a_fresh_database(
    page, live_server, worker_factory, tiny_model_dir
):  # type: ignore[no-untyped-def]
    worker_factory(queues="default,gpu", concurrency=1, extra_env=WORKER_ENV)
    base = Path(settings.DATA_DIR) / "models" / f"tiny-demo-{uuid.uuid4().hex[:8]}"
    shutil.copytree(tiny_model_dir, base)

    first = load("--url", live_server.url, "--base-model", str(base))
    password = re.search(r"as demo / (\S+)", first)
    assert password, first
    # What the background follower does: queue the evaluation once the fine-tune has its
    # student, and wait for it (the worker runs both).
    load("--follow", "--url", live_server.url, "--base-model", str(base))
    fine_tune = FineTune.objects.get()
    evaluation = Evaluation.objects.get()
    assert fine_tune.job.status == JobStatus.SUCCEEDED, fine_tune.job.error
    assert evaluation.job.status == JobStatus.SUCCEEDED, evaluation.job.error

    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("#id_username", "demo")
    page.fill("#id_password", password.group(1))
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")

    # The dashboard: the demo project, evaluated, with its verdict; no "Demo: ..." status left.
    row = page.get_by_test_id("project-row").filter(has_text=DEMO_PROJECT)
    expect(row.get_by_test_id("stage")).to_have_text("Evaluated")
    expect(row.get_by_test_id("verdict")).not_to_contain_text("not evaluated")
    expect(row).not_to_contain_text("Demo:")
    row.get_by_role("link", name=DEMO_PROJECT).click()

    # The project, then its report.
    expect(page.get_by_test_id("input-count")).not_to_have_text("0")
    page.get_by_role("link", name="Report", exact=True).click()
    expect(page.get_by_test_id("verdict-title")).not_to_be_empty()
    expect(page.get_by_test_id("verdict-sentence")).not_to_be_empty()
    expect(page.get_by_test_id("student-per-1k")).not_to_have_text("—")
    expect(page.get_by_test_id("fine-tuning-cost")).not_to_have_text("—")
    expect(page.locator("body")).to_contain_text(TEACHER_MODEL)
    expect(page.locator("body")).to_contain_text("Distilled student")
