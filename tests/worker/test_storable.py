"""Model text with a NUL character is kept (U+FFFD in its place), not a failed write."""

from __future__ import annotations

import pytest

from worker.export.quant_check import QuantScore
from worker.serving_engine import Answer
from worker.storable import storable
from worker.teachers.base import TeacherResponse


def test_every_string_in_a_value_loses_its_nul_characters() -> None:
    value = {"a\x00": ["x\x00y", ("z\x00",), 3, None], "ok": "plain"}
    assert storable(value) == {"a\ufffd": ["x\ufffdy", ["z\ufffd"], 3, None], "ok": "plain"}


def test_what_models_answer_is_storable_wherever_it_comes_from() -> None:
    assert TeacherResponse(custom_id="1", raw_text="card\x00").raw_text == "card\ufffd"
    score = QuantScore("TQ1_0", "f", "accuracy", 0.0, 1, 0.1, "llama.cpp", outputs=["\x00ab"])
    assert score.outputs == ["\ufffdab"]
    answer = Answer(text="a\x00", prompt_tokens=1, completion_tokens=1, finish_reason="stop")
    assert answer.text == "a\ufffd"


@pytest.mark.django_db
def test_postgresql_keeps_the_replaced_text_in_jsonb() -> None:
    from projects.models import InputRow
    from tests.factories import ProjectFactory

    project = ProjectFactory()
    row = InputRow.objects.create(project=project, data=storable({"text": "a\x00b"}))
    row.refresh_from_db()
    assert row.data == {"text": "a\ufffdb"}
