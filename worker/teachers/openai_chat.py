"""OpenAI Chat Completions (and any OpenAI-compatible endpoint) through the official ``openai`` SDK.

- ``kind="openai"``: api.openai.com (or a base URL override), ``max_completion_tokens``,
  ``temperature`` left out for reasoning models (o1/o3/o4, gpt-5) which only accept the default.
- ``kind="openai_compatible"``: vLLM, Ollama, llama.cpp server, Together, Fireworks, Gemini's
  OpenAI endpoint... by base URL, which must pass the SSRF guard; ``max_tokens`` (what they all
  understand).
- Every request (calls, file upload and download, batches, redirect hops) passes
  worker.teachers.egress's guard: only the base URL's origin, SSRF rules re-checked.
- json tasks: ``response_format={"type": "json_schema", ...}``, ``strict`` when the schema allows it.
- label tasks with ``want_logprobs``: ``logprobs`` + ``top_logprobs`` turned into a label
  confidence (see worker.teachers.confidence). Not asked of reasoning models, which refuse them.
- Batch mode: a JSONL file uploaded through Files, ``batches.create``, poll, download the output
  file, match lines by ``custom_id``.

The SDK never retries (``max_retries=0``): the runner does, and counts.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from typing import Any, Literal

from worker.teachers.base import (
    BatchStatus,
    BatchSubmission,
    ProviderConfig,
    TeacherConfigError,
    TeacherError,
    TeacherMalformedResponseError,
    TeacherRequest,
    TeacherResponse,
)
from worker.teachers.confidence import TokenLogprob, label_confidence
from worker.teachers.errors import error_from_status, translate_error
from worker.teachers.structured import (
    SCHEMA_NAME,
    is_strict_compatible,
    provider_schema,
    unwrap_text,
)

TOP_LOGPROBS = 10  # the API allows up to 20; 10 covers label sets' plausible rivals
OPENAI_BASE_URL = "https://api.openai.com/v1"
BATCH_ENDPOINT: Literal["/v1/chat/completions"] = "/v1/chat/completions"
_REASONING_MODEL = re.compile(r"^(o\d|gpt-5)(?!.*-chat)", re.IGNORECASE)
_FINISH = {"stop": "stop", "length": "length", "content_filter": "content_filter"}


def is_reasoning_model(model: str) -> bool:
    """o-series and gpt-5 models: no temperature other than the default, no logprobs."""
    return bool(_REASONING_MODEL.match(model.split("/")[-1]))


def chat_params(request: TeacherRequest, kind: str) -> dict[str, Any]:
    """The Chat Completions body for one request (the same for direct calls and batch lines)."""
    params: dict[str, Any] = {
        "model": request.model,
        "messages": [dict(m) for m in request.messages],
    }
    reasoning = kind == "openai" and is_reasoning_model(request.model)
    if not reasoning:
        params["temperature"] = float(request.temperature)
    if kind == "openai":
        params["max_completion_tokens"] = int(request.max_tokens)
    else:
        params["max_tokens"] = int(request.max_tokens)
    if request.output_kind == "json":
        schema, _ = provider_schema(request.json_schema)
        params["response_format"] = {
            "type": "json_schema",
            "json_schema": {
                "name": SCHEMA_NAME,
                "schema": schema,
                "strict": is_strict_compatible(schema),
            },
        }
    if request.output_kind == "label" and request.want_logprobs and not reasoning:
        params["logprobs"] = True
        params["top_logprobs"] = TOP_LOGPROBS
    return params


def response_from_completion(
    request: TeacherRequest | None,
    custom_id: str,
    completion: Any,
    *,
    latency_ms: int | None,
    request_id: str = "",
) -> TeacherResponse:
    """Map a ChatCompletion (SDK object) to a TeacherResponse."""
    choices = getattr(completion, "choices", None) or []
    if not choices:
        raise TeacherMalformedResponseError("the provider's answer has no choices")
    choice = choices[0]
    message = choice.message
    text = message.content or ""
    finish = _FINISH.get(str(choice.finish_reason or ""), str(choice.finish_reason or ""))
    refusal = getattr(message, "refusal", None)
    if refusal and not text:
        text, finish = str(refusal), "refusal"
    if request is not None and request.output_kind == "json":
        _, wrapped = provider_schema(request.json_schema)
        text = unwrap_text(text, wrapped)
    confidence: float | None = None
    positions: list[dict[str, Any]] | None = None
    logprobs = getattr(choice, "logprobs", None)
    content = getattr(logprobs, "content", None) if logprobs is not None else None
    if content:
        tokens = [
            TokenLogprob(
                token=item.token,
                logprob=float(item.logprob),
                top=tuple((alt.token, float(alt.logprob)) for alt in (item.top_logprobs or [])),
            )
            for item in content
        ]
        labels = request.label_set if request is not None else ()
        confidence, positions = label_confidence(tokens, labels)
    usage = getattr(completion, "usage", None)
    return TeacherResponse(
        custom_id=custom_id,
        raw_text=text,
        input_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
        output_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        finish_reason=finish,
        latency_ms=latency_ms,
        label_confidence=confidence,
        top_logprobs=positions,
        provider_request_id=request_id or str(getattr(completion, "id", "") or ""),
    )


class OpenAIChatProvider:
    """Chat Completions for ``kind`` "openai" and "openai_compatible"."""

    def __init__(self, config: ProviderConfig) -> None:
        import openai

        from worker.teachers.egress import EgressGuard

        if config.kind not in ("openai", "openai_compatible"):
            raise TeacherConfigError(f"OpenAIChatProvider cannot serve kind {config.kind!r}")
        self.config = config
        self.kind = config.kind
        base_url = config.base_url.strip() or None
        if self.kind == "openai_compatible" and not base_url:
            raise TeacherConfigError(
                f"{config.label}: an OpenAI-compatible endpoint needs a base URL"
            )
        if self.kind == "openai" and not config.api_key:
            raise TeacherConfigError(f"{config.label}: no API key")
        timeout = openai.Timeout(config.request_timeout_s, connect=config.connect_timeout_s)
        # The base URL is always passed: the SDK would otherwise take OPENAI_BASE_URL from the
        # environment and send this credential's key there.
        self.guard = EgressGuard(
            config, base_url or OPENAI_BASE_URL, check_now=base_url is not None
        )
        self.client = openai.AsyncOpenAI(
            # Self-hosted servers often need no key; the SDK insists on a non-empty one.
            api_key=config.api_key or "no-key",
            base_url=self.guard.base_url,
            max_retries=0,
            timeout=timeout,
            http_client=openai.DefaultAsyncHttpxClient(**self.guard.http_client_options(timeout)),
        )

    def _error(self, exc: BaseException, model: str) -> TeacherError:
        import openai

        return translate_error(exc, sdk=openai, config=self.config, model=model)

    async def aclose(self) -> None:
        await self.client.close()

    async def generate(self, request: TeacherRequest) -> TeacherResponse:
        from openai.types.chat import ChatCompletion

        params = chat_params(request, self.kind)
        started = time.perf_counter()
        try:
            # Same endpoint, auth, timeouts, errors and response model as
            # ``chat.completions.create``, minus its re-walk of our already-plain params through
            # the SDK's TypedDict transform (~0.3 ms of CPU per call, a fifth of the client's
            # cost at high concurrency). ``chat_params`` builds exactly the documented body.
            completion = await self.client.post(
                "/chat/completions", body=params, cast_to=ChatCompletion
            )
        except Exception as exc:
            raise self._error(exc, request.model) from exc
        latency = int((time.perf_counter() - started) * 1000)
        # The SDK keeps the x-request-id header on every response object.
        request_id = str(getattr(completion, "_request_id", "") or "")
        return response_from_completion(
            request, request.custom_id, completion, latency_ms=latency, request_id=request_id
        )

    # -- batch --------------------------------------------------------------------------------

    async def submit_batch(self, requests: Sequence[TeacherRequest]) -> BatchSubmission:
        if not requests:
            raise TeacherConfigError("a batch needs at least one request")
        ids = [r.custom_id for r in requests]
        if len(set(ids)) != len(ids):
            raise TeacherConfigError("custom_id values in a batch must be unique")
        lines = [
            json.dumps(
                {
                    "custom_id": r.custom_id,
                    "method": "POST",
                    "url": BATCH_ENDPOINT,
                    "body": chat_params(r, self.kind),
                },
                ensure_ascii=False,
            )
            for r in requests
        ]
        data = ("\n".join(lines) + "\n").encode()
        model = requests[0].model
        try:
            uploaded = await self.client.files.create(
                file=("distillery-batch.jsonl", data), purpose="batch"
            )
            batch = await self.client.batches.create(
                input_file_id=uploaded.id,
                endpoint=BATCH_ENDPOINT,
                completion_window="24h",
            )
        except Exception as exc:
            raise self._error(exc, model) from exc
        return BatchSubmission(
            batch_id=batch.id, request_count=len(requests), input_file_id=uploaded.id
        )

    async def poll_batch(self, batch_id: str) -> BatchStatus:
        try:
            batch = await self.client.batches.retrieve(batch_id)
        except Exception as exc:
            raise self._error(exc, "") from exc
        return _status(batch)

    async def cancel_batch(self, batch_id: str) -> BatchStatus:
        try:
            batch = await self.client.batches.cancel(batch_id)
        except Exception as exc:
            raise self._error(exc, "") from exc
        return _status(batch)

    async def collect_batch(
        self, batch_id: str, requests: Sequence[TeacherRequest] = ()
    ) -> dict[str, TeacherResponse]:
        """Responses by custom_id for every line the batch finished (errors included).

        Pass the submitted ``requests`` to get json answers unwrapped and label confidences;
        custom ids missing from the result were never processed (expired, cancelled)."""
        from openai.types.chat import ChatCompletion

        by_id = {r.custom_id: r for r in requests}
        try:
            batch = await self.client.batches.retrieve(batch_id)
            files = [f for f in (batch.output_file_id, batch.error_file_id) if f]
            contents = [(await self.client.files.content(f)).text for f in files]
        except Exception as exc:
            raise self._error(exc, "") from exc
        results: dict[str, TeacherResponse] = {}
        for content in contents:
            for line in content.splitlines():
                if not line.strip():
                    continue
                record = json.loads(line)
                custom_id = str(record.get("custom_id", ""))
                request = by_id.get(custom_id)
                response = record.get("response") or {}
                status = int(response.get("status_code") or 0)
                body = response.get("body") or {}
                request_id = str(response.get("request_id") or "")
                if record.get("error") or status != 200:
                    error = record.get("error") or (
                        body.get("error") if isinstance(body, dict) else None
                    )
                    message = error.get("message") if isinstance(error, dict) else str(error or "")
                    results[custom_id] = TeacherResponse(
                        custom_id=custom_id,
                        raw_text="",
                        provider_request_id=request_id,
                        error=error_from_status(
                            status or 500,
                            message or "batch line failed",
                            config=self.config,
                            model=request.model if request else "",
                        ).message,
                    )
                    continue
                completion = ChatCompletion.model_validate(body)
                results[custom_id] = response_from_completion(
                    request, custom_id, completion, latency_ms=None, request_id=request_id
                )
        return results


_STATES = {
    "validating": "in_progress",
    "in_progress": "in_progress",
    "finalizing": "finalizing",
    "completed": "completed",
    "failed": "failed",
    "expired": "expired",
    "cancelling": "cancelling",
    "cancelled": "cancelled",
}


def _status(batch: Any) -> BatchStatus:
    counts = batch.request_counts
    errors = getattr(batch, "errors", None)
    error_text = ""
    if errors is not None and getattr(errors, "data", None):
        error_text = "; ".join(str(e.message) for e in errors.data if getattr(e, "message", None))
    state = _STATES.get(batch.status, batch.status)
    return BatchStatus(
        batch_id=batch.id,
        state=state,
        provider_status=batch.status,
        total=int(getattr(counts, "total", 0) or 0),
        completed=int(getattr(counts, "completed", 0) or 0),
        failed=int(getattr(counts, "failed", 0) or 0),
        done=state in ("completed", "failed", "expired", "cancelled"),
        error=error_text,
    )
