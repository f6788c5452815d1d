"""ONNX Runtime as a serving engine: the hand-built graph gives transformers' logits (float32),
the int8 engine answers a batch as each prompt alone, applies stop and force rules, scores and
streams what it generates, builds its graph once per student, and refuses what it cannot build."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.helpers.tiny_model import build_tiny_model
from tests.worker.test_serving_llama import TASK
from tests.worker.test_serving_static_prefix import INPUTS
from worker.model_loading import load_causal_lm
from worker.serving_engine import ServedStudent
from worker.serving_onnx import OnnxBackend
from worker.serving_onnx_graph import (
    GRAPH_VERSION,
    ONNX_FILE,
    ONNX_MARK,
    UnsupportedModel,
    activation_ranges,
    build_graph,
    convert_to_serving_onnx,
    smooth,
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
    assert path.name == ONNX_FILE
    assert (cache / ONNX_MARK).read_text().splitlines()[0] == str(student.resolve())
    built = path.stat().st_mtime_ns
    assert convert_to_serving_onnx(student, cache).stat().st_mtime_ns == built
    # A graph from an older builder (its mark names the source only) is built anew.
    (cache / ONNX_MARK).write_text(str(student.resolve()))
    assert convert_to_serving_onnx(student, cache).stat().st_mtime_ns != built
    assert GRAPH_VERSION in (cache / ONNX_MARK).read_text()
    assert not list(cache.glob("*.partial"))
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(UnsupportedModel, match="gpt2"):
        convert_to_serving_onnx(other, tmp_path / "cache-other")
    assert not (tmp_path / "cache-other" / ONNX_FILE).exists()


def _with_outsized_channel(
    student: Path, dest: Path, channel: int = 3, times: float = 100.0
) -> Path:
    """A copy of the tiny student whose attention and MLP inputs have one outsized channel, as
    real students' do: every RMSNorm weight's ``channel`` multiplied by ``times``."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(student, dest)
    weights = load_file(str(dest / "model.safetensors"))
    for key, value in weights.items():
        if key.endswith("layernorm.weight"):
            value = value.copy()
            value[channel] *= times
            weights[key] = value
    save_file(weights, str(dest / "model.safetensors"), metadata={"format": "pt"})
    return dest


def test_smoothing_keeps_the_students_function_and_its_int8_answers_closer(
    student: Path, tmp_path: Path
) -> None:
    import numpy as np
    import torch
    from safetensors.numpy import load_file

    outsized = _with_outsized_channel(student, tmp_path / "outsized")
    _, prompts = _prompts(outsized, tmp_path / "cache")
    ranges = activation_ranges(outsized, prompts[:3])
    assert int(ranges["qkv_0"].argmax()) == 3 and int(ranges["gate_up_1"].argmax()) == 3

    # In float, the smoothed weights are the same function.
    cfg = json.loads((outsized / "config.json").read_text())
    smoothed = smooth(load_file(str(outsized / "model.safetensors")), cfg, ranges, 0.5)
    model = load_causal_lm(outsized, dtype="float32")
    ids = torch.tensor([prompts[0]])
    with torch.no_grad():
        before = torch.log_softmax(model(ids).logits[0], -1)
        model.load_state_dict(
            {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in smoothed.items()}
        )
        after = torch.log_softmax(model(ids).logits[0], -1)
    assert torch.allclose(before, after, atol=1e-4)

    # In int8, the outsized channel no longer sets every token's step: answers stay close to the
    # float32 student's (measured: largest log-probability error 6.7 without smoothing, 0.33
    # with it).
    wanted = list(range(256))
    exact = OnnxBackend(outsized, graph=build_graph(outsized, tmp_path / "f32.onnx"))

    def error(graph: Path) -> float:
        backend = OnnxBackend(outsized, graph=graph)
        return max(
            max(abs(a - b) for a, b in zip(got, want, strict=True))
            for p in prompts
            for got, want in zip(
                backend.next_logprobs([p], wanted), exact.next_logprobs([p], wanted), strict=True
            )
        )

    plain = error(build_graph(outsized, tmp_path / "plain.onnx", int8_rows=True))
    smoothed_error = error(
        build_graph(outsized, tmp_path / "smooth.onnx", int8_rows=True, ranges=ranges)
    )
    assert smoothed_error < 1.0 < plain, (smoothed_error, plain)
    # The graph the serving engine builds is smoothed too, calibrated on its generic messages
    # (not on these prompts).
    served = error(convert_to_serving_onnx(outsized, tmp_path / "served"))
    assert served < 1.0 < plain, (served, plain)


def test_chosen_automatically_onnx_serves_the_student_and_gives_way_where_it_cannot(
    student: Path, tmp_path: Path
) -> None:
    from worker.serving_backends import open_backend, resolve_engine
    from worker.serving_llama import LlamaCppBackend

    assert resolve_engine("auto") == "onnx"
    assert isinstance(open_backend(student, tmp_path / "cache"), OnnxBackend)
    # Scaled rotary positions: the graph builder refuses them before building anything, and
    # llama.cpp (whose converter takes them) serves the student instead.
    scaled = tmp_path / "scaled"
    shutil.copytree(student, scaled)
    cfg = json.loads((scaled / "config.json").read_text())
    cfg["rope_parameters"] = {**cfg["rope_parameters"], "rope_type": "linear", "factor": 2.0}
    (scaled / "config.json").write_text(json.dumps(cfg))
    backend = open_backend(scaled, tmp_path / "cache-scaled")
    assert isinstance(backend, LlamaCppBackend)
    assert not (tmp_path / "cache-scaled" / ONNX_FILE).exists()
    with pytest.raises(UnsupportedModel, match="rotary"):
        open_backend(scaled, tmp_path / "cache-forced", engine="onnx")
