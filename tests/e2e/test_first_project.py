"""Sign in → create a project → define a label task → upload a CSV → watch the import reach 100 %."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from playwright.sync_api import expect

from projects.models import InputRow, Project

DEMO = Path(__file__).resolve().parents[2] / "projects" / "demo_data" / "banking77" / "train.jsonl"

pytestmark = pytest.mark.browser


def test_first_project_from_sign_in_to_imported_inputs(
    signed_in, live_server, owner, celery_worker, tmp_path
):  # type: ignore[no-untyped-def]
    rows = [json.loads(line) for line in DEMO.open()][:120]
    csv_path = tmp_path / "tickets.csv"
    with csv_path.open("w", newline="") as fh:
        import csv

        writer = csv.writer(fh)
        writer.writerow(["ticket", "intent"])
        writer.writerows([r["text"], r["label"]] for r in rows)
    labels = sorted({r["label"] for r in rows})

    page = signed_in(owner)
    page.click("text=New project")
    page.fill("#id_name", "Ticket routing")
    page.click("button:has-text('Create project')")

    # The task form, with its live preview (no inputs yet, so it says so).
    page.fill("#id_input_fields", "text")
    page.fill("#id_instruction_template", "Classify this ticket: {{ text }}")
    page.select_option("#id_output_kind", "label")
    page.fill("#id_label_set", "\n".join(labels))
    expect(page.get_by_test_id("preview")).to_contain_text("Upload inputs to preview")
    page.fill("#id_instruction_template", "Classify this ticket: {{ txt }}")
    expect(page.get_by_test_id("preview-error")).to_contain_text("unknown field 'txt'")
    page.fill("#id_instruction_template", "Classify this ticket: {{ text }}")
    page.click("button:has-text('Save task')")
    expect(page.locator(".messages")).to_contain_text("Task saved")

    page.click("text=Upload CSV / JSONL")
    page.set_input_files("#id_file", str(csv_path))
    page.click("button:has-text('Upload and map columns')")
    expect(page.locator("#id_map_text")).to_have_value("")  # "ticket" ≠ "text": the user maps it
    page.select_option("#id_map_text", "ticket")
    page.select_option("#id_reference_column", "intent")
    page.click("button:has-text('Import')")

    # The job page polls its status fragment until the worker finishes.
    expect(page.get_by_test_id("job-percent")).to_have_text("100 %", timeout=60_000)
    expect(page.get_by_test_id("job-status")).to_have_text("Succeeded")
    page.click("text=See the inputs")
    expect(page.get_by_test_id("inputs-total")).to_contain_text(f"{len(rows)} inputs")
    expect(page.locator("table")).to_contain_text(rows[0]["text"])

    project = Project.objects.get(name="Ticket routing")
    assert project.label_set == labels
    assert InputRow.objects.filter(project=project).count() == len(rows)

    # The task preview now renders on a real input row.
    page.goto(f"{live_server.url}/projects/{project.pk}/task/")
    expect(page.get_by_test_id("preview-user")).to_contain_text(
        f"Classify this ticket: {rows[0]['text']}"
    )
