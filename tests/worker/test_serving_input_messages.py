"""What carries a task's input to the serving process (the gateway's student leg, any client)
and how the serving process reads it back: one input field is the message text itself, several
are a JSON object; whatever goes in comes back as the same row."""

from __future__ import annotations

import pytest

from worker.serving_engine import ServeError, input_messages, task_row
from worker.taskspec import TaskSpec


def spec(*fields: str) -> TaskSpec:
    body = " ".join(f"{{{{ {f} }}}}" for f in fields)
    return TaskSpec(instruction_template=body, output_kind="text", input_fields=fields)


def test_one_field_is_the_text_itself() -> None:
    task = spec("text")
    messages = input_messages(task, {"text": "Where is my card? ünïcode"})
    assert messages == [{"role": "user", "content": "Where is my card? ünïcode"}]
    assert task_row(task, messages) == {"text": "Where is my card? ünïcode"}


def test_several_fields_round_trip_as_json() -> None:
    task = spec("subject", "body")
    row = {"subject": "Refund", "body": 'line one\nline "two"'}
    assert task_row(task, input_messages(task, row)) == row
    with pytest.raises(ServeError) as missing:
        task_row(task, [{"role": "user", "content": '{"subject": "x"}'}])
    assert missing.value.param == "messages" and "'body'" in missing.value.message
