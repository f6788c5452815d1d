"""Prices, costs and estimates: exact Decimal arithmetic, prefix matching, offline token counts."""

from __future__ import annotations

from decimal import Decimal

import pytest

from worker import pricing
from worker.pricing import ModelPrice, UnknownModelPriceError
from worker.taskspec import TaskSpec, build_messages
from worker.teachers import TeacherRequest


def test_cost_is_tokens_times_price_per_million():
    assert pricing.cost("gpt-4o", 1_000_000, 0) == Decimal("2.50")
    assert pricing.cost("gpt-4o", 0, 1_000_000) == Decimal("10.00")
    assert pricing.cost("gpt-4o-mini", 2000, 500) == Decimal("0.0006")  # 2000*0.15e-6 + 500*0.6e-6
    assert pricing.cost("claude-sonnet-4-5", 10_000, 1_000) == Decimal("0.045")


def test_batch_discount_halves_both_sides():
    assert pricing.cost("gpt-5", 1_000_000, 1_000_000, batch=True) == Decimal("5.625")
    assert pricing.cost("claude-opus-4-1", 1_000_000, 1_000_000, batch=True) == Decimal("45")


@pytest.mark.parametrize(
    ("model", "input_price"),
    [
        ("gpt-4o-2024-08-06", "2.50"),
        ("gpt-4o-mini-2024-07-18", "0.15"),
        ("gpt-4.1-nano-2025-04-14", "0.10"),
        ("o3-2025-04-16", "2.00"),
        ("o3-pro", "20.00"),  # a pricier sibling must not be priced as o3
        ("o3-mini", "1.10"),
        ("claude-opus-4-20250514", "15.00"),
        ("claude-opus-4-1-20250805", "15.00"),
        ("claude-opus-4-5-20251101", "5.00"),
        ("claude-sonnet-4-5-20250929", "3.00"),
        ("claude-haiku-4-5-20251001", "1.00"),
        ("claude-3-5-haiku-20241022", "0.80"),
        ("openai/gpt-4.1", "2.00"),  # router-style prefixes are ignored
    ],
)
def test_model_ids_find_their_row(model, input_price):
    price = pricing.price_for(model)
    assert price is not None and price.input_per_1m == Decimal(input_price)


def test_unknown_models_have_no_price_and_cost_refuses_them():
    assert pricing.price_for("llama-3.1-70b") is None
    assert pricing.price_for("gpt-4oo") is None  # not a dash-prefix of a known id
    with pytest.raises(UnknownModelPriceError, match=r"no price for model 'llama-3\.1-70b'"):
        pricing.cost("llama-3.1-70b", 1, 1)


def test_an_owner_table_overrides_the_defaults():
    table = {"llama-3.1-70b": ModelPrice(Decimal("0.88"), Decimal("0.88"), Decimal("0"))}
    assert pricing.cost("llama-3.1-70b", 1_000_000, 0, table=table) == Decimal("0.88")
    assert pricing.cost("llama-3.1-70b", 1_000_000, 0, batch=True, table=table) == Decimal("0.88")
    rows = pricing.default_price_rows()
    assert {"model": "gpt-4o", "provider": "openai"}.items() <= rows[0].items()


def test_openai_models_are_counted_exactly_with_tiktoken_offline():
    counted = pricing.count_text_tokens("hello world, this is a test", "gpt-4o")
    assert counted.method == "tiktoken o200k_base" and counted.exact
    assert counted.tokens == 7
    old = pricing.count_text_tokens("hello world", "gpt-4")
    assert old.method == "tiktoken cl100k_base" and old.tokens == 2
    # A long, unusual string still counts (no unknown tokens, no network).
    assert pricing.count_text_tokens("Ünïcödé 🚀 " * 50, "gpt-4.1-mini").tokens > 50


def test_other_models_are_counted_approximately_and_say_so():
    counted = pricing.count_text_tokens("hello world", "claude-haiku-4-5")
    assert counted.method == "approx: tiktoken o200k_base" and not counted.exact


def test_chat_messages_add_the_per_message_overhead():
    messages = [{"role": "system", "content": "hello"}, {"role": "user", "content": "world"}]
    counted = pricing.count_message_tokens(messages, "gpt-4o")
    # 3 to prime the reply, then per message: 3 + role (1) + content (1)
    assert counted.tokens == 3 + 2 * (3 + 1 + 1)


def test_estimate_counts_calls_tokens_and_dollars():
    spec = TaskSpec("Intent: {{ text }}", "label", ("text",), label_set=("a_b", "c_d"))
    requests = [
        TeacherRequest(
            custom_id=f"r{i}",
            messages=build_messages(spec, {"text": f"message number {i}"}),
            model="gpt-4o-mini",
        )
        for i in range(10)
    ]
    estimate = pricing.estimate(requests, "gpt-4o-mini", expected_output_tokens=5)
    one = pricing.count_message_tokens(requests[0].messages, "gpt-4o-mini").tokens
    assert estimate.calls == 10
    assert estimate.prompt_tokens == 10 * one
    assert estimate.expected_output_tokens == 50
    assert estimate.usd == pricing.cost("gpt-4o-mini", 10 * one, 50)
    assert estimate.token_method == "tiktoken o200k_base"
    batch = pricing.estimate(requests, "gpt-4o-mini", expected_output_tokens=5, batch=True)
    assert batch.usd == estimate.usd / 2
    assert estimate.to_json()["usd"] == str(estimate.usd)


def test_estimate_for_an_unpriced_model_has_no_dollars():
    estimate = pricing.estimate([[{"role": "user", "content": "hi"}]], "my-model", 10)
    assert estimate.usd is None and estimate.calls == 1
    assert estimate.token_method.startswith("approx")
