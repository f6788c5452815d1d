"""The teacher runner against the loopback server: caching, metering, budget, retries, stopping.

Every assertion about "how many calls" reads the server's request log, so it counts what
actually went over the wire."""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal

import pytest

from tests.fakes.provider_server import FakeAnswer, FakeProviderServer
from worker.pricing import ModelPrice, count_message_tokens, price_for
from worker.taskspec import TaskSpec, build_messages, parse_output
from worker.teacher_cache import InMemoryTeacherCache, cache_key
from worker.teacher_runner import RetryPolicy, run_sync
from worker.teachers import ProviderConfig, TeacherRequest, make_provider


@pytest.fixture
def fake_provider() -> Iterator[FakeProviderServer]:
    with FakeProviderServer() as server:
        yield server


LABELS = ("card_arrival", "exchange_rate", "lost_or_stolen_card")
SPEC = TaskSpec(
    instruction_template="Which intent? {{ text }}",
    output_kind="label",
    input_fields=("text",),
    label_set=LABELS,
)
TEXTS = [
    "Where is my new card?",
    "What rate do you use for euros?",
    "Somebody stole my wallet",
    "The card still has not arrived",
    "Is the exchange rate fixed at weekends?",
    "I cannot find my card anywhere",
]
FAST_RETRY = RetryPolicy(max_attempts=4, base_delay_s=0.01, max_delay_s=0.05)


def keyword_responder(request) -> str:  # type: ignore[no-untyped-def]
    text = request.last_user_text.split("\n\n")[0].lower()  # the question, not the label list
    if "rate" in text:
        return "exchange_rate"
    if "stole" in text or "find" in text:
        return "lost_or_stolen_card"
    return "card_arrival"


def openai_config(server: FakeProviderServer, **overrides: object) -> ProviderConfig:
    values: dict[str, object] = {
        "kind": "openai",
        "credential_name": "prod-openai",
        "api_key": "sk-test",
        "base_url": server.openai_base_url,
        "allow_private_network": True,
    }
    values.update(overrides)
    return ProviderConfig(**values)  # type: ignore[arg-type]


def make_requests(texts=TEXTS, samples=1, **overrides) -> list[TeacherRequest]:  # type: ignore[no-untyped-def]
    requests = []
    for i, text in enumerate(texts):
        for sample in range(samples):
            values: dict[str, object] = {
                "custom_id": f"in{i}-{sample}",
                "messages": build_messages(SPEC, {"text": text}),
                "model": "gpt-4o-mini",
                "max_tokens": 16,
                "sample_index": sample,
                "output_kind": "label",
                "label_set": LABELS,
            }
            values.update(overrides)
            requests.append(TeacherRequest(**values))  # type: ignore[arg-type]
    return requests


def run(config: ProviderConfig, requests, **kwargs):  # type: ignore[no-untyped-def]
    kwargs.setdefault("retry", FAST_RETRY)
    return run_sync(requests, lambda: make_provider(config), **kwargs)


class Recorder:
    """The callbacks a Django service would pass, recording what they were given."""

    def __init__(self, server: FakeProviderServer | None = None) -> None:
        self.server = server
        self.sent: list[tuple[str, str, int]] = []  # (custom_id, key, server count at the time)
        self.results: dict[str, tuple[object, Decimal]] = {}

    def on_sent(self, request: TeacherRequest, key: str) -> None:
        count = self.server.count("openai.chat") if self.server else 0
        self.sent.append((request.custom_id, key, count))

    def on_result(self, request, key, response, cost) -> None:  # type: ignore[no-untyped-def]
        self.results[request.custom_id] = (response, cost)


def test_a_run_labels_every_input_and_meters_it(fake_provider):
    fake_provider.responder = keyword_responder
    requests = make_requests()
    recorder = Recorder()
    summary = run(
        openai_config(fake_provider),
        requests,
        concurrency=3,
        on_sent=recorder.on_sent,
        on_result=recorder.on_result,
    )
    assert summary.completed and summary.stopped_reason is None
    assert (summary.total, summary.calls, summary.succeeded, summary.failed) == (6, 6, 6, 0)
    assert fake_provider.count("openai.chat") == 6
    labels = {
        cid: parse_output(SPEC, response.raw_text).value
        for cid, (response, _) in recorder.results.items()
    }
    assert labels == {
        "in0-0": "card_arrival",
        "in1-0": "exchange_rate",
        "in2-0": "lost_or_stolen_card",
        "in3-0": "card_arrival",
        "in4-0": "exchange_rate",
        "in5-0": "lost_or_stolen_card",
    }
    assert fake_provider.max_concurrent <= 3


