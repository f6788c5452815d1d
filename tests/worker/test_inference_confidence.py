"""``classify`` gives each answer's log P(answer, then end of turn | prompt): on a tiny random
model it equals the plain computation (one forward pass per token, log-softmax of the chosen
token, then of the end token), whichever path answered the row."""

from __future__ import annotations

import dataclasses
import math

import pytest

from tests.worker.test_inference import LABELS, prompts
from worker.inference import EvalModel, load_model


@pytest.fixture(scope="module")
def model(tiny_model_dir):  # type: ignore[no-untyped-def]
    return load_model(tiny_model_dir)


def reference_logprob(model: EvalModel, messages, answer: list[int]) -> float:  # type: ignore[no-untyped-def]
    """Token by token, without a cache: sum of log_softmax of each answer token, then of the end
    token (the likeliest end-of-turn id: the one greedy decoding would stop with)."""
    import torch

    ids = model.encode(messages)
    total = 0.0
    with torch.inference_mode():
        for token in [*answer, None]:
            logits = model.model(input_ids=torch.tensor([ids])).logits[0, -1]
            logp = torch.log_softmax(logits.float(), dim=-1)
            if token is None:
                total += max(float(logp[e]) for e in model.eos_token_ids)
            else:
                total += float(logp[token])
                ids = [*ids, token]
    return total


def assert_matches_reference(model: EvalModel, ps, result) -> None:  # type: ignore[no-untyped-def]
    assert len(result.logprobs) == len(ps)
    for messages, ids, got in zip(ps, result.token_ids, result.logprobs, strict=True):
        assert math.isfinite(got) and got < 0
        assert got == pytest.approx(reference_logprob(model, messages, ids), abs=1e-4)


def test_constrained_answers_carry_their_log_probability(model):  # type: ignore[no-untyped-def]
    ps = prompts(10)
    result = model.classify(ps, LABELS, batch_size=4)
    assert result.reruns == 0  # every row read off the trie walk
    assert_matches_reference(model, ps, result)
    # exp() of it is a probability the cascade compares with a threshold
    assert all(0 < math.exp(v) <= 1 for v in result.logprobs)


def test_unconstrained_answers_carry_it_too_generated_rows_included(model):  # type: ignore[no-untyped-def]
    ps = prompts(8)
    result = model.classify(ps, LABELS, constrained=False, max_new_tokens=3, batch_size=3)
    assert result.fallbacks > 0  # the untrained model answers off the label set...
    # ...and some answers used the whole budget: their end token was never generated
    assert any(len(ids) == 3 for ids in result.token_ids)
    assert_matches_reference(model, ps, result)


def test_unconstrained_rows_proved_from_the_trie_carry_it(model):  # type: ignore[no-untyped-def]
    ps = prompts(12)
    free = model.generate_sequential(ps, max_new_tokens=3)
    own = []
    for text, ids in zip(free.outputs, free.token_ids, strict=True):
        encoded = model.tokenizer(text, add_special_tokens=False)["input_ids"]
        if text and encoded == ids and text not in own:
            own.append(text)
    labels = tuple(own) + tuple(label for label in LABELS[:4] if label not in own)
    result = model.classify(ps, labels, constrained=False, max_new_tokens=3, batch_size=5)
    assert any(result.free_greedy_verified)
    assert_matches_reference(model, ps, result)


def test_rows_settled_one_at_a_time_carry_it(model):  # type: ignore[no-untyped-def]
    # A tolerance no margin clears: every row is a near-tie, settled by a one-at-a-time rerun.
    anxious = dataclasses.replace(model, tie_tolerance=1e9, _label_tries={})
    ps = prompts(4)
    constrained = anxious.classify(ps, LABELS, batch_size=4)
    assert constrained.reruns == len(ps)
    assert_matches_reference(model, ps, constrained)
    free = anxious.classify(ps, LABELS, constrained=False, max_new_tokens=3, batch_size=4)
    assert free.fallbacks == len(ps) and free.reruns == len(ps)
    assert_matches_reference(model, ps, free)
