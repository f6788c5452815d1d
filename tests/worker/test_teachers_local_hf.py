"""A local Hugging Face teacher on the tiny random model: batched, left-padded, greedy."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import pytest

from worker.taskspec import TaskSpec, build_messages
from worker.teacher_cache import InMemoryTeacherCache
from worker.teacher_runner import run_sync
from worker.teachers import ProviderConfig, TeacherConfigError, TeacherRequest, make_provider
from worker.teachers.local_hf import LocalHFProvider

SPEC = TaskSpec(
    "Classify the customer message into one intent. Message: {{ text }}",
    "label",
    ("text",),
    label_set=("card_arrival", "exchange_rate"),
)
TEXTS = [
    "my card has not arrived yet",
    "Why was I charged a fee? The exchange rate is wrong and my top up failed again",
    "Where is my money?",
    "my pin is not working",
    "the transfer is pending",
    "How long does a transfer take?",
]


def config_for(model_dir: Path, batch_size: int = 4) -> ProviderConfig:
    return ProviderConfig(
        kind="local_hf",
        credential_name="gpu-box",
        local_model_path=str(model_dir),
        local_batch_size=batch_size,
        local_device="cpu",
    )


def requests_for(texts: list[str], max_tokens: int = 6) -> list[TeacherRequest]:
    return [
        TeacherRequest(
            custom_id=f"r{i}",
            messages=build_messages(SPEC, {"text": text}),
            model="tiny-llama",
            max_tokens=max_tokens,
            output_kind="label",
            label_set=SPEC.label_set,
        )
        for i, text in enumerate(texts)
    ]


def test_the_runner_drives_batched_local_generation(tiny_model_dir):
    provider = LocalHFProvider(config_for(tiny_model_dir, batch_size=4))
    cache = InMemoryTeacherCache()
    results = {}

    def on_result(request, key, response, cost):  # type: ignore[no-untyped-def]
        results[request.custom_id] = (response, cost)

    summary = run_sync(
        requests_for(TEXTS),
        provider,
        concurrency=6,
        on_result=on_result,
        cache_lookup=cache.lookup,
        cache_store=cache.store,
        budget_usd=Decimal("0.01"),  # a local model is free: the cap never bites
    )
    assert summary.succeeded == 6 and summary.stopped_reason is None
    assert summary.cost_usd == 0
    assert max(provider.batch_sizes) > 1  # concurrent requests were generated together
    assert sum(provider.batch_sizes) == 6
    assert all(size <= 4 for size in provider.batch_sizes)
    for response, cost in results.values():
        assert cost == 0
        assert response.input_tokens > 10
        assert 1 <= response.output_tokens <= 6
        assert response.finish_reason in ("stop", "length")
        if response.finish_reason == "length":
            assert response.output_tokens == 6
    # A second run is served from the cache: the model is not asked again.
    again = LocalHFProvider(config_for(tiny_model_dir))
    second = run_sync(requests_for(TEXTS), again, cache_lookup=cache.lookup)
    assert second.cache_hits == 6 and again.batch_sizes == []


def test_left_padding_gives_the_same_greedy_answer_alone_or_in_a_batch(tiny_model_dir):
    provider = LocalHFProvider(config_for(tiny_model_dir))
    short, long = requests_for([TEXTS[2], TEXTS[1]], max_tokens=8)
    alone = provider.generate_batch([short])[0]
    together = provider.generate_batch([short, long])[0]
    assert alone.raw_text == together.raw_text
    assert alone.output_tokens == together.output_tokens
    assert alone.input_tokens == together.input_tokens  # padding is not counted
    # Greedy decoding is deterministic.
    assert provider.generate_batch([short])[0].raw_text == alone.raw_text


def test_sampling_at_a_temperature_still_answers(tiny_model_dir):
    provider = LocalHFProvider(config_for(tiny_model_dir))
    request = requests_for(TEXTS[:1])[0]
    hot = TeacherRequest(**{**request.__dict__, "temperature": 1.0})
    response = asyncio.run(provider.generate(hot))
    assert response.output_tokens >= 1


def test_a_missing_model_path_is_a_clear_configuration_error(tmp_path):
    with pytest.raises(TeacherConfigError, match="no local model path"):
        make_provider(ProviderConfig(kind="local_hf", credential_name="gpu-box"))
    provider = make_provider(config_for(tmp_path / "nothing-here"))
    with pytest.raises(TeacherConfigError, match="cannot load model"):
        asyncio.run(provider.generate(requests_for(TEXTS[:1])[0]))


def test_a_local_teacher_gives_label_logprobs_and_a_distribution_over_the_labels(
    tiny_model_dir: Path,
) -> None:
    from worker.teachers.confidence import label_distribution
    from worker.teachers.local_hf import LOCAL_TOP_LOGPROBS

    provider = LocalHFProvider(config_for(tiny_model_dir))
    plain = provider.generate_batch(requests_for(TEXTS[:1], max_tokens=3))[0]
    answer = plain.raw_text.strip()
    assert answer and plain.label_confidence is None  # not asked: no logprobs

    def ask(labels: tuple[str, ...]) -> object:
        request = TeacherRequest(
            custom_id="r0",
            messages=build_messages(SPEC, {"text": TEXTS[0]}),
            model="tiny-llama",
            max_tokens=3,
            output_kind="label",
            label_set=labels,
            want_logprobs=True,
        )
        return provider.generate_batch([request])[0]

    # The tiny random model's greedy answer is made one of the labels, so it answers a label.
    first = ask((answer, "zz-not-a-prefix"))
    assert first.raw_text.strip() == answer  # type: ignore[attr-defined]
    positions = first.top_logprobs  # type: ignore[attr-defined]
    assert positions and len(positions[0]["top"]) == LOCAL_TOP_LOGPROBS
    assert 0 < first.label_confidence <= 1  # type: ignore[attr-defined]
    # A label the runner-up first token starts gets the teacher's mass on that token.
    # (One that is not a prefix of the answer, nor the answer of it.)
    runner_up = next(
        t["token"].strip()
        for t in positions[0]["top"]
        if t["token"].strip()
        and not answer.startswith(t["token"].strip())
        and not t["token"].strip().startswith(answer)
    )
    labels = (answer, runner_up)
    second = ask(labels)
    dist = label_distribution(second.top_logprobs, labels)  # type: ignore[attr-defined]
    assert dist is not None and sum(dist.values()) == pytest.approx(1.0)
    assert dist[runner_up] > 0
    # Alternatives that spell the answer another way ("o" + "r..." for "or...") count for it
    # too, so its share is at least its confidence (the chosen tokens' share).
    assert dist[answer] >= second.label_confidence - 1e-9  # type: ignore[attr-defined]