def test_costs_equal_tokens_times_prices(fake_provider):
    fake_provider.responder = lambda req: FakeAnswer(
        "card_arrival", input_tokens=1200, output_tokens=3
    )
    recorder = Recorder()
    summary = run(
        openai_config(fake_provider),
        make_requests(),
        on_result=recorder.on_result,
    )
    price = price_for("gpt-4o-mini")
    assert price is not None
    per_call = (Decimal(1200) * price.input_per_1m + Decimal(3) * price.output_per_1m) / Decimal(
        1_000_000
    )
    assert per_call == Decimal("0.0001818")  # $0.15 and $0.60 per 1M
    assert all(cost == per_call for _, cost in recorder.results.values())
    assert summary.cost_usd == per_call * 6
    assert (summary.input_tokens, summary.output_tokens) == (7200, 18)


def test_batch_pricing_halves_the_cost(fake_provider):
    fake_provider.responder = lambda req: FakeAnswer(
        "card_arrival", input_tokens=1000, output_tokens=10
    )
    price = ModelPrice(Decimal("2"), Decimal("8"), Decimal("0.5"))
    full = run(openai_config(fake_provider), make_requests()[:1], price=price)
    half = run(
        openai_config(fake_provider),
        make_requests()[:1],
        price=price,
        batch_pricing=True,
    )
    assert full.cost_usd == Decimal("0.00208")
    assert half.cost_usd == full.cost_usd / 2


def test_a_second_identical_run_calls_nothing(fake_provider):
    fake_provider.responder = keyword_responder
    cache = InMemoryTeacherCache()
    config = openai_config(fake_provider)
    first = run(config, make_requests(), cache_lookup=cache.lookup, cache_store=cache.store)
    assert first.calls == 6 and len(cache) == 6
    recorder = Recorder()
    second = run(
        config,
        make_requests(),
        cache_lookup=cache.lookup,
        cache_store=cache.store,
        on_result=recorder.on_result,
    )
    assert (second.calls, second.cache_hits, second.cost_usd) == (0, 6, Decimal(0))
    assert fake_provider.count("openai.chat") == 6  # nothing more went over the wire
    for custom_id, (response, cost) in recorder.results.items():
        assert response.from_cache and cost == 0
        assert response.custom_id == custom_id
    first_answer = recorder.results["in1-0"][0]
    assert parse_output(SPEC, first_answer.raw_text).value == "exchange_rate"


def test_a_resumed_run_calls_only_what_is_missing(fake_provider):
    fake_provider.responder = keyword_responder
    config = openai_config(fake_provider)
    cache = InMemoryTeacherCache()
    requests = make_requests()
    run(config, requests[:4], cache_lookup=cache.lookup, cache_store=cache.store)
    assert fake_provider.count("openai.chat") == 4
    resumed = run(config, requests, cache_lookup=cache.lookup, cache_store=cache.store)
    assert (resumed.calls, resumed.cache_hits) == (2, 4)
    assert fake_provider.count("openai.chat") == 6


def test_changing_a_setting_misses_the_cache(fake_provider):
    config = openai_config(fake_provider)
    cache = InMemoryTeacherCache()
    run(config, make_requests(), cache_lookup=cache.lookup, cache_store=cache.store)
    other = run(
        config,
        make_requests(max_tokens=32),
        cache_lookup=cache.lookup,
        cache_store=cache.store,
    )
    assert other.calls == 6


def test_samples_are_distinct_calls_and_duplicates_in_a_run_are_called_once(fake_provider):
    config = openai_config(fake_provider)
    samples = run(config, make_requests(TEXTS[:2], samples=3, temperature=0.8))
    assert samples.calls == 6  # three samples of two inputs: six different keys
    fake_provider.reset()
    duplicates = make_requests([TEXTS[0]] * 4)
    assert len({cache_key(config, r) for r in duplicates}) == 1
    summary = run(config, duplicates, concurrency=4)
    assert fake_provider.count("openai.chat") == 1
    assert (summary.calls, summary.cache_hits, summary.succeeded) == (1, 3, 4)


