"""llama.cpp as a serving engine: the student converted once to Q8_0 with llama.cpp's own tools,
answers constrained to the label set, the KV cache reused across requests without changing any
answer, and the same answers as transformers on the same prompts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.helpers.tiny_model import build_tiny_model
from tests.worker.test_serving_static_prefix import INPUTS as STATIC_PREFIX_INPUTS
from tests.worker.test_serving_static_prefix import LABELS
from worker.serving_engine import ServedStudent
from worker.serving_llama import gguf_file, gguf_mark
from worker.taskspec import TaskSpec

INPUTS = [*STATIC_PREFIX_INPUTS[:4], STATIC_PREFIX_INPUTS[0]]  # the last again: all cached
TASK = TaskSpec(
    instruction_template="Which intent is this message?\n\nMessage: {{ text }}",
    output_kind="label",
    input_fields=("text",),
    label_set=LABELS,
)


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("llama") / "student", hidden_size=64)


def test_llama_answers_equal_transformers_and_the_cache_changes_nothing(
    student: Path, tmp_path: Path
) -> None:
    served = ServedStudent.load(
        task=TASK, model_dir=student, cache_dir=tmp_path / "cache", engine="llama"
    )
    assert served.backend.name == "llama.cpp-q8_0"
    assert (tmp_path / "cache" / gguf_file("Q8_0")).is_file()
    assert (tmp_path / "cache" / gguf_mark("Q8_0")).read_text(encoding="utf-8") == str(
        student.resolve()
    )
    reference = ServedStudent.load(
        task=TASK, model_dir=student, cache_dir=tmp_path / "ref", engine="transformers"
    )
    prompts = [served.encode([{"role": "user", "content": t}], 0) for t in INPUTS]

    warm = [served.answer_batch([p], 0, confidence=True)[0] for p in prompts]
    batch = served.answer_batch(prompts, 0, confidence=True)
    decided = served.answer_batch(prompts, 0)
    assert all(a.text in LABELS for a in warm)
    assert [a.text for a in warm] == [a.text for a in batch] == [a.text for a in decided]
    assert warm[0].confidence == pytest.approx(warm[-1].confidence, rel=1e-4)

    # Cold: a fresh context per prompt (nothing reused) gives the same answers.
    for prompt, answer in zip(prompts, warm, strict=True):
        served.backend.reset()  # type: ignore[attr-defined]
        cold = served.answer_batch([prompt], 0, confidence=True)[0]
        assert cold.text == answer.text
        assert cold.confidence == pytest.approx(answer.confidence, rel=1e-3)

    # Q8_0 of the same weights: the same labels as transformers, confidences close.
    expected = reference.answer_batch(prompts, 0, confidence=True)
    assert [a.text for a in warm] == [a.text for a in expected]
    for a, b in zip(warm, expected, strict=True):
        assert a.confidence == pytest.approx(b.confidence, abs=0.05)


def test_llama_streams_text_and_reuses_its_conversion(student: Path, tmp_path: Path) -> None:
    text_task = TaskSpec(
        instruction_template="Reply to: {{ text }}", output_kind="text", input_fields=("text",)
    )
    cache = tmp_path / "cache"
    served = ServedStudent.load(task=text_task, model_dir=student, cache_dir=cache, engine="llama")
    prompt = served.encode([{"role": "user", "content": "where is my card"}], 8)
    whole = served.answer_batch([prompt], 8)[0]
    streamed = "".join(served.stream_text(prompt, 8))
    # the stream holds back a trailing half character (a random model writes those)
    assert streamed.strip() == whole.text.rstrip("\ufffd").strip()
    assert 1 <= whole.completion_tokens <= 8

    converted_at = (cache / gguf_file("Q8_0")).stat().st_mtime_ns
    again = ServedStudent.load(task=text_task, model_dir=student, cache_dir=cache, engine="llama")
    assert (cache / gguf_file("Q8_0")).stat().st_mtime_ns == converted_at  # not converted twice
    assert again.answer_batch([prompt], 8)[0].text == whole.text


def test_a_batch_runs_together_and_answers_as_each_prompt_alone(
    student: Path, tmp_path: Path
) -> None:
    """Concurrent requests share llama.cpp's passes (several sequences of one cache): more
    prompts than sequences, of different lengths, some stopped early by a stop rule — each gets
    the tokens it gets alone from an empty cache. The log-probabilities agree to llama.cpp's
    rounding: a pass of many tokens is multiplied with other kernels (here up to ~0.05)."""
    from worker.serving_llama import LlamaCppBackend

    backend = LlamaCppBackend(student, tmp_path / "cache", sequences=3)
    served = ServedStudent.load(
        task=TASK, model_dir=student, cache_dir=tmp_path / "cache", engine="transformers"
    )
    prompts = [
        served.encode([{"role": "user", "content": t}], 0)
        for t in [*STATIC_PREFIX_INPUTS, "card", STATIC_PREFIX_INPUTS[0] * 3]
    ]
    assert len(prompts) > 3 and len({len(p) for p in prompts}) > 2

    def stop(index: int, tokens: Sequence[int]) -> bool:
        return index % 2 == 1 and len(tokens) == 2  # odd prompts stop after two tokens

    alone = []
    for prompt in prompts:
        backend.reset()
        alone.append(backend.greedy([prompt], 6)[0])
    backend.reset()
    together = backend.greedy(prompts, 6, stop=stop)
    for i, (g, one) in enumerate(zip(together, alone, strict=True)):
        keep = 2 if i % 2 == 1 else len(one.tokens)
        assert g.tokens == one.tokens[:keep]
        assert g.logprobs[:keep] == pytest.approx(one.logprobs[:keep], abs=0.1)
    # Again, with every sequence's cache holding an earlier prompt: the same answers.
    again = backend.greedy(prompts[::-1], 6)
    assert [g.tokens for g in again] == [g.tokens for g in alone[::-1]]
    # Scoring in a batch equals scoring alone.
    wanted = sorted({alone[0].tokens[0], alone[1].tokens[0]})
    batched = backend.next_logprobs(prompts, wanted)
    for prompt, row in zip(prompts, batched, strict=True):
        backend.reset()
        assert row == pytest.approx(backend.next_logprobs([prompt], wanted)[0], abs=0.1)


def test_the_weights_format_is_chosen_and_a_wrong_one_named(
    student: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.serving_llama import LlamaCppBackend, gguf_type

    monkeypatch.setenv("DISTILLERY_SERVE_GGUF", "bf16")
    backend = LlamaCppBackend(student, tmp_path / "cache")
    assert backend.name == "llama.cpp-bf16"
    assert (tmp_path / "cache" / gguf_file("BF16")).is_file()
    assert not (tmp_path / "cache" / gguf_file("Q8_0")).exists()
    assert len(backend.greedy([[1, 2, 3]], 3)[0].logprobs) >= 1

    with pytest.raises(ValueError, match=r"must be one of Q8_0, .*not 'Q3'"):
        gguf_type("q3")


def test_forced_tokens_join_the_next_pass_instead_of_their_own(
    student: Path, tmp_path: Path
) -> None:
    """A force rule's tokens (the label's only way on) are appended after the chosen token,
    without a choice and without a pass of their own: the next token is chosen after them, as
    greedy decoding of the prompt with them would choose it; the prompt beside it in the batch
    decodes as it does without the rule."""
    from worker.serving_llama import LlamaCppBackend

    backend = LlamaCppBackend(student, tmp_path / "cache", sequences=2)
    served = ServedStudent.load(
        task=TASK, model_dir=student, cache_dir=tmp_path / "cache", engine="transformers"
    )
    prompts = [served.encode([{"role": "user", "content": t}], 0) for t in INPUTS[:2]]
    backend.reset()
    free = backend.greedy(prompts, 4)
    first = free[0].tokens[0]
    forced = [t for t in (7, 11, 13) if t not in backend.eos_token_ids][:2]

    def force(index: int, tokens: Sequence[int]) -> list[int]:
        return forced if index == 0 and len(tokens) == 1 else []

    backend.reset()
    got = backend.greedy(prompts, 4, force=force)
    assert got[0].tokens[:3] == [first, *forced]
    assert got[0].logprobs[0] == pytest.approx(free[0].logprobs[0], abs=0.1)
    assert all(lp != lp for lp in got[0].logprobs[1:3])  # forced: nan, no choice was made
    assert got[1].tokens == free[1].tokens
    backend.reset()
    after = backend.greedy([[*prompts[0], first, *forced]], 1)[0]
    assert got[0].tokens[3] == after.tokens[0]
    # Passes, alone: four chosen tokens take the prompt's pass and one for each after the
    # first; with two of them forced, the prompt's pass and one.
    assert len(free[0].tokens) == 4
    for rule, passes in ((None, 4), (force, 2)):
        backend.reset()
        before = backend.context.passes
        backend.greedy(prompts[:1], 4, force=rule)
        assert backend.context.passes - before == passes
