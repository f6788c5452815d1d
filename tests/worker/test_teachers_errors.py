"""Both SDK-based providers report failures the same way (one translation, worker.teachers.errors):
the error type says whether a retry can help, Retry-After travels as data, the message names
the credential."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from tests.fakes.provider_server import FakeProviderServer
from worker.taskspec import TaskSpec, build_messages
from worker.teachers import (
    ProviderConfig,
    TeacherAuthError,
    TeacherBadRequestError,
    TeacherConnectionError,
    TeacherError,
    TeacherMalformedResponseError,
    TeacherNotFoundError,
    TeacherRateLimitError,
    TeacherRequest,
    TeacherServerError,
    TeacherTimeoutError,
    make_provider,
)

SPEC = TaskSpec("Say: {{ text }}", "text", ("text",))
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}
KINDS = ["openai", "anthropic"]


@pytest.fixture
def fake_provider() -> Iterator[FakeProviderServer]:
    with FakeProviderServer(responder=lambda req: "hello") as server:
        yield server


def config_for(server: FakeProviderServer, kind: str, **overrides: object) -> ProviderConfig:
    values: dict[str, object] = {
        "kind": kind,
        "credential_name": f"team-{kind}",
        "api_key": "sk-test-12345678",
        "base_url": server.openai_base_url if kind == "openai" else server.anthropic_base_url,
        "allow_private_network": True,
    }
    values.update(overrides)
    return ProviderConfig(**values)  # type: ignore[arg-type]


def call(config: ProviderConfig) -> TeacherError:
    request = TeacherRequest(
        custom_id="row-1-0",
        messages=build_messages(SPEC, {"text": "hi"}),
        model=MODELS[config.kind],
        max_tokens=16,
    )

    async def go() -> TeacherError:
        provider = make_provider(config)
        try:
            await provider.generate(request)
        except TeacherError as exc:
            return exc
        finally:
            await provider.aclose()
        raise AssertionError("the call succeeded")

    return asyncio.run(go())


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("status", "error_type", "retryable", "fatal"),
    [
        (400, TeacherBadRequestError, False, False),
        (401, TeacherAuthError, False, True),
        (403, TeacherAuthError, False, True),
        (404, TeacherNotFoundError, False, True),
        (429, TeacherRateLimitError, True, False),
        (500, TeacherServerError, True, False),
        (529, TeacherServerError, True, False),
    ],
)
def test_statuses_map_to_the_same_errors_for_both_providers(
    fake_provider, kind, status, error_type, retryable, fatal
):
    fake_provider.fail_next(status, message="the far end says no")
    error = call(config_for(fake_provider, kind))
    assert type(error) is error_type
    assert (error.retryable, error.fatal, error.status_code) == (retryable, fatal, status)
    assert "the far end says no" in error.message
    assert error.message.startswith("the provider refused") or f"team-{kind}" in error.message


@pytest.mark.parametrize("kind", KINDS)
def test_retry_after_is_read_in_seconds_or_milliseconds(fake_provider, kind):
    fake_provider.fail_next(429, retry_after=7)
    assert call(config_for(fake_provider, kind)).retry_after_s == 7
    fake_provider.fail_next(429, retry_after_ms=1500, retry_after=7)
    assert call(config_for(fake_provider, kind)).retry_after_s == 1.5


@pytest.mark.parametrize("kind", KINDS)
def test_a_malformed_body_is_a_retryable_error_naming_the_credential(fake_provider, kind):
    fake_provider.malformed_next()
    error = call(config_for(fake_provider, kind))
    assert isinstance(error, TeacherMalformedResponseError) and error.retryable
    assert f"team-{kind}" in error.message


@pytest.mark.parametrize("kind", KINDS)
def test_a_timeout_is_retryable_and_says_how_long_it_waited(fake_provider, kind):
    fake_provider.latency_s = 2.0
    error = call(config_for(fake_provider, kind, request_timeout_s=0.2))
    assert isinstance(error, TeacherTimeoutError) and error.retryable
    assert f"the request to credential 'team-{kind}' timed out after 0.2 s" == error.message


@pytest.mark.parametrize("kind", KINDS)
def test_nobody_listening_is_a_retryable_connection_error(kind):
    with FakeProviderServer() as server:
        config = config_for(server, kind)
    error = call(config)
    assert isinstance(error, TeacherConnectionError) and error.retryable
    assert f"could not connect to credential 'team-{kind}'" in error.message
