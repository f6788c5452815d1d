"""ONNX Runtime as a serving engine: the hand-built graph gives transformers' logits (float32),
the int8 engine answers a batch as each prompt alone, applies stop and force rules, scores and
streams what it generates, builds its graph once per student, and refuses what it cannot build."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.helpers.tiny_model import build_tiny_model
from tests.worker.test_serving_llama import TASK
from tests.worker.test_serving_static_prefix import INPUTS
from worker.serving_engine import ServedStudent
from worker.serving_onnx import (
    ONNX_FILE,
    ONNX_MARK,
    OnnxBackend,
    UnsupportedModel,
    build_graph,
    convert_to_serving_onnx,
)


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("onnx") / "student", hidden_size=64)


def _prompts(student: Path, cache: Path) -> tuple[ServedStudent, list[list[int]]]:
    served = ServedStudent.load(task=TASK, model_dir=student, cache_dir=cache, engine="onnx")
    return served, [served.encode([{"role": "user", "content": t}], 0) for t in INPUTS]


def test_the_float32_graph_gives_transformers_logits(student: Path, tmp_path: Path) -> None:
    import torch

    from worker.serving_backends import TransformersBackend

    graph = build_graph(student, tmp_path / "f32.onnx")
    onnx = OnnxBackend(student, graph=graph)
    reference = TransformersBackend(student)
    served, prompts = _prompts(student, tmp_path / "cache")
    onnx.static_prefix = served.common_prefix()
    assert onnx.static_prefix  # the prompts' cached start is exercised, not skipped
    wanted = list(range(0, 256, 7))
    with torch.no_grad():
        for prompt in prompts:
            got = onnx.next_logprobs([prompt], wanted)[0]
            expected = reference.next_logprobs([prompt], wanted)[0]
            assert got == pytest.approx(expected, abs=1e-4)


def test_a_batch_answers_as_each_prompt_alone(student: Path, tmp_path: Path) -> None:
    served, prompts = _prompts(student, tmp_path / "cache")
    backend = served.backend
    assert isinstance(backend, OnnxBackend) and backend.static_prefix
    many = [*prompts, prompts[0][:-1], *prompts]  # more than a pass of 8, lengths differ
    alone = [backend.greedy([p], 6)[0] for p in many]

    def stop(index: int, tokens: Sequence[int]) -> bool:
        return index % 2 == 1 and len(tokens) == 2

    together = backend.greedy(many, 6, stop=stop)
    for i, (g, one) in enumerate(zip(together, alone, strict=True)):
        keep = 2 if i % 2 == 1 else len(one.tokens)
        assert g.tokens == one.tokens[:keep]
        assert g.logprobs[:keep] == pytest.approx(one.logprobs[:keep], abs=1e-3)
    # Forced tokens join the next pass: the next choice is greedy's after them.
    first = alone[0].tokens[0]
    forced = [t for t in (7, 11, 13) if t not in backend.eos_token_ids][:2]
    got = backend.greedy([prompts[0]], 4, force=lambda _, t: forced if len(t) == 1 else [])[0]
    assert got.tokens[:3] == [first, *forced]
    assert all(lp != lp for lp in got.logprobs[1:3])
    assert got.tokens[3] == backend.greedy([[*prompts[0], first, *forced]], 1)[0].tokens[0]


def test_scoring_and_streaming_agree_with_generation(student: Path, tmp_path: Path) -> None:
    served, prompts = _prompts(student, tmp_path / "cache")
    backend = served.backend
    for prompt in prompts[:3]:
        g = backend.greedy([prompt], 5)[0]
        streamed = list(backend.stream(prompt, 5))
        assert [t for t, _ in streamed][: len(g.tokens)] == g.tokens
        assert [lp for _, lp in streamed] == pytest.approx(g.logprobs, abs=1e-3)
        total = backend.continuation_logprob(prompt, g.tokens)
        assert total == pytest.approx(sum(g.logprobs[: len(g.tokens)]), abs=1e-3)
        first = backend.next_logprobs([prompt], [g.tokens[0]])[0][0]
        assert first == pytest.approx(g.logprobs[0], abs=1e-3)
    # Label answers through the serving engine: the same with and without a batch.
    together = served.answer_batch(prompts, 0)
    assert [a.text for a in together] == [served.answer_batch([p], 0)[0].text for p in prompts]
    assert all(a.text in TASK.label_set for a in together)


def test_the_graph_is_built_once_per_student_and_other_models_are_refused(
    student: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    path = convert_to_serving_onnx(student, cache)
    assert path.name == ONNX_FILE and (cache / ONNX_MARK).read_text() == str(student.resolve())
    built = path.stat().st_mtime_ns
    assert convert_to_serving_onnx(student, cache).stat().st_mtime_ns == built
    assert not list(cache.glob("*.partial"))
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(UnsupportedModel, match="gpt2"):
        convert_to_serving_onnx(other, tmp_path / "cache-other")
    assert not (tmp_path / "cache-other" / ONNX_FILE).exists()
