"""Inference on a tiny random model: the fast paths give exactly the sequential outputs."""

from __future__ import annotations

import math

import pytest

from tests.helpers.tiny_model import _LABELS, _QUESTIONS
from worker.inference import available_cores, latency_percentiles, load_model
from worker.taskspec import TaskSpec, build_messages

LABELS = tuple(_LABELS[:12])
SPEC = TaskSpec(
    "Classify the customer message into one intent.\nMessage: {{ text }}",
    "label",
    ("text",),
    label_set=LABELS,
)


def prompts(n: int = 12):
    """Messages of different lengths, so batches need padding."""
    out = []
    for i in range(n):
        question = _QUESTIONS[i % len(_QUESTIONS)]
        out.append(build_messages(SPEC, {"text": question + " please" * (i % 5)}))
    return out


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return load_model(tiny_model_dir)


def test_loads_on_cpu_with_every_core(model):
    assert model.device == "cpu" and model.dtype == "float32"
    assert model.hardware.cores == available_cores()
    assert model.hardware.threads == available_cores()
    assert model.hardware.name


def test_batched_generation_equals_sequential(model):
    ps = prompts(12)
    assert len({len(model.encode(p)) for p in ps}) > 3  # really different lengths
    seq = model.generate_sequential(ps, max_new_tokens=8)
    batched = model.generate_batched(ps, max_new_tokens=8, batch_size=5)
    assert batched.outputs == seq.outputs
    assert batched.token_ids == seq.token_ids
    assert len(seq.latencies) == 12 and all(t > 0 for t in seq.latencies)
    assert batched.latencies == []  # batches measure throughput, not latency
    assert batched.examples_per_second > 0


def test_classify_equals_generation_constrained_to_the_labels(model):
    ps = prompts(10)
    seq = model.generate_sequential(ps, max_new_tokens=1, constrain_to_labels=LABELS)
    fast = model.classify(ps, LABELS, batch_size=4)
    assert all(out in LABELS for out in seq.outputs)
    assert fast.outputs == seq.outputs
    assert fast.token_ids == seq.token_ids
    assert fast.fallbacks == 0


def test_classify_unconstrained_equals_free_generation(model):
    # An untrained model answers off the label set: those rows fall back to generation.
    ps = prompts(8)
    free = model.generate_sequential(ps, max_new_tokens=6)
    fast = model.classify(ps, LABELS, constrained=False, max_new_tokens=6, batch_size=3)
    assert fast.outputs == free.outputs
    assert fast.fallbacks == sum(1 for v in fast.free_greedy_verified if not v)


def test_classify_answers_from_the_trie_when_free_greedy_gives_a_label(model):
    # Use the model's own short greedy answers as the label set: free generation then lands
    # on a label, and classify must prove it from the trie instead of generating.
    ps = prompts(12)
    free = model.generate_sequential(ps, max_new_tokens=3)
    own = []
    for text, ids in zip(free.outputs, free.token_ids, strict=True):
        encoded = model.tokenizer(text, add_special_tokens=False)["input_ids"]
        if text and encoded == ids and text not in own:
            own.append(text)
    assert own, "the tiny model produced no answer that re-encodes to itself"
    labels = tuple(own) + tuple(label for label in LABELS[:4] if label not in own)
    fast = model.classify(ps, labels, constrained=False, max_new_tokens=3, batch_size=5)
    assert fast.outputs == free.outputs
    on_label = [i for i, out in enumerate(free.outputs) if out in own]
    assert fast.fallbacks < len(ps)
    assert any(fast.free_greedy_verified[i] for i in on_label)
    assert not any(fast.free_greedy_verified[i] for i in range(len(ps)) if i not in on_label)


def test_label_log_likelihoods_equal_a_full_forward_per_label(model):
    import torch

    ps = prompts(3)
    scores = model.label_log_likelihoods(ps, LABELS, batch_size=2)
    eos = model.eos_token_ids[0]
    for p, row in zip(ps, scores.log_likelihoods, strict=True):
        prompt_ids = model.encode(p)
        expected = []
        for label in LABELS:
            answer = model.tokenizer(label, add_special_tokens=False)["input_ids"] + [eos]
            x = torch.tensor([prompt_ids + answer])
            with torch.inference_mode():
                logp = torch.log_softmax(model.model(input_ids=x).logits[0].float(), dim=-1)
            expected.append(
                sum(float(logp[len(prompt_ids) - 1 + k, token]) for k, token in enumerate(answer))
            )
        assert row == pytest.approx(expected, abs=1e-4)
        assert all(v < 0 and math.isfinite(v) for v in row)
    for row, best in zip(scores.log_likelihoods, scores.best, strict=True):
        assert best == LABELS[row.index(max(row))]
        assert best in LABELS


def test_labels_must_be_distinct(model):
    with pytest.raises(ValueError, match="distinct"):
        model.classify(prompts(1), ("a", "a"))


def test_latency_percentiles():
    got = latency_percentiles([0.1, 0.2, 0.3, 0.4, 1.0])
    assert got["p50_ms"] == pytest.approx(300.0)
    assert got["p95_ms"] == pytest.approx(880.0)  # numpy linear interpolation: 400 + 0.8 * 600
    assert latency_percentiles([]) == {"p50_ms": 0.0, "p95_ms": 0.0}


@pytest.mark.cuda
def test_cuda_half_precision_batched_equals_sequential(tiny_model_dir):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    gpu = load_model(tiny_model_dir, device="cuda")
    assert gpu.dtype in ("bfloat16", "float16")
    ps = prompts(12)
    seq = gpu.generate_sequential(ps, max_new_tokens=8)
    assert gpu.generate_batched(ps, max_new_tokens=8, batch_size=5).outputs == seq.outputs
    constrained = gpu.generate_sequential(ps, max_new_tokens=1, constrain_to_labels=LABELS)
    assert gpu.classify(ps, LABELS, batch_size=4).outputs == constrained.outputs
