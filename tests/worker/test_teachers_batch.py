"""Batch mode for both providers: submit, poll until done, collect by custom id, batch prices."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest

from tests.fakes.provider_server import FakeAnswer, FakeProviderServer
from worker import pricing
from worker.taskspec import TaskSpec, build_messages, parse_output
from worker.teachers import ProviderConfig, TeacherConfigError, TeacherRequest, batch


@pytest.fixture
def fake_provider() -> Iterator[FakeProviderServer]:
    with FakeProviderServer() as server:
        yield server


LABELS = ("card_arrival", "exchange_rate", "lost_or_stolen_card")
LABEL_SPEC = TaskSpec("Intent: {{ text }}", "label", ("text",), label_set=LABELS)
JSON_SPEC = TaskSpec(
    "Extract: {{ text }}",
    "json",
    ("text",),
    json_schema={
        "type": "object",
        "properties": {"total": {"type": "number"}},
        "required": ["total"],
        "additionalProperties": False,
    },
)
TEXTS = ["Where is my card?", "What is the euro rate?", "My card was stolen"]


def responder(request) -> FakeAnswer:  # type: ignore[no-untyped-def]
    question = request.last_user_text.split("\n\n")[0].lower()
    if "extract" in question:
        return FakeAnswer('{"total": 4.5}', input_tokens=50, output_tokens=5)
    if "broken" in question:
        return FakeAnswer("", error_status=400, error_message="messages: text content is empty")
    label = "exchange_rate" if "rate" in question else "card_arrival"
    if "stolen" in question:
        label = "lost_or_stolen_card"
    return FakeAnswer(label, input_tokens=40, output_tokens=3)


def requests_for(spec: TaskSpec, texts: list[str], model: str) -> list[TeacherRequest]:
    return [
        TeacherRequest(
            custom_id=f"input-{i}-0",
            messages=build_messages(spec, {"text": text}),
            model=model,
            max_tokens=20,
            output_kind=spec.output_kind,
            json_schema=spec.json_schema,
            label_set=spec.label_set,
        )
        for i, text in enumerate(texts)
    ]


def config_for(server: FakeProviderServer, kind: str) -> ProviderConfig:
    base = server.openai_base_url if kind == "openai" else server.anthropic_base_url
    return ProviderConfig(
        kind=kind,  # type: ignore[arg-type]
        credential_name=f"{kind}-batch",
        api_key="sk-test",
        base_url=base,
        allow_private_network=True,
    )


def wait_done(config: ProviderConfig, batch_id: str):  # type: ignore[no-untyped-def]
    """Poll like the Celery task does (the fake finishes after a few polls, not after time)."""
    for _ in range(10):
        status = batch.poll(config, batch_id)
        if status.done:
            return status
    raise AssertionError(f"batch {batch_id} never finished")


@pytest.mark.parametrize(
    ("kind", "model", "endpoint"),
    [
        ("openai", "gpt-4.1-mini", "openai.chat"),
        ("anthropic", "claude-haiku-4-5", "anthropic.messages"),
    ],
)
def test_label_batch_submit_poll_collect(fake_provider, kind, model, endpoint):
    fake_provider.responder = responder
    fake_provider.batch_polls_before_done = 2
    config = config_for(fake_provider, kind)
    requests = requests_for(LABEL_SPEC, TEXTS, model)

    submission = batch.submit(config, requests)
    assert submission.request_count == 3 and submission.batch_id

    first = batch.poll(config, submission.batch_id)
    assert not first.done and first.state == "in_progress"
    batch.poll(config, submission.batch_id)
    done = batch.poll(config, submission.batch_id)
    assert done.done and done.state == "completed"
    assert (done.completed, done.failed) == (3, 0)

    responses = batch.collect(config, submission.batch_id, requests)
    labels = {cid: parse_output(LABEL_SPEC, r.raw_text).value for cid, r in responses.items()}
    assert labels == {
        "input-0-0": "card_arrival",
        "input-1-0": "exchange_rate",
        "input-2-0": "lost_or_stolen_card",
    }
    assert all(r.input_tokens == 40 and r.output_tokens == 3 for r in responses.values())
    # No direct calls were made: everything went through the batch endpoints.
    assert fake_provider.count(endpoint) == 0
    # Billed at the batch discount: half of the list price.
    cost = pricing.cost(model, 40, 3, batch=True)
    assert cost * 2 == pricing.cost(model, 40, 3)


def test_openai_batch_lines_carry_the_chat_body_and_custom_ids(fake_provider):
    fake_provider.responder = responder
    config = config_for(fake_provider, "openai")
    requests = requests_for(JSON_SPEC, ["TOTAL 4.50"], "gpt-4o")
    submission = batch.submit(config, requests)
    upload = fake_provider.requests("openai.files.create")[0]
    assert "multipart/form-data" in upload.headers["content-type"]
    created = fake_provider.requests("openai.batches.create")[0].body
    assert created["endpoint"] == "/v1/chat/completions"
    assert created["completion_window"] == "24h"
    assert created["input_file_id"] == submission.input_file_id

    wait_done(config, submission.batch_id)
    responses = batch.collect(config, submission.batch_id, requests)
    assert parse_output(JSON_SPEC, responses["input-0-0"].raw_text).value == {"total": 4.5}


def test_anthropic_json_batch_uses_the_tool(fake_provider):
    fake_provider.responder = responder
    config = config_for(fake_provider, "anthropic")
    requests = requests_for(JSON_SPEC, ["TOTAL 4.50"], "claude-haiku-4-5")
    submission = batch.submit(config, requests)
    params = fake_provider.requests("anthropic.batches.create")[0].body["requests"][0]["params"]
    assert params["tool_choice"]["type"] == "tool"
    wait_done(config, submission.batch_id)
    responses = batch.collect(config, submission.batch_id, requests)
    assert parse_output(JSON_SPEC, responses["input-0-0"].raw_text).value == {"total": 4.5}


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_failed_lines_come_back_as_errors(fake_provider, kind):
    fake_provider.responder = responder
    config = config_for(fake_provider, kind)
    requests = requests_for(LABEL_SPEC, ["Where is my card?", "broken input"], "gpt-4o-mini")
    if kind == "anthropic":
        requests = requests_for(
            LABEL_SPEC, ["Where is my card?", "broken input"], "claude-haiku-4-5"
        )
    submission = batch.submit(config, requests)
    status = wait_done(config, submission.batch_id)
    assert (status.completed, status.failed) == (1, 1)
    responses = batch.collect(config, submission.batch_id, requests)
    assert responses["input-0-0"].error is None
    assert "text content is empty" in (responses["input-1-0"].error or "")


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_cancel_before_completion(fake_provider, kind):
    fake_provider.batch_polls_before_done = 5
    config = config_for(fake_provider, kind)
    model = "gpt-4o-mini" if kind == "openai" else "claude-haiku-4-5"
    requests = requests_for(LABEL_SPEC, TEXTS, model)
    submission = batch.submit(config, requests)
    batch.cancel(config, submission.batch_id)
    status = batch.poll(config, submission.batch_id)
    assert status.done and status.state == "cancelled"
    responses = batch.collect(config, submission.batch_id, requests)
    # Nothing was processed: every entry is missing or marked not processed, none answered.
    assert not any(r.error is None for r in responses.values())


def test_anthropic_custom_ids_are_checked_before_submitting(fake_provider):
    config = config_for(fake_provider, "anthropic")
    requests = requests_for(LABEL_SPEC, TEXTS[:1], "claude-haiku-4-5")
    bad = [TeacherRequest(**{**requests[0].__dict__, "custom_id": "input 1/0"})]
    with pytest.raises(TeacherConfigError, match="custom_id"):
        batch.submit(config, bad)
    assert fake_provider.count("anthropic.batches.create") == 0


def test_batch_mode_is_refused_for_providers_without_it(fake_provider):
    config = ProviderConfig(
        kind="openai_compatible", base_url=fake_provider.openai_base_url, allow_private_network=True
    )
    with pytest.raises(TeacherConfigError, match="batch mode"):
        batch.submit(config, requests_for(LABEL_SPEC, TEXTS, "llama3"))


def test_batch_cost_uses_the_discount():
    assert pricing.cost("gpt-4o", 1_000_000, 1_000_000, batch=True) == Decimal("6.25")
    assert pricing.cost("claude-haiku-4-5", 1_000_000, 1_000_000, batch=True) == Decimal("3.00")