def test_on_sent_is_called_before_the_request_leaves(fake_provider):
    config = openai_config(fake_provider)
    recorder = Recorder(fake_provider)
    requests = make_requests()
    run(config, requests, concurrency=1, on_sent=recorder.on_sent)
    assert [cid for cid, _, _ in recorder.sent] == [r.custom_id for r in requests]
    # With one call at a time, the server had seen exactly the earlier calls.
    assert [count for _, _, count in recorder.sent] == list(range(6))
    assert [key for _, key, _ in recorder.sent] == [cache_key(config, r) for r in requests]


def test_server_errors_are_retried_with_backoff_until_success(fake_provider):
    fake_provider.fail_next(500, 2)
    recorder = Recorder()
    summary = run(
        openai_config(fake_provider),
        make_requests()[:1],
        on_result=recorder.on_result,
    )
    statuses = [r.status for r in fake_provider.requests("openai.chat")]
    assert statuses == [500, 500, 200]
    assert (summary.calls, summary.attempts, summary.retries, summary.succeeded) == (1, 3, 2, 1)
    assert recorder.results["in0-0"][0].attempts == 3


def test_retries_stop_at_the_attempt_limit(fake_provider):
    fake_provider.fail_next(503, 10)
    summary = run(
        openai_config(fake_provider),
        make_requests()[:1],
        retry=RetryPolicy(max_attempts=3, base_delay_s=0.01),
    )
    assert fake_provider.count("openai.chat") == 3
    assert summary.failed == 1
    assert "after 3 attempts" in summary.failures[0][1]


def test_malformed_bodies_are_retried(fake_provider):
    fake_provider.malformed_next(1)
    summary = run(openai_config(fake_provider), make_requests()[:1])
    assert fake_provider.count("openai.chat") == 2
    assert summary.succeeded == 1


@pytest.mark.parametrize("status", [400, 422])
def test_bad_requests_are_not_retried_and_the_run_goes_on(fake_provider, status):
    fake_provider.fail_next(status, 1, message="This model's maximum context length is 128000")
    summary = run(openai_config(fake_provider), make_requests()[:3], concurrency=1)
    assert fake_provider.count("openai.chat") == 3  # one failure, no retry, the rest answered
    assert (summary.failed, summary.succeeded) == (1, 2)
    assert "maximum context length" in summary.failures[0][1]
    assert summary.stopped_reason is None


def test_invalid_key_stops_the_run_and_says_which_credential(fake_provider):
    fake_provider.api_keys = {"sk-the-real-one"}
    recorder = Recorder()
    summary = run(
        openai_config(fake_provider),
        make_requests(),
        concurrency=1,
        on_result=recorder.on_result,
    )
    assert fake_provider.count("openai.chat") == 1  # not retried, nothing else sent
    assert summary.stopped_reason is not None
    assert "invalid API key for credential 'prod-openai'" in summary.stopped_reason
    assert recorder.results["in0-0"][0].error.startswith("invalid API key")


def test_unknown_model_stops_the_run(fake_provider):
    fake_provider.fail_next(404, 1, message="The model `gpt-9` does not exist")
    summary = run(
        openai_config(fake_provider),
        make_requests(),
        concurrency=1,
        price=ModelPrice(Decimal(1), Decimal(1)),
    )
    assert fake_provider.count("openai.chat") == 1
    assert "not found" in summary.stopped_reason


def test_rate_limit_waits_for_retry_after(fake_provider):
    fake_provider.fail_next(429, 1, retry_after=1)
    summary = run(openai_config(fake_provider), make_requests()[:1])
    first, second = fake_provider.requests("openai.chat")
    assert (first.status, second.status) == (429, 200)
    assert second.at - first.at >= 1.0
    assert summary.retries == 1 and summary.succeeded == 1


def test_rate_limit_retry_after_ms_pauses_every_worker(fake_provider):
    fake_provider.latency_s = 0.05
    fake_provider.fail_next(429, 1, retry_after_ms=600)
    run(openai_config(fake_provider), make_requests(), concurrency=3)
    log = fake_provider.requests("openai.chat")
    limited = next(r for r in log if r.status == 429)
    answered_at_429 = limited.at + fake_provider.latency_s
    # Nothing was sent between the 429 answer and the end of the pause it asked for.
    later = [r.at for r in log if r.at > answered_at_429 + 0.02]
    assert later and min(later) >= answered_at_429 + 0.55
    assert sum(1 for r in log if r.status == 200) == 6


