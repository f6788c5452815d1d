"""Anthropic Messages through the official ``anthropic`` SDK (AsyncAnthropic).

- System messages go to the ``system`` parameter; the rest stay as turns.
- json tasks use tool use: one tool whose ``input_schema`` is the task's schema (wrapped when its
  root is not an object), with ``tool_choice`` forcing that tool. The tool input becomes
  ``raw_text`` as JSON, which the task's parser then validates against the schema.
- Batch mode: Message Batches (create, retrieve, results streamed by ``custom_id``), results read
  from the credential's own host only.
- Every request passes worker.teachers.egress's guard: only the base URL's origin, SSRF rules
  re-checked; a redirect elsewhere is refused before anything is sent.

The SDK never retries (``max_retries=0``): the runner does, and counts.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any, cast
from urllib.parse import quote

from worker.teachers.base import (
    BatchStatus,
    BatchSubmission,
    ProviderConfig,
    TeacherConfigError,
    TeacherError,
    TeacherRequest,
    TeacherResponse,
)
from worker.teachers.errors import translate_error
from worker.teachers.structured import provider_schema, unwrap_json_text

ANTHROPIC_BASE_URL = "https://api.anthropic.com"
TOOL_NAME = "record_output"
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "stop",  # the forced tool was called: a complete answer
    "max_tokens": "length",
    "refusal": "content_filter",
}


# Claude models from Opus 4.7 on reject sampling parameters with a 400 ("temperature is
# deprecated for this model"); older ones accept them. The current SDK no longer has a
# ``temperature`` argument, so it travels in ``extra_body`` for the models that take it.
_TAKES_TEMPERATURE = re.compile(
    r"^claude-(?:3[-\w.]*|(?:opus|sonnet)-4(?:-[0-6])?|haiku-4-5)(?:-\d{8}|-latest)?$"
)


def accepts_temperature(model: str) -> bool:
    return bool(_TAKES_TEMPERATURE.match(model.strip().split("/")[-1].lower()))


def message_params(request: TeacherRequest) -> dict[str, Any]:
    """The Messages body for one request (the same for direct calls and batch entries)."""
    system = "\n\n".join(str(m["content"]) for m in request.messages if m.get("role") == "system")
    turns = [
        {"role": m["role"], "content": m["content"]}
        for m in request.messages
        if m.get("role") != "system"
    ]
    params: dict[str, Any] = {
        "model": request.model,
        "max_tokens": int(request.max_tokens),
        "messages": turns,
    }
    if accepts_temperature(request.model):
        params["temperature"] = float(request.temperature)
    if system:
        params["system"] = system
    if request.output_kind == "json":
        schema, _ = provider_schema(request.json_schema)
        params["tools"] = [
            {
                "name": TOOL_NAME,
                "description": "Record the answer, in exactly the structure of this schema.",
                "input_schema": schema,
            }
        ]
        params["tool_choice"] = {"type": "tool", "name": TOOL_NAME}
    return params


def response_from_message(
    request: TeacherRequest | None,
    custom_id: str,
    message: Any,
    *,
    latency_ms: int | None,
    request_id: str = "",
) -> TeacherResponse:
    blocks = list(getattr(message, "content", None) or [])
    text = "".join(str(getattr(b, "text", "")) for b in blocks if getattr(b, "type", "") == "text")
    if request is not None and request.output_kind == "json":
        _, wrapped = provider_schema(request.json_schema)
        for block in blocks:
            if getattr(block, "type", "") == "tool_use" and block.name == TOOL_NAME:
                text = unwrap_json_text(block.input, wrapped)
                break
    stop = str(getattr(message, "stop_reason", "") or "")
    usage = getattr(message, "usage", None)
    return TeacherResponse(
        custom_id=custom_id,
        raw_text=text,
        input_tokens=int(getattr(usage, "input_tokens", 0) or 0),
        output_tokens=int(getattr(usage, "output_tokens", 0) or 0),
        finish_reason=_FINISH.get(stop, stop),
        latency_ms=latency_ms,
        provider_request_id=request_id or str(getattr(message, "id", "") or ""),
    )


class AnthropicMessagesProvider:
    def __init__(self, config: ProviderConfig) -> None:
        import anthropic

        from worker.teachers.egress import EgressGuard

        if config.kind != "anthropic":
            raise TeacherConfigError(f"AnthropicMessagesProvider cannot serve kind {config.kind!r}")
        if not config.api_key:
            raise TeacherConfigError(f"{config.label}: no API key")
        self.config = config
        timeout = anthropic.Timeout(config.request_timeout_s, connect=config.connect_timeout_s)
        base_url = config.base_url.strip() or None
        # The base URL is always passed: the SDK would otherwise take ANTHROPIC_BASE_URL (or a
        # profile's URL) from the environment and send this credential's key there.
        self.guard = EgressGuard(
            config, base_url or ANTHROPIC_BASE_URL, check_now=base_url is not None
        )
        self.client = anthropic.AsyncAnthropic(
            api_key=config.api_key,
            base_url=self.guard.base_url,
            max_retries=0,
            timeout=timeout,
            http_client=anthropic.DefaultAsyncHttpxClient(
                **self.guard.http_client_options(timeout)
            ),
        )

    def _error(self, exc: BaseException, model: str) -> TeacherError:
        import anthropic

        return translate_error(exc, sdk=anthropic, config=self.config, model=model)

    async def aclose(self) -> None:
        await self.client.close()

    async def generate(self, request: TeacherRequest) -> TeacherResponse:
        params = message_params(request)
        if "temperature" in params:
            params["extra_body"] = {"temperature": params.pop("temperature")}
        started = time.perf_counter()
        try:
            message = await self.client.messages.create(**params)
        except Exception as exc:
            raise self._error(exc, request.model) from exc
        latency = int((time.perf_counter() - started) * 1000)
        return response_from_message(
            request,
            request.custom_id,
            message,
            latency_ms=latency,
            request_id=str(getattr(message, "_request_id", "") or ""),
        )

    # -- batch --------------------------------------------------------------------------------

    async def submit_batch(self, requests: Sequence[TeacherRequest]) -> BatchSubmission:
        if not requests:
            raise TeacherConfigError("a batch needs at least one request")
        ids = [r.custom_id for r in requests]
        if len(set(ids)) != len(ids):
            raise TeacherConfigError("custom_id values in a batch must be unique")
        bad = [i for i in ids if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", i)]
        if bad:
            raise TeacherConfigError(
                f"Anthropic batch custom_id {bad[0]!r} must be 1-64 letters, digits, _ or -"
            )
        entries: list[Any] = [
            {"custom_id": r.custom_id, "params": message_params(r)} for r in requests
        ]
        try:
            batch = await self.client.messages.batches.create(requests=entries)
        except Exception as exc:
            raise self._error(exc, requests[0].model) from exc
        return BatchSubmission(batch_id=batch.id, request_count=len(requests))

    async def poll_batch(self, batch_id: str) -> BatchStatus:
        try:
            batch = await self.client.messages.batches.retrieve(batch_id)
        except Exception as exc:
            raise self._error(exc, "") from exc
        return _status(batch)

    async def cancel_batch(self, batch_id: str) -> BatchStatus:
        try:
            batch = await self.client.messages.batches.cancel(batch_id)
        except Exception as exc:
            raise self._error(exc, "") from exc
        return _status(batch)

    async def collect_batch(
        self, batch_id: str, requests: Sequence[TeacherRequest] = ()
    ) -> dict[str, TeacherResponse]:
        """Responses by custom_id; errored/canceled/expired entries carry ``error``
        (canceled and expired ones were not processed and cost nothing)."""
        # The SDK's reader of the results JSONL stream (what ``batches.results`` returns).
        from anthropic._decoders.jsonl import AsyncJSONLDecoder
        from anthropic.types.messages import MessageBatchIndividualResponse

        by_id = {r.custom_id: r for r in requests}
        results: dict[str, TeacherResponse] = {}
        try:
            batch = await self.client.messages.batches.retrieve(batch_id)
            if not batch.results_url:
                raise TeacherError(
                    f"{self.config.label}: batch {batch_id} has no results yet "
                    f"(processing status {batch.processing_status!r})"
                )
            stream = cast(
                "AsyncJSONLDecoder[MessageBatchIndividualResponse]",
                await self.client.get(
                    self._results_url(batch_id, batch.results_url),
                    cast_to=AsyncJSONLDecoder[MessageBatchIndividualResponse],
                    options={"headers": {"Accept": "application/binary"}},
                    stream=True,
                ),
            )
            async for item in stream:
                custom_id = str(item.custom_id)
                result = item.result
                request = by_id.get(custom_id)
                if result.type == "succeeded":
                    results[custom_id] = response_from_message(
                        request, custom_id, result.message, latency_ms=None
                    )
                elif result.type == "errored":
                    error = getattr(result.error, "error", None)
                    message = str(getattr(error, "message", "") or "the request failed")
                    kind = str(getattr(error, "type", "") or "error")
                    results[custom_id] = TeacherResponse(
                        custom_id=custom_id, raw_text="", error=f"{kind}: {message}"
                    )
                else:
                    results[custom_id] = TeacherResponse(
                        custom_id=custom_id,
                        raw_text="",
                        error=f"not processed: the batch entry was {result.type}",
                    )
        except Exception as exc:
            raise self._error(exc, "") from exc
        return results

    def _results_url(self, batch_id: str, results_url: str) -> str:
        """Where to read a batch's results: the ``results_url`` the server gave when it is on the
        credential's own origin; otherwise the documented path on that origin (a gateway may
        hand out its upstream's URL). Never another host: the request carries the key."""
        if self.guard.allows(results_url):
            return results_url
        return f"/v1/messages/batches/{quote(batch_id, safe='')}/results"


def _status(batch: Any) -> BatchStatus:
    counts = batch.request_counts
    succeeded = int(counts.succeeded or 0)
    errored = int(counts.errored or 0)
    canceled = int(counts.canceled or 0)
    expired = int(counts.expired or 0)
    processing = int(counts.processing or 0)
    status = str(batch.processing_status)
    if status == "in_progress":
        state = "in_progress"
    elif status == "canceling":
        state = "cancelling"
    elif succeeded + errored == 0 and canceled:
        state = "cancelled"
    elif succeeded + errored == 0 and expired:
        state = "expired"
    else:
        state = "completed"
    return BatchStatus(
        batch_id=batch.id,
        state=state,
        provider_status=status,
        total=succeeded + errored + canceled + expired + processing,
        completed=succeeded,
        failed=errored + canceled + expired,
        done=status == "ended",
    )
