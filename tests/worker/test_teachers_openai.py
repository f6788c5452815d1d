"""OpenAI Chat Completions (and OpenAI-compatible endpoints) through the real SDK, against the
loopback server: what is sent, what is parsed, how failures are reported."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator

import pytest

from tests.fakes.provider_server import FakeAnswer, FakeProviderServer
from worker.taskspec import TaskSpec, build_messages, parse_output
from worker.teachers import (
    ProviderConfig,
    TeacherAuthError,
    TeacherBadRequestError,
    TeacherConfigError,
    TeacherMalformedResponseError,
    TeacherRateLimitError,
    TeacherRequest,
    TeacherServerError,
    make_provider,
)


@pytest.fixture
def fake_provider() -> Iterator[FakeProviderServer]:
    with FakeProviderServer() as server:
        yield server


LABELS = ("positive", "negative", "neutral")
LABEL_SPEC = TaskSpec(
    instruction_template="Classify the sentiment: {{ text }}",
    output_kind="label",
    input_fields=("text",),
    label_set=LABELS,
)
JSON_SCHEMA = {
    "type": "object",
    "properties": {"total": {"type": "number"}, "vendor": {"type": "string"}},
    "required": ["total", "vendor"],
    "additionalProperties": False,
}
JSON_SPEC = TaskSpec(
    instruction_template="Extract the receipt: {{ text }}",
    output_kind="json",
    input_fields=("text",),
    json_schema=JSON_SCHEMA,
)
TEXT_SPEC = TaskSpec(
    instruction_template="Summarise: {{ text }}",
    output_kind="text",
    input_fields=("text",),
    system_prompt="You write one-sentence summaries.",
)


def config_for(server: FakeProviderServer, **overrides: object) -> ProviderConfig:
    values: dict[str, object] = {
        "kind": "openai",
        "credential_name": "prod-openai",
        "api_key": "sk-test-1234",
        "base_url": server.openai_base_url,
        "allow_private_network": True,  # the fake lives on 127.0.0.1
    }
    values.update(overrides)
    return ProviderConfig(**values)  # type: ignore[arg-type]


def request_for(spec: TaskSpec, text: str, **overrides: object) -> TeacherRequest:
    values: dict[str, object] = {
        "custom_id": "row-1-0",
        "messages": build_messages(spec, {"text": text}),
        "model": "gpt-4o-mini",
        "temperature": 0.0,
        "max_tokens": 64,
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


def test_label_answer_is_parsed_with_tokens_and_request_id(fake_provider):
    fake_provider.responder = lambda req: FakeAnswer(" negative", input_tokens=42, output_tokens=2)
    response = call(config_for(fake_provider), request_for(LABEL_SPEC, "The card never came"))
    assert parse_output(LABEL_SPEC, response.raw_text).value == "negative"
    assert (response.input_tokens, response.output_tokens) == (42, 2)
    assert response.finish_reason == "stop"
    assert response.provider_request_id.startswith("req_")
    assert response.error is None and response.latency_ms is not None
    body = fake_provider.requests("openai.chat")[0].body
    assert body["model"] == "gpt-4o-mini"
    assert body["temperature"] == 0.0
    assert body["max_completion_tokens"] == 64
    assert "logprobs" not in body  # not asked for
    assert body["messages"][-1]["content"].endswith("positive, negative, neutral")


def test_label_confidence_from_top_logprobs(fake_provider):
    # First token decides the label; "The" is not a label, so it is left out of the mass.
    alternatives = [{"positive": 0.6, "negative": 0.2, "neutral": 0.1, "The": 0.1}]
    fake_provider.responder = lambda req: FakeAnswer("positive", token_alternatives=alternatives)
    request = request_for(LABEL_SPEC, "Great service", want_logprobs=True)
    response = call(config_for(fake_provider), request)
    assert response.label_confidence == pytest.approx(0.6 / 0.9)
    assert response.top_logprobs is not None
    first = response.top_logprobs[0]
    assert first["token"] == "positive"
    assert {alt["token"] for alt in first["top"]} == {"positive", "negative", "neutral", "The"}
    body = fake_provider.requests("openai.chat")[0].body
    assert body["logprobs"] is True and body["top_logprobs"] == 10


def test_label_confidence_walks_tokens_while_labels_share_a_prefix(fake_provider):
    labels = ("card_arrival", "card_not_working", "pending_transfer")
    spec = TaskSpec("Intent of: {{ text }}", "label", ("text",), label_set=labels)
    # fake tokens: "card", "_", "not", "_", "working"
    alternatives = [
        {"card": 0.9, "pending": 0.1},  # 0.9 of the mass goes to the card_* labels
        {"_": 1.0},
        {"not": 0.5, "arrival": 0.25, "sorry": 0.25},  # 0.5 / 0.75 among labels
    ]
    fake_provider.responder = lambda req: FakeAnswer(
        "card_not_working", token_alternatives=alternatives
    )
    response = call(
        config_for(fake_provider),
        request_for(spec, "my card is broken", want_logprobs=True, label_set=labels),
    )
    assert response.label_confidence == pytest.approx(0.9 * (0.5 / 0.75))
    assert [p["token"] for p in response.top_logprobs] == ["card", "_", "not"]


def test_no_confidence_when_the_answer_is_not_a_label(fake_provider):
    fake_provider.responder = lambda req: "I think it is positive"
    response = call(config_for(fake_provider), request_for(LABEL_SPEC, "fine", want_logprobs=True))
    assert response.label_confidence is None
    assert parse_output(LABEL_SPEC, response.raw_text).error


def test_json_task_uses_strict_json_schema_and_parses(fake_provider):
    fake_provider.responder = lambda req: '{"total": 12.5, "vendor": "Kedai"}'
    response = call(config_for(fake_provider), request_for(JSON_SPEC, "KEDAI 12.50"))
    assert parse_output(JSON_SPEC, response.raw_text).value == {"total": 12.5, "vendor": "Kedai"}
    response_format = fake_provider.requests("openai.chat")[0].body["response_format"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["schema"] == JSON_SCHEMA
    assert response_format["json_schema"]["strict"] is True


def test_json_schema_that_strict_mode_cannot_take_is_sent_non_strict(fake_provider):
    loose = {"type": "object", "properties": {"total": {"type": "number"}}}
    spec = TaskSpec("Extract: {{ text }}", "json", ("text",), json_schema=loose)
    fake_provider.responder = lambda req: '{"total": 3}'
    response = call(config_for(fake_provider), request_for(spec, "x"))
    assert parse_output(spec, response.raw_text).value == {"total": 3}
    response_format = fake_provider.requests("openai.chat")[0].body["response_format"]
    assert response_format["json_schema"]["strict"] is False


def test_json_schema_with_an_array_root_is_wrapped_and_unwrapped(fake_provider):
    schema = {"type": "array", "items": {"type": "string"}}
    spec = TaskSpec("List items: {{ text }}", "json", ("text",), json_schema=schema)
    fake_provider.responder = lambda req: '{"value": ["tea", "toast"]}'
    response = call(config_for(fake_provider), request_for(spec, "tea and toast"))
    assert parse_output(spec, response.raw_text).value == ["tea", "toast"]
    sent = fake_provider.requests("openai.chat")[0].body["response_format"]["json_schema"]
    assert sent["schema"]["type"] == "object"
    assert sent["schema"]["properties"]["value"] == schema


def test_text_task_keeps_the_system_prompt_and_reports_truncation(fake_provider):
    fake_provider.responder = lambda req: "A customer asks about a card. " * 10
    response = call(
        config_for(fake_provider), request_for(TEXT_SPEC, "long dialogue", max_tokens=5)
    )
    assert response.finish_reason == "length"
    assert response.output_tokens == 5
    messages = fake_provider.requests("openai.chat")[0].body["messages"]
    assert messages[0] == {"role": "system", "content": "You write one-sentence summaries."}


def test_reasoning_models_get_no_temperature_and_no_logprobs(fake_provider):
    fake_provider.responder = lambda req: "neutral"
    request = request_for(LABEL_SPEC, "ok", model="o4-mini", want_logprobs=True, temperature=0)
    response = call(config_for(fake_provider), request)
    assert response.raw_text == "neutral"
    body = fake_provider.requests("openai.chat")[0].body
    assert "temperature" not in body and "logprobs" not in body
    assert body["max_completion_tokens"] == 64


def test_openai_compatible_endpoint_sends_max_tokens_and_needs_no_key(fake_provider):
    config = config_for(
        fake_provider, kind="openai_compatible", api_key="", credential_name="lan-vllm"
    )
    fake_provider.responder = lambda req: "positive"
    request = request_for(LABEL_SPEC, "good", model="Qwen/Qwen2.5-7B-Instruct", temperature=0.7)
    response = call(config, request)
    assert response.raw_text == "positive"
    body = fake_provider.requests("openai.chat")[0].body
    assert body["max_tokens"] == 64 and "max_completion_tokens" not in body
    assert body["temperature"] == 0.7


def test_invalid_key_is_reported_with_the_credential_name(fake_provider):
    fake_provider.api_keys = {"sk-the-real-one"}
    with pytest.raises(TeacherAuthError) as caught:
        call(config_for(fake_provider), request_for(LABEL_SPEC, "hi"))
    assert "invalid API key for credential 'prod-openai'" in str(caught.value)
    assert caught.value.retryable is False and caught.value.fatal is True
    assert fake_provider.count("openai.chat") == 1  # the SDK did not retry on its own


@pytest.mark.parametrize(
    ("status", "error_type", "retryable"),
    [
        (400, TeacherBadRequestError, False),
        (429, TeacherRateLimitError, True),
        (500, TeacherServerError, True),
        (503, TeacherServerError, True),
    ],
)
def test_http_failures_map_to_errors_and_the_sdk_never_retries(
    fake_provider, status, error_type, retryable
):
    fake_provider.fail_next(status, retry_after=7 if status == 429 else None)
    with pytest.raises(error_type) as caught:
        call(config_for(fake_provider), request_for(LABEL_SPEC, "hi"))
    assert caught.value.retryable is retryable
    assert caught.value.status_code == status
    if status == 429:
        assert caught.value.retry_after_s == 7
    assert fake_provider.count("openai.chat") == 1


def test_malformed_body_is_a_retryable_error(fake_provider):
    fake_provider.malformed_next()
    with pytest.raises(TeacherMalformedResponseError) as caught:
        call(config_for(fake_provider), request_for(LABEL_SPEC, "hi"))
    assert caught.value.retryable
    assert "prod-openai" in str(caught.value)


def test_connection_refused_is_retryable():
    with FakeProviderServer() as server:
        config = config_for(server)
    # The server is gone: nothing listens on that port any more.
    from worker.teachers import TeacherConnectionError

    with pytest.raises(TeacherConnectionError) as caught:
        call(config, request_for(LABEL_SPEC, "hi"))
    assert caught.value.retryable


def test_private_base_url_is_refused_unless_allowed(fake_provider):
    config = config_for(fake_provider, allow_private_network=False)
    with pytest.raises(TeacherConfigError, match="loopback"):
        make_provider(config)


def test_logprob_tokens_sum_to_probabilities(fake_provider):
    """The fake's logprobs are real log-probabilities: exp() gives back what the test set."""
    fake_provider.responder = lambda req: FakeAnswer(
        "neutral", token_alternatives=[{"neutral": 0.7, "negative": 0.3}]
    )
    response = call(config_for(fake_provider), request_for(LABEL_SPEC, "meh", want_logprobs=True))
    top = response.top_logprobs[0]["top"]
    assert math.fsum(math.exp(alt["logprob"]) for alt in top) == pytest.approx(1.0)
    assert response.label_confidence == pytest.approx(0.7)
