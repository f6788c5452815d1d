"""Importing existing teacher outputs: OpenAI chat-format JSONL logs or a CSV → an imported run."""

from __future__ import annotations

import html
import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from jobs.models import JobStatus
from projects.models import InputRow
from teachers.models import TeacherOutput, TeacherRun, TeacherRunMode
from tests.factories import ProjectFactory
from tests.teachers.teacher_support import LABELS, add_inputs
from worker.taskspec import build_messages

pytestmark = pytest.mark.django_db


@pytest.fixture
def labelled(team, owner):  # type: ignore[no-untyped-def]
    return ProjectFactory(team=team, created_by=owner, label_set=list(LABELS))


def log_line(project, text: str, answer: str, **extra) -> str:  # type: ignore[no-untyped-def]
    return json.dumps(
        {
            "request": {
                "model": "gpt-4o-2024-08-06",
                "messages": build_messages(project.task_spec(), {"text": text}),
            },
            "response": {
                "model": "gpt-4o-2024-08-06",
                "choices": [
                    {"message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 42, "completion_tokens": 3},
            },
            **extra,
        }
    )


def upload(client, project, name: str, content: str, **data):  # type: ignore[no-untyped-def]
    return client.post(
        reverse("teachers:teacher_run_import", args=[project.pk]),
        {"file": SimpleUploadedFile(name, content.encode()), **data},
    )


def test_openai_chat_logs_become_an_imported_run(labelled, owner, client_for):  # type: ignore[no-untyped-def]
    add_inputs(labelled, ["My card has not arrived"])  # already uploaded: reused, not duplicated
    lines = [
        log_line(labelled, "My card has not arrived", "card_arrival"),
        log_line(labelled, "Someone stole my card", "lost_or_stolen_card"),
        log_line(labelled, "Top up did not work", "no idea"),
    ]
    response = upload(client_for(owner), labelled, "prod-logs.jsonl", "\n".join(lines) + "\n")
    run = TeacherRun.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/teacher-runs/{run.pk}/"
    assert run.mode == TeacherRunMode.IMPORTED and run.source == "prod-logs.jsonl"
    assert run.model == "gpt-4o-2024-08-06" and run.job.status == JobStatus.SUCCEEDED
    assert run.cost_usd == 0 and run.calls_made == 0  # nothing was called or paid by us
    assert InputRow.objects.filter(project=labelled).count() == 3
    outputs = {o.input.data["text"]: o for o in TeacherOutput.objects.filter(run=run)}
    assert outputs["My card has not arrived"].parsed == "card_arrival"
    assert outputs["Someone stole my card"].input_tokens == 42
    assert outputs["Top up did not work"].parsed is None
    assert "not in the label set" in outputs["Top up did not work"].parse_error
    assert outputs["Top up did not work"].flag_codes
    page = client_for(owner).get(f"/teacher-runs/{run.pk}/")
    assert b"prod-logs.jsonl" in page.content and b"Imported outputs" in page.content


def test_an_input_object_on_the_line_names_the_fields(labelled, owner):  # type: ignore[no-untyped-def]
    from teachers.imports import teacher_run_import

    line = json.dumps(
        {
            "input": {"text": "Where is my card?"},
            "messages": [
                {"role": "user", "content": "free-form prompt that is not the template"},
                {"role": "assistant", "content": "card_arrival"},
            ],
        }
    )
    path = _write(line)
    run = teacher_run_import(project=labelled, user=owner, file_name="ft.jsonl", path=path)
    output = TeacherOutput.objects.get(run=run)
    assert output.input.data == {"text": "Where is my card?"} and output.parsed == "card_arrival"


def test_a_csv_with_input_and_output_columns(labelled, owner, client_for):  # type: ignore[no-untyped-def]
    content = 'TEXT,answer\n"Card, not here",card_arrival\nTop up failed,top_up_failed\n'
    response = upload(client_for(owner), labelled, "old.csv", content, output_column="answer")
    assert response.status_code == 302
    run = TeacherRun.objects.get()
    parsed = {o.input.data["text"]: o.parsed for o in TeacherOutput.objects.filter(run=run)}
    assert parsed == {"Card, not here": "card_arrival", "Top up failed": "top_up_failed"}


def test_a_repeated_input_becomes_a_second_sample(labelled, owner):  # type: ignore[no-untyped-def]
    from teachers.imports import teacher_run_import

    path = _write("text,output\nsame,card_arrival\nsame,top_up_failed\n", suffix=".csv")
    run = teacher_run_import(project=labelled, user=owner, file_name="s.csv", path=path)
    assert sorted(TeacherOutput.objects.filter(run=run).values_list("sample_index", flat=True)) == [
        0,
        1,
    ]
    assert run.samples_per_input == 2


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("logs.jsonl", "GOOD\n{not json\n", "logs.jsonl, line 2: not valid JSON"),
        ("logs.jsonl", 'GOOD\n{"request": {"messages": []}}\n', "logs.jsonl, line 2: no request"),
        (
            "logs.jsonl",
            'GOOD\n{"messages": [{"role": "user", "content": "hello there"}], '
            '"choices": [{"message": {"content": "card_arrival"}}]}\n',
            "logs.jsonl, line 2: the user message does not match the task's instruction template",
        ),
        ("old.csv", "text,output\nfine,card_arrival\nbad,\n", "old.csv, line 3: the 'output'"),
        ("old.csv", "body,output\nx,card_arrival\n", "old.csv, line 2: no column named 'text'"),
        ("old.txt", "x", "old.txt"),
    ],
)
def test_a_bad_line_imports_nothing_and_is_named(
    labelled, owner, client_for, name, content, message
):  # type: ignore[no-untyped-def]
    content = content.replace("GOOD", log_line(labelled, "fine", "card_arrival"))
    response = upload(client_for(owner), labelled, name, content)
    assert response.status_code == 400
    assert message in html.unescape(response.content.decode())
    assert not TeacherRun.objects.exists()
    assert not InputRow.objects.filter(project=labelled).exists()
    assert not TeacherOutput.objects.exists()


def _write(content: str, suffix: str = ".jsonl"):  # type: ignore[no-untyped-def]
    import tempfile
    from pathlib import Path

    path = Path(tempfile.mkdtemp()) / f"upload{suffix}"
    path.write_text(content + ("\n" if not content.endswith("\n") else ""))
    return path