def test_budget_cap_stops_before_exceeding(fake_provider):
    # $1 per 1,000 tokens in and out: each call's worst case is about prompt + 16 tokens.
    price = ModelPrice(Decimal(1000), Decimal(1000))
    requests = make_requests(TEXTS * 5)  # 30 requests
    prompt = count_message_tokens(requests[0].messages, "gpt-4o-mini").tokens
    fake_provider.responder = lambda req: FakeAnswer(
        "card_arrival", input_tokens=prompt, output_tokens=10
    )
    per_call = Decimal(prompt + 10) / 1000
    budget = per_call * Decimal("7.5")
    recorder = Recorder()
    summary = run(
        openai_config(fake_provider),
        requests,
        concurrency=4,
        budget_usd=budget,
        price=price,
        on_result=recorder.on_result,
    )
    assert summary.stopped_reason is not None and summary.stopped_reason.startswith("budget")
    assert summary.cost_usd <= budget
    assert fake_provider.count("openai.chat") == summary.calls < 30
    # It used the room it had: another call would not have fitted in the worst case.
    assert summary.cost_usd + Decimal(prompt + 16) / 1000 > budget
    assert sum(cost for _, cost in recorder.results.values()) == summary.cost_usd


def test_should_stop_pauses_the_run(fake_provider):
    fake_provider.latency_s = 0.02
    recorder = Recorder()

    def should_stop() -> str | None:
        return "paused" if len(recorder.results) >= 2 else None

    summary = run(
        openai_config(fake_provider),
        make_requests(TEXTS * 3),
        concurrency=1,
        should_stop=should_stop,
        stop_check_interval_s=0,
        on_result=recorder.on_result,
    )
    assert summary.stopped_reason == "paused"
    assert fake_provider.count("openai.chat") == 2 == len(recorder.results)


def test_async_callbacks_are_awaited(fake_provider):
    seen: list[str] = []

    async def on_result(request, key, response, cost) -> None:  # type: ignore[no-untyped-def]
        seen.append(request.custom_id)

    async def lookup(key: str) -> None:
        return None

    summary = run(
        openai_config(fake_provider), make_requests(), on_result=on_result, cache_lookup=lookup
    )
    assert sorted(seen) == sorted(r.custom_id for r in make_requests())
    assert summary.succeeded == 6


def test_unpriced_model_is_refused_before_any_call(fake_provider):
    from worker.teachers import TeacherConfigError

    with pytest.raises(TeacherConfigError, match="no price for model 'my-finetune'"):
        run(openai_config(fake_provider), make_requests(model="my-finetune"))
    assert fake_provider.count("openai.chat") == 0


def test_anthropic_runs_through_the_same_runner(fake_provider):
    fake_provider.responder = lambda req: FakeAnswer(
        "exchange_rate", input_tokens=100, output_tokens=4
    )
    config = ProviderConfig(
        kind="anthropic",
        credential_name="team-claude",
        api_key="sk-ant",
        base_url=fake_provider.anthropic_base_url,
        allow_private_network=True,
    )
    summary = run(config, make_requests(model="claude-haiku-4-5"))
    assert summary.succeeded == 6 and fake_provider.count("anthropic.messages") == 6
    # Haiku 4.5: $1 in, $5 out per 1M tokens
    assert summary.cost_usd == 6 * (Decimal(100) * 1 + Decimal(4) * 5) / 1_000_000


def test_timeouts_are_retried(fake_provider):
    fake_provider.latency_s = 0.6
    config = openai_config(fake_provider, request_timeout_s=0.3)
    started = time.monotonic()
    summary = run(
        config,
        make_requests()[:1],
        retry=RetryPolicy(max_attempts=2, base_delay_s=0.01),
        price=ModelPrice(Decimal(1), Decimal(1)),
        budget_usd=Decimal(10),
    )
    assert fake_provider.count("openai.chat") == 2
    assert summary.failed == 1 and "timed out" in summary.failures[0][1]
    # Both lost attempts may have been billed: their worst case counts against the budget.
    assert summary.possibly_billed_usd > 0
    assert time.monotonic() - started < 5
