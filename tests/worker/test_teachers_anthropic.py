"""Anthropic Messages through the real SDK against the loopback server."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.fakes.provider_server import FakeAnswer, FakeProviderServer
from worker.taskspec import TaskSpec, build_messages, parse_output
from worker.teachers import (
    ProviderConfig,
    TeacherAuthError,
    TeacherRequest,
    TeacherServerError,
    make_provider,
)


@pytest.fixture
def fake_provider() -> Iterator[FakeProviderServer]:
    with FakeProviderServer() as server:
        yield server


LABEL_SPEC = TaskSpec(
    instruction_template="Classify: {{ text }}",
    output_kind="label",
    input_fields=("text",),
    label_set=("card_arrival", "lost_or_stolen_card", "exchange_rate"),
    system_prompt="You label banking support tickets.",
)
RECEIPT_SCHEMA = {
    "type": "object",
    "properties": {"total": {"type": "number"}, "date": {"type": "string"}},
    "required": ["total", "date"],
}
JSON_SPEC = TaskSpec("Extract: {{ text }}", "json", ("text",), json_schema=RECEIPT_SCHEMA)


def config_for(server: FakeProviderServer, **overrides: object) -> ProviderConfig:
    values: dict[str, object] = {
        "kind": "anthropic",
        "credential_name": "team-claude",
        "api_key": "sk-ant-test",
        "base_url": server.anthropic_base_url,
        "allow_private_network": True,
    }
    values.update(overrides)
    return ProviderConfig(**values)  # type: ignore[arg-type]


def request_for(spec: TaskSpec, text: str, **overrides: object) -> TeacherRequest:
    values: dict[str, object] = {
        "custom_id": "in-7-0",
        "messages": build_messages(spec, {"text": text}),
        "model": "claude-haiku-4-5",
        "max_tokens": 100,
        "output_kind": spec.output_kind,
        "json_schema": spec.json_schema,
        "label_set": spec.label_set,
    }
    values.update(overrides)
    return TeacherRequest(**values)  # type: ignore[arg-type]


def call(config: ProviderConfig, request: TeacherRequest):  # type: ignore[no-untyped-def]
    async def go():  # type: ignore[no-untyped-def]
        provider = make_provider(config)
        try:
            return await provider.generate(request)
        finally:
            await provider.aclose()

    return asyncio.run(go())


def test_label_answer_with_system_prompt_moved_to_system(fake_provider):
    fake_provider.responder = lambda req: FakeAnswer(
        "lost_or_stolen_card", input_tokens=31, output_tokens=6
    )
    response = call(config_for(fake_provider), request_for(LABEL_SPEC, "I lost my card"))
    assert parse_output(LABEL_SPEC, response.raw_text).value == "lost_or_stolen_card"
    assert (response.input_tokens, response.output_tokens) == (31, 6)
    assert response.finish_reason == "stop"
    assert response.provider_request_id.startswith("req_")
    logged = fake_provider.requests("anthropic.messages")[0]
    assert logged.body["system"] == "You label banking support tickets."
    assert [m["role"] for m in logged.body["messages"]] == ["user"]
    assert logged.body["max_tokens"] == 100
    assert logged.api_key == "sk-ant-test"


def test_json_task_goes_through_a_forced_tool_and_is_validated(fake_provider):
    fake_provider.responder = lambda req: '{"total": 9.9, "date": "2019-03-01"}'
    response = call(config_for(fake_provider), request_for(JSON_SPEC, "TOTAL 9.90 01/03/2019"))
    parsed = parse_output(JSON_SPEC, response.raw_text)
    assert parsed.ok and parsed.value == {"total": 9.9, "date": "2019-03-01"}
    body = fake_provider.requests("anthropic.messages")[0].body
    assert body["tools"][0]["input_schema"] == RECEIPT_SCHEMA
    assert body["tool_choice"] == {"type": "tool", "name": body["tools"][0]["name"]}


def test_json_answer_that_breaks_the_schema_is_reported_by_the_parser(fake_provider):
    fake_provider.responder = lambda req: '{"total": "nine"}'
    response = call(config_for(fake_provider), request_for(JSON_SPEC, "TOTAL ?"))
    parsed = parse_output(JSON_SPEC, response.raw_text)
    assert not parsed.ok
    assert "schema" in parsed.error


def test_array_schema_is_wrapped_for_the_tool_and_unwrapped(fake_provider):
    schema = {"type": "array", "items": {"type": "integer"}}
    spec = TaskSpec("Numbers in: {{ text }}", "json", ("text",), json_schema=schema)
    fake_provider.responder = lambda req: '{"value": [1, 2, 3]}'
    response = call(config_for(fake_provider), request_for(spec, "one two three"))
    assert parse_output(spec, response.raw_text).value == [1, 2, 3]


def test_max_tokens_stop_is_reported_as_length(fake_provider):
    fake_provider.responder = lambda req: "word " * 100
    spec = TaskSpec("Say: {{ text }}", "text", ("text",))
    response = call(config_for(fake_provider), request_for(spec, "a lot", max_tokens=3))
    assert response.finish_reason == "length"
    assert response.output_tokens == 3


def test_invalid_key_names_the_credential_and_is_not_retried(fake_provider):
    fake_provider.api_keys = {"sk-ant-other"}
    with pytest.raises(TeacherAuthError) as caught:
        call(config_for(fake_provider), request_for(LABEL_SPEC, "hi"))
    assert "invalid API key for credential 'team-claude'" in str(caught.value)
    assert fake_provider.count("anthropic.messages") == 1


def test_overloaded_529_is_retryable(fake_provider):
    fake_provider.fail_next(529)
    with pytest.raises(TeacherServerError) as caught:
        call(config_for(fake_provider), request_for(LABEL_SPEC, "hi"))
    assert caught.value.retryable and caught.value.status_code == 529
    assert fake_provider.count("anthropic.messages") == 1


@pytest.mark.parametrize(
    ("model", "sent"),
    [("claude-haiku-4-5", True), ("claude-3-5-haiku-latest", True), ("claude-opus-4-7", False)],
)
def test_temperature_is_sent_only_to_models_that_accept_it(fake_provider, model, sent):
    fake_provider.responder = lambda req: "exchange_rate"
    call(config_for(fake_provider), request_for(LABEL_SPEC, "rate?", model=model, temperature=0))
    body = fake_provider.requests("anthropic.messages")[0].body
    assert ("temperature" in body) is sent
    if sent:
        assert body["temperature"] == 0.0
