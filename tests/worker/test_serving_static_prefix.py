"""The serving engine reuses the model state after the prompt's shared start (CTranslate2's
static prompt): every answer and its confidence must be what the whole prompt gives."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.tiny_model import build_tiny_model
from worker.serving_engine import ServedStudent
from worker.taskspec import TaskSpec

LABELS = ("card_arrival", "lost_or_stolen_card", "top_up_failed", "refund")
INPUTS = [
    "my card has not arrived yet",
    "Someone stole my wallet!",
    "top up failed twice, why?",
    "x",
    "Quiero un reembolso por favor",
]


def test_answers_with_the_shared_start_cached_equal_the_whole_prompts(tmp_path: Path) -> None:
    model_dir = build_tiny_model(tmp_path / "student")
    task = TaskSpec(
        instruction_template="Which intent is this message?\n\nMessage: {{ text }}",
        output_kind="label",
        input_fields=("text",),
        label_set=LABELS,
    )
    served = ServedStudent.load(
        task=task, model_dir=model_dir, cache_dir=tmp_path / "cache", engine="ct2"
    )
    backend = served.backend
    prefix = list(backend.static_prefix)  # type: ignore[attr-defined]
    prompts = [served.encode([{"role": "user", "content": t}], 0) for t in INPUTS]
    assert len(prefix) > 5
    assert all(p[: len(prefix)] == prefix and len(p) > len(prefix) for p in prompts)
    assert "Which intent" in served.tokenizer.decode(prefix)

    cached = [served.answer_batch([p], 0, confidence=True)[0] for p in prompts]
    cached += served.answer_batch(prompts, 0, confidence=True)
    backend.static_prefix = []  # type: ignore[attr-defined]
    whole = [served.answer_batch([p], 0, confidence=True)[0] for p in prompts]
    whole += served.answer_batch(prompts, 0, confidence=True)
    assert [a.text for a in cached] == [a.text for a in whole]
    assert all(a.text in LABELS for a in cached)
    for a, b in zip(cached, whole, strict=True):
        assert a.confidence == pytest.approx(b.confidence, rel=1e-3, abs=1e-6)
