"""A credential's key only ever goes to its own base URL's origin, on every provider path.

Two loopback servers: the provider (the fake) and a bystander on another port of the same
machine, which stands for any other host (an internal service, a metadata endpoint). The fake is
made to point the client at the bystander, through a redirect or a URL in its answer; the
bystander must never receive a request (so never the key), and the run must fail with a clear
error, or get its answer from the credential's own host."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest

from tests.fakes.provider_server import FakeProviderServer
from worker.taskspec import TaskSpec, build_messages, parse_output
from worker.teacher_runner import RetryPolicy, run_sync
from worker.teachers import (
    ProviderConfig,
    TeacherConfigError,
    TeacherConnectionError,
    TeacherEgressRefusedError,
    TeacherRequest,
    batch,
    make_provider,
)
from worker.teachers.egress import EgressGuard

LABELS = ("card_arrival", "exchange_rate", "lost_or_stolen_card")
SPEC = TaskSpec("Intent: {{ text }}", "label", ("text",), label_set=LABELS)
TEXTS = ["Where is my card?", "What is the euro rate?"]
MODELS = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5"}
GENERATION = {"openai": "openai.chat", "anthropic": "anthropic.messages"}


@pytest.fixture
def fake_provider() -> Iterator[FakeProviderServer]:
    with FakeProviderServer(responder=lambda req: "card_arrival") as server:
        yield server


@pytest.fixture
def bystander() -> Iterator[FakeProviderServer]:
    """Another service on this machine, which must never hear from the worker."""
    with FakeProviderServer() as server:
        yield server


def config_for(server: FakeProviderServer, kind: str, **overrides: Any) -> ProviderConfig:
    values: dict[str, Any] = {
        "kind": kind,
        "credential_name": f"team-{kind}",
        "api_key": f"sk-{kind}-secret-key",
        "base_url": server.openai_base_url if kind == "openai" else server.anthropic_base_url,
        "allow_private_network": True,  # the fake lives on 127.0.0.1
    }
    values.update(overrides)
    return ProviderConfig(**values)


def requests_for(kind: str, texts: list[str] = TEXTS) -> list[TeacherRequest]:
    return [
        TeacherRequest(
            custom_id=f"in-{i}-0",
            messages=build_messages(SPEC, {"text": text}),
            model=MODELS[kind],
            max_tokens=16,
            output_kind="label",
            label_set=LABELS,
        )
        for i, text in enumerate(texts)
    ]


def generate(config: ProviderConfig, request: TeacherRequest):  # type: ignore[no-untyped-def]
    async def go():  # type: ignore[no-untyped-def]
        provider = make_provider(config)
        try:
            return await provider.generate(request)
        finally:
            await provider.aclose()

    return asyncio.run(go())


def finished_batch(config: ProviderConfig, requests: list[TeacherRequest]) -> str:
    submission = batch.submit(config, requests)
    for _ in range(10):
        if batch.poll(config, submission.batch_id).done:
            return submission.batch_id
    raise AssertionError("the batch never finished")


# -- Anthropic batch results ------------------------------------------------------------------


def test_anthropic_results_url_on_another_host_is_read_from_the_credentials_host(
    fake_provider, bystander
):
    # What the sweep saw: results_url=http://localhost:<other port>/... received the key.
    fake_provider.results_url_origin = f"http://localhost:{bystander.port}"
    config = config_for(fake_provider, "anthropic")
    requests = requests_for("anthropic")
    batch_id = finished_batch(config, requests)

    responses = batch.collect(config, batch_id, requests)

    assert {cid: parse_output(SPEC, r.raw_text).value for cid, r in responses.items()} == {
        "in-0-0": "card_arrival",
        "in-1-0": "card_arrival",
    }
    assert bystander.requests() == []
    results = fake_provider.requests("anthropic.batches.results")
    assert [r.path for r in results] == [f"/v1/messages/batches/{batch_id}/results"]
    assert results[0].api_key == "sk-anthropic-secret-key"


def test_the_sdks_own_results_call_cannot_reach_another_host_either(fake_provider, bystander):
    """The guard sits in the HTTP client, under the SDK: even the SDK method that follows
    results_url blindly is stopped before it connects."""
    fake_provider.results_url_origin = bystander.url
    config = config_for(fake_provider, "anthropic")
    batch_id = finished_batch(config, requests_for("anthropic"))

    async def sdk_results() -> BaseException:
        provider: Any = make_provider(config)
        try:
            await provider.client.messages.batches.results(batch_id)
        except Exception as exc:
            return provider._error(exc, "")
        finally:
            await provider.aclose()
        raise AssertionError("the SDK fetched the results from another host")

    error = asyncio.run(sdk_results())
    assert isinstance(error, TeacherEgressRefusedError) and error.fatal
    assert error.refused_url == (
        f"http://127.0.0.1:{bystander.port}/v1/messages/batches/{batch_id}/results"
    )
    assert error.allowed_origin == f"http://127.0.0.1:{fake_provider.port}"
    assert bystander.requests() == []


# -- OpenAI batch output download ---------------------------------------------------------------


def test_openai_batch_output_redirected_to_another_host_fails_and_sends_nothing(
    fake_provider, bystander
):
    config = config_for(fake_provider, "openai")
    requests = requests_for("openai")
    batch_id = finished_batch(config, requests)
    fake_provider.redirect("openai.files.content", to=bystander.url, status=302, count=5)

    with pytest.raises(TeacherEgressRefusedError) as caught:
        batch.collect(config, batch_id, requests)

    message = str(caught.value)
    assert "credential 'team-openai'" in message
    assert f"127.0.0.1:{bystander.port}" in message
    assert f"only sent to http://127.0.0.1:{fake_provider.port}" in message
    assert caught.value.fatal and not caught.value.retryable
    assert bystander.requests() == []
    assert fake_provider.count("openai.files.content", status=302) == 1


# -- live calls -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_redirect_to_another_host_is_refused_before_it_connects(fake_provider, bystander, kind):
    fake_provider.redirect(GENERATION[kind], to=bystander.url)
    with pytest.raises(TeacherEgressRefusedError, match="nothing was sent"):
        generate(config_for(fake_provider, kind), requests_for(kind)[0])
    assert bystander.requests() == []


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_a_redirect_within_the_same_origin_is_followed(fake_provider, kind):
    fake_provider.redirect(GENERATION[kind], to=fake_provider.url)
    response = generate(config_for(fake_provider, kind), requests_for(kind)[0])
    assert response.raw_text == "card_arrival"
    assert [r.status for r in fake_provider.requests(GENERATION[kind])] == [307, 200]


def test_a_redirected_run_stops_at_the_first_refusal_and_says_why(fake_provider, bystander):
    fake_provider.redirect("openai.chat", to=bystander.url, count=10)
    summary = run_sync(
        requests_for("openai", TEXTS * 3),
        lambda: make_provider(config_for(fake_provider, "openai")),
        concurrency=1,
        retry=RetryPolicy(max_attempts=4, base_delay_s=0.01, max_delay_s=0.05),
    )
    assert summary.stopped_reason is not None
    assert "refused to send a request to" in summary.stopped_reason
    assert fake_provider.count("openai.chat") == 1  # not retried, nothing else sent
    assert bystander.requests() == []


# -- base URLs ------------------------------------------------------------------------------------


def test_localhost_base_url_needs_private_networks_allowed(fake_provider):
    base_url = f"http://localhost:{fake_provider.port}/v1"
    with pytest.raises(TeacherConfigError, match="localhost is a loopback name"):
        make_provider(
            config_for(fake_provider, "openai", base_url=base_url, allow_private_network=False)
        )
    response = generate(
        config_for(fake_provider, "openai", base_url=base_url), requests_for("openai")[0]
    )
    assert response.raw_text == "card_arrival"


@pytest.mark.parametrize("kind", ["openai_compatible", "anthropic"])
def test_single_label_base_url_is_refused_without_private_networks(kind):
    config = ProviderConfig(
        kind=kind,  # type: ignore[arg-type]
        credential_name="compose-vllm",
        api_key="sk-local-12345678",
        base_url="http://vllm:8000/v1",
    )
    with pytest.raises(TeacherConfigError, match="single-label host name") as caught:
        make_provider(config)
    assert "credential 'compose-vllm'" in str(caught.value)


def resolver_for(dns: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    def resolve(host: str, port: int) -> list[str]:
        if host not in dns:
            raise OSError("Name or service not known")
        return dns[host]

    return resolve


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_host_is_resolved_and_checked_again_while_a_run_goes_on():
    """A name that starts resolving to a metadata address mid-run is refused at call time."""
    dns = {"vllm": ["172.18.0.5"]}
    clock = Clock()
    config = ProviderConfig(
        kind="openai_compatible", base_url="http://vllm:8000/v1", allow_private_network=True
    )
    guard = EgressGuard(
        config,
        config.base_url,
        check_now=True,
        resolver=resolver_for(dns),
        recheck_after_s=60,
        clock=clock,
    )
    request = httpx2.Request("POST", "http://vllm:8000/v1/chat/completions")

    asyncio.run(guard(request))  # checked when the provider was built
    dns["vllm"] = ["169.254.169.254"]
    asyncio.run(guard(request))  # within the minute: not resolved again
    clock.now += 61
    with pytest.raises(TeacherEgressRefusedError, match="cloud metadata address"):
        asyncio.run(guard(request))

    del dns["vllm"]  # DNS trouble is a connection failure, retried, not a refusal
    with pytest.raises(TeacherConnectionError, match="does not resolve"):
        asyncio.run(guard(request))
