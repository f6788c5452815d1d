"""Parsing a teacher's new inputs and dropping duplicates (worker.synthetic_inputs)."""

from __future__ import annotations

import pytest

from worker.synthetic_inputs import (
    GenerationParseError,
    build_generation_messages,
    deduplicate,
    normalised_text,
    parse_generated_inputs,
)
from worker.taskspec import TaskSpec

SPEC = TaskSpec(
    instruction_template="Extract from {{ vendor }}:\n{{ receipt }}",
    output_kind="text",
    input_fields=("receipt", "vendor"),
)
FIELDS = list(SPEC.input_fields)


def test_the_prompt_shows_the_seeds_the_count_topic_and_label() -> None:
    messages = build_generation_messages(
        SPEC,
        seeds=[{"receipt": "2 coffees 5.00", "vendor": "Cafe"}],
        count=7,
        topic="groceries",
        label="refund",
        batch_number=3,
    )
    text = messages[-1]["content"]
    assert "fields: receipt, vendor." in text and "Extract from {{ vendor }}" in text
    assert '{"receipt": "2 coffees 5.00", "vendor": "Cafe"}' in text
    assert "Write 7 new inputs in the same style" in text and "(batch 3:" in text
    assert "Topic: groceries." in text and "the label 'refund'" in text


def test_answers_parse_to_rows_and_bad_items_are_named() -> None:
    fenced = '```json\n{"inputs": [{"receipt": " milk 1.20 ", "vendor": "Shop", "x": 1}]}\n```'
    assert parse_generated_inputs(fenced, FIELDS).rows == [
        {"receipt": "milk 1.20", "vendor": "Shop"}
    ]
    bare = (
        '[{"receipt": "a", "vendor": "b"}, {"receipt": "c"}, "no", {"receipt": 3, "vendor": "d"}]'
    )
    parsed = parse_generated_inputs(bare, FIELDS)
    assert parsed.rows == [{"receipt": "a", "vendor": "b"}]
    assert parsed.rejected == [
        "item 2: no text for field vendor",
        "item 3: not an object",
        "item 4: no text for field receipt",
    ]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("Sure! Here you go", "the answer is not JSON: 'Sure! Here you go'"),
        ("", "the answer is not JSON: '(empty)'"),
        ('{"rows": []}', 'the answer has no "inputs" list'),
        ('{"inputs": []}', 'the answer\'s "inputs" list is empty'),
    ],
)
def test_junk_answers_say_what_is_wrong(raw: str, message: str) -> None:
    with pytest.raises(GenerationParseError) as caught:
        parse_generated_inputs(raw, FIELDS)
    assert caught.value.message == message


def test_exact_and_near_duplicates_of_existing_inputs_and_of_each_other_are_dropped() -> None:
    existing = [
        normalised_text(
            {"receipt": "Two coffees and a croissant 7.40", "vendor": "Cafe Nero"}, FIELDS
        )
    ]
    candidates = [
        {
            "receipt": "two coffees  and a croissant 7.40",
            "vendor": "CAFE NERO",
        },  # exact (normalised)
        {"receipt": "Two coffees and a croissant 7.40 total", "vendor": "Cafe Nero"},  # near
        {"receipt": "Fuel 45 litres diesel 71.10", "vendor": "Shell Garage"},
        {
            "receipt": "Fuel 45 litres diesel 71.10 paid",
            "vendor": "Shell Garage",
        },  # near the one above
        {"receipt": "Hotel night double room 120.00", "vendor": "Ibis"},
    ]
    result = deduplicate(candidates, existing, FIELDS)
    assert [row["vendor"] for row in result.kept] == ["Shell Garage", "Ibis"]
    assert (result.exact_duplicates, result.near_duplicates) == (1, 2)
