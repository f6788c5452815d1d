"""A loopback HTTP server that speaks the OpenAI and Anthropic wire formats, for tests and benches.

The real ``openai`` and ``anthropic`` SDKs talk to it over HTTP; only the far end is fake.
It serves:

- OpenAI: ``POST /v1/chat/completions`` (text, ``response_format``, ``logprobs`` +
  ``top_logprobs``), ``POST /v1/files`` (multipart), ``GET /v1/files/{id}``,
  ``GET /v1/files/{id}/content``, ``POST /v1/batches``, ``GET /v1/batches/{id}``,
  ``POST /v1/batches/{id}/cancel``.
- Anthropic: ``POST /v1/messages`` (text, forced tool use), ``POST /v1/messages/batches``,
  ``GET /v1/messages/batches/{id}``, ``GET /v1/messages/batches/{id}/results``,
  ``POST /v1/messages/batches/{id}/cancel``.
- Control (for a server in another process): ``GET /_fake/log``, ``POST /_fake/config``,
  ``POST /_fake/reset``.

Answers come from a responder function ``FakeRequest -> str | FakeAnswer``. Knobs: a fixed
latency, the next N generation calls failing with a status (429 with Retry-After, 500, ...),
the next N answering a malformed JSON body, a set of valid API keys (anything else gets 401),
the next N requests of a route redirected to another origin (``redirect``), and the origin that
Anthropic's ``results_url`` names (``results_url_origin``; the fake's own by default).
Every request is recorded in a thread-safe log.

Use in-process::

    with FakeProviderServer(responder=lambda req: "positive") as server:
        client = AsyncOpenAI(base_url=server.openai_base_url, api_key="sk-test")

or as its own process (benchmarks, Celery workers)::

    python -m tests.fakes.provider_server --latency 0.1 --responder first_label
    # prints "READY http://127.0.0.1:PORT" on stdout
"""

from __future__ import annotations

import argparse
import email.parser
import email.policy
import importlib
import itertools
import json
import math
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

GENERATION_KINDS = ("openai.chat", "anthropic.messages")


@dataclass
class FakeRequest:
    """What the responder sees: one generation request, from a direct call or a batch line."""

    api: str  # "openai" | "anthropic"
    model: str
    messages: list[dict[str, Any]]  # system first (Anthropic's ``system`` is folded in)
    body: dict[str, Any]
    batch: bool = False

    @property
    def last_user_text(self) -> str:
        for message in reversed(self.messages):
            if message.get("role") == "user":
                return _content_text(message.get("content"))
        return ""


@dataclass
class FakeAnswer:
    """A responder's full answer. ``token_alternatives[i]`` maps candidate tokens to
    probabilities at output position i (it should include the chosen token); it feeds
    OpenAI ``top_logprobs``. ``error_status`` makes this one request fail (batch lines too)."""

    text: str
    input_tokens: int | None = None
    output_tokens: int | None = None
    token_alternatives: list[dict[str, float]] | None = None
    finish_reason: str | None = None  # OpenAI words: "stop" | "length" | "content_filter"
    error_status: int | None = None
    error_message: str = "fake failure"


Responder = Callable[[FakeRequest], "str | FakeAnswer"]


@dataclass
class LoggedRequest:
    kind: str  # "openai.chat", "anthropic.messages", "openai.files.create", ... , "control"
    method: str
    path: str
    status: int
    at: float  # time.monotonic() when the request arrived
    body: dict[str, Any] | None = None
    api_key: str = ""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Failure:
    status: int
    retry_after: str | None = None
    retry_after_ms: str | None = None
    message: str = ""


# ----------------------------------------------------------------------------------------------
# Built-in responders (usable by name from the command line)

_LABELS_LINE = re.compile(r"labels and nothing else:\s*(.+)$", re.MULTILINE)


def echo_responder(request: FakeRequest) -> str:
    return request.last_user_text


def first_label_responder(request: FakeRequest) -> str:
    """For label tasks rendered by worker.taskspec: answer the first label of the set."""
    match = _LABELS_LINE.search(request.last_user_text)
    if not match:
        return "ok"
    return match.group(1).split(",")[0].strip()


def responder_by_name(name: str) -> Responder:
    """``echo``, ``first_label``, ``constant:TEXT`` or ``package.module:function``."""
    if name == "echo":
        return echo_responder
    if name == "first_label":
        return first_label_responder
    if name.startswith("constant:"):
        text = name.split(":", 1)[1]
        return lambda _request: text
    module_name, _, attr = name.partition(":")
    if not attr:
        raise ValueError(f"unknown responder {name!r}")
    function: Responder = getattr(importlib.import_module(module_name), attr)
    return function


# ----------------------------------------------------------------------------------------------
# Helpers


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


_TOKEN = re.compile(r"[A-Za-z]+|\d+|\s+|[^A-Za-z\d\s]")


def fake_tokens(text: str) -> list[str]:
    """How the fake splits an answer into logprob tokens: letters, digits, spaces, symbols."""
    return _TOKEN.findall(text) or [text]


def default_input_tokens(messages: list[dict[str, Any]]) -> int:
    chars = sum(len(_content_text(m.get("content"))) for m in messages)
    return 3 + 4 * len(messages) + math.ceil(chars / 4)


def default_output_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


class _Counter:
    def __init__(self) -> None:
        self._next = itertools.count(1)
        self._lock = threading.Lock()

    def __call__(self, prefix: str) -> str:
        with self._lock:
            return f"{prefix}{next(self._next):06d}"


# ----------------------------------------------------------------------------------------------
# The server


class FakeProviderServer:
    """Start with ``start()`` (or ``with``); ``url`` is ``http://127.0.0.1:<ephemeral port>``."""

    def __init__(
        self,
        responder: Responder | None = None,
        *,
        latency_s: float = 0.0,
        api_keys: set[str] | None = None,
        batch_polls_before_done: int = 1,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.responder: Responder = responder or first_label_responder
        self.latency_s = latency_s
        self.api_keys = api_keys
        self.batch_polls_before_done = batch_polls_before_done
        self._host = host
        self._port = port
        self._lock = threading.Lock()
        self._log: list[LoggedRequest] = []
        self._failures: list[_Failure] = []
        self._malformed = 0
        self._ids = _Counter()
        self._files: dict[str, dict[str, Any]] = {}
        self._file_bytes: dict[str, bytes] = {}
        self._openai_batches: dict[str, dict[str, Any]] = {}
        self._anthropic_batches: dict[str, dict[str, Any]] = {}
        self._batch_inputs: dict[str, list[dict[str, Any]]] = {}
        self._batch_polls: dict[str, int] = {}
        self._anthropic_results: dict[str, bytes] = {}
        self._redirects: dict[str, list[tuple[str, int]]] = {}
        # Where Anthropic batch ``results_url``s point (a real API names its own host).
        self.results_url_origin: str | None = None
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._active = 0
        self.max_concurrent = 0  # most generation calls being answered at the same time

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeProviderServer:
        server = self

        class Handler(_Handler):
            fake = server

        httpd = ThreadingHTTPServer((self._host, self._port), Handler, bind_and_activate=False)
        httpd.daemon_threads = True
        httpd.request_queue_size = 256  # the SDKs open dozens of connections at once
        httpd.allow_reuse_address = True
        httpd.server_bind()
        httpd.server_activate()
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeProviderServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    # -- knobs --------------------------------------------------------------------------------

    def fail_next(
        self,
        status: int,
        count: int = 1,
        *,
        retry_after: float | str | None = None,
        retry_after_ms: float | None = None,
        message: str = "",
    ) -> None:
        """The next ``count`` generation calls answer ``status`` (with Retry-After if given)."""
        failure = _Failure(
            status=status,
            retry_after=None if retry_after is None else _fmt_number(retry_after),
            retry_after_ms=None if retry_after_ms is None else _fmt_number(retry_after_ms),
            message=message,
        )
        with self._lock:
            self._failures.extend([failure] * count)

    def malformed_next(self, count: int = 1) -> None:
        """The next ``count`` generation calls answer 200 with a body that is not JSON."""
        with self._lock:
            self._malformed += count

    def redirect(self, kind: str, to: str, *, count: int = 1, status: int = 307) -> None:
        """The next ``count`` requests of route ``kind`` (e.g. "openai.files.content") answer
        ``status`` with ``Location: <to><the same path and query>``; ``to`` is an origin such as
        another server's ``url`` (or this one's, for a same-origin redirect)."""
        with self._lock:
            self._redirects.setdefault(kind, []).extend([(to.rstrip("/"), status)] * count)

    def _take_redirect(self, kind: str) -> tuple[str, int] | None:
        with self._lock:
            pending = self._redirects.get(kind)
            return pending.pop(0) if pending else None

    def reset(self) -> None:
        with self._lock:
            self._log.clear()
            self._failures.clear()
            self._redirects.clear()
            self._malformed = 0
            self.max_concurrent = 0

    # -- the request log ----------------------------------------------------------------------

    def requests(self, kind: str | None = None) -> list[LoggedRequest]:
        with self._lock:
            return [r for r in self._log if kind is None or r.kind == kind]

    def count(self, kind: str | None = None, *, status: int | None = None) -> int:
        return sum(1 for r in self.requests(kind) if status is None or r.status == status)

    def generation_requests(self) -> list[LoggedRequest]:
        return [r for r in self.requests() if r.kind in GENERATION_KINDS]

    def _record(self, entry: LoggedRequest) -> None:
        with self._lock:
            self._log.append(entry)

    def _take_fault(self) -> _Failure | str | None:
        with self._lock:
            if self._failures:
                return self._failures.pop(0)
            if self._malformed:
                self._malformed -= 1
                return "malformed"
        return None

    # -- answers ------------------------------------------------------------------------------

    def _answer(self, request: FakeRequest) -> FakeAnswer:
        answer = self.responder(request)
        if isinstance(answer, str):
            answer = FakeAnswer(text=answer)
        return answer

    def openai_completion(self, body: dict[str, Any], *, batch: bool) -> tuple[int, dict[str, Any]]:
        messages = list(body.get("messages") or [])
        model = str(body.get("model", ""))
        answer = self._answer(FakeRequest("openai", model, messages, body, batch))
        if answer.error_status:
            return answer.error_status, _openai_error(answer.error_status, answer.error_message)
        text = answer.text
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        out_tokens = answer.output_tokens or default_output_tokens(text)
        finish = answer.finish_reason or "stop"
        if limit is not None and out_tokens > int(limit):
            out_tokens = int(limit)
            text = text[: int(limit) * 4]
            finish = "length"
        in_tokens = answer.input_tokens or default_input_tokens(messages)
        logprobs = None
        if body.get("logprobs"):
            top_n = int(body.get("top_logprobs") or 0)
            content = []
            for i, token in enumerate(fake_tokens(text)):
                alts = {token: 1.0}
                if answer.token_alternatives and i < len(answer.token_alternatives):
                    alts = dict(answer.token_alternatives[i])
                    alts.setdefault(token, 1e-9)
                ranked = sorted(alts.items(), key=lambda kv: -kv[1])
                content.append(
                    {
                        "token": token,
                        "logprob": math.log(alts[token]),
                        "bytes": list(token.encode()),
                        "top_logprobs": [
                            {"token": t, "logprob": math.log(p), "bytes": list(t.encode())}
                            for t, p in ranked[:top_n]
                        ],
                    }
                )
            logprobs = {"content": content, "refusal": None}
        return 200, {
            "id": self._ids("chatcmpl-"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": logprobs,
                    "finish_reason": finish,
                }
            ],
            "usage": {
                "prompt_tokens": in_tokens,
                "completion_tokens": out_tokens,
                "total_tokens": in_tokens + out_tokens,
            },
        }

    def anthropic_message(self, body: dict[str, Any], *, batch: bool) -> tuple[int, dict[str, Any]]:
        messages = list(body.get("messages") or [])
        system = body.get("system")
        if system:
            messages = [{"role": "system", "content": _content_text(system)}, *messages]
        model = str(body.get("model", ""))
        answer = self._answer(FakeRequest("anthropic", model, messages, body, batch))
        if answer.error_status:
            return answer.error_status, _anthropic_error(answer.error_status, answer.error_message)
        text = answer.text
        limit = int(body.get("max_tokens") or 0)
        out_tokens = answer.output_tokens or default_output_tokens(text)
        stop = {"length": "max_tokens", "content_filter": "refusal"}.get(
            answer.finish_reason or "", "end_turn"
        )
        if limit and out_tokens > limit:
            out_tokens = limit
            text = text[: limit * 4]
            stop = "max_tokens"
        in_tokens = answer.input_tokens or default_input_tokens(messages)
        content: list[dict[str, Any]] = [{"type": "text", "text": text}]
        choice = body.get("tool_choice") or {}
        tools = body.get("tools") or []
        if tools and choice.get("type") == "tool":
            try:
                value = json.loads(text)
            except ValueError:
                value = None
            if isinstance(value, dict):
                content = [
                    {
                        "type": "tool_use",
                        "id": self._ids("toolu_"),
                        "name": choice.get("name") or tools[0].get("name"),
                        "input": value,
                    }
                ]
                if stop == "end_turn":
                    stop = "tool_use"
        return 200, {
            "id": self._ids("msg_"),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {"input_tokens": in_tokens, "output_tokens": out_tokens},
        }

    # -- OpenAI files and batches -------------------------------------------------------------

    def create_file(self, filename: str, purpose: str, data: bytes) -> dict[str, Any]:
        file_id = self._ids("file-")
        obj = {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }
        with self._lock:
            self._files[file_id] = obj
            self._file_bytes[file_id] = data
        return obj

    def create_openai_batch(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        input_file_id = str(body.get("input_file_id", ""))
        with self._lock:
            data = self._file_bytes.get(input_file_id)
        if data is None:
            return 404, _openai_error(404, f"No such File object: {input_file_id}")
        lines = [json.loads(line) for line in data.decode().splitlines() if line.strip()]
        batch_id = self._ids("batch_")
        now = int(time.time())
        obj = {
            "id": batch_id,
            "object": "batch",
            "endpoint": body.get("endpoint", "/v1/chat/completions"),
            "errors": None,
            "input_file_id": input_file_id,
            "completion_window": body.get("completion_window", "24h"),
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": None,
            "expires_at": now + 86400,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
        }
        with self._lock:
            self._openai_batches[batch_id] = obj
            self._batch_inputs[batch_id] = lines
            self._batch_polls[batch_id] = 0
        return 200, obj

    def retrieve_openai_batch(self, batch_id: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            obj = self._openai_batches.get(batch_id)
            if obj is None:
                return 404, _openai_error(404, f"No batch found with id '{batch_id}'")
            self._batch_polls[batch_id] += 1
            ready = (
                obj["status"] in ("validating", "in_progress")
                and self._batch_polls[batch_id] > self.batch_polls_before_done
            )
            if obj["status"] == "validating" and not ready:
                obj["status"] = "in_progress"
                obj["in_progress_at"] = int(time.time())
        if ready:
            self._finish_openai_batch(batch_id)
        with self._lock:
            return 200, json.loads(json.dumps(obj))

    def _finish_openai_batch(self, batch_id: str) -> None:
        with self._lock:
            lines = list(self._batch_inputs[batch_id])
        outputs, errors = [], []
        for line in lines:
            status, body = self.openai_completion(line.get("body") or {}, batch=True)
            record = {
                "id": self._ids("batch_req_"),
                "custom_id": line.get("custom_id"),
                "response": {
                    "status_code": status,
                    "request_id": self._ids("req_"),
                    "body": body,
                },
                "error": None,
            }
            (outputs if status == 200 else errors).append(record)
        out = self.create_file("batch_output.jsonl", "batch_output", _jsonl(outputs))
        err = (
            self.create_file("batch_errors.jsonl", "batch_output", _jsonl(errors))
            if errors
            else None
        )
        now = int(time.time())
        with self._lock:
            obj = self._openai_batches[batch_id]
            obj.update(
                status="completed",
                output_file_id=out["id"],
                error_file_id=err["id"] if err else None,
                finalizing_at=now,
                completed_at=now,
                request_counts={
                    "total": len(lines),
                    "completed": len(outputs),
                    "failed": len(errors),
                },
            )

    def cancel_openai_batch(self, batch_id: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            obj = self._openai_batches.get(batch_id)
            if obj is None:
                return 404, _openai_error(404, f"No batch found with id '{batch_id}'")
            if obj["status"] in ("validating", "in_progress"):
                obj.update(status="cancelled", cancelled_at=int(time.time()))
            return 200, json.loads(json.dumps(obj))

    # -- Anthropic message batches ------------------------------------------------------------

    def create_anthropic_batch(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        requests = list(body.get("requests") or [])
        for item in requests:
            custom_id = str(item.get("custom_id", ""))
            if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", custom_id):
                return 400, _anthropic_error(
                    400, f"requests.custom_id: {custom_id!r} does not match ^[a-zA-Z0-9_-]{{1,64}}$"
                )
        batch_id = self._ids("msgbatch_")
        obj = {
            "id": batch_id,
            "type": "message_batch",
            "processing_status": "in_progress",
            "request_counts": {
                "processing": len(requests),
                "succeeded": 0,
                "errored": 0,
                "canceled": 0,
                "expired": 0,
            },
            "ended_at": None,
            "created_at": _iso(time.time()),
            "expires_at": _iso(time.time() + 86400),
            "archived_at": None,
            "cancel_initiated_at": None,
            "results_url": None,
        }
        with self._lock:
            self._anthropic_batches[batch_id] = obj
            self._batch_inputs[batch_id] = requests
            self._batch_polls[batch_id] = 0
        return 200, obj

    def retrieve_anthropic_batch(self, batch_id: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            obj = self._anthropic_batches.get(batch_id)
            if obj is None:
                return 404, _anthropic_error(404, f"message batch {batch_id} not found")
            self._batch_polls[batch_id] += 1
            ready = (
                obj["processing_status"] == "in_progress"
                and self._batch_polls[batch_id] > self.batch_polls_before_done
            )
        if ready:
            self._finish_anthropic_batch(batch_id)
        with self._lock:
            return 200, json.loads(json.dumps(obj))

    def _finish_anthropic_batch(self, batch_id: str, *, canceled: bool = False) -> None:
        with self._lock:
            requests = list(self._batch_inputs[batch_id])
        results = []
        counts = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        for item in requests:
            if canceled:
                result: dict[str, Any] = {"type": "canceled"}
                counts["canceled"] += 1
            else:
                status, body = self.anthropic_message(item.get("params") or {}, batch=True)
                if status == 200:
                    result = {"type": "succeeded", "message": body}
                    counts["succeeded"] += 1
                else:
                    result = {"type": "errored", "error": body}
                    counts["errored"] += 1
            results.append({"custom_id": item.get("custom_id"), "result": result})
        with self._lock:
            self._anthropic_results[batch_id] = _jsonl(results)
            obj = self._anthropic_batches[batch_id]
            obj.update(
                processing_status="ended",
                request_counts=counts,
                ended_at=_iso(time.time()),
                results_url=f"{self.results_url_origin or self.url}"
                f"/v1/messages/batches/{batch_id}/results",
            )

    def cancel_anthropic_batch(self, batch_id: str) -> tuple[int, dict[str, Any]]:
        with self._lock:
            obj = self._anthropic_batches.get(batch_id)
            if obj is None:
                return 404, _anthropic_error(404, f"message batch {batch_id} not found")
            running = obj["processing_status"] == "in_progress"
            if running:
                obj["cancel_initiated_at"] = _iso(time.time())
        if running:
            self._finish_anthropic_batch(batch_id, canceled=True)
        with self._lock:
            return 200, json.loads(json.dumps(obj))


# ----------------------------------------------------------------------------------------------
# HTTP plumbing


def _fmt_number(value: float | str) -> str:
    if isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else str(value)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:  # 529 "Overloaded" is Anthropic's own
        return "Overloaded" if status == 529 else f"HTTP {status}"


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)


def _openai_error(status: int, message: str) -> dict[str, Any]:
    kinds = {
        401: ("invalid_request_error", "invalid_api_key"),
        404: ("invalid_request_error", "not_found"),
        429: ("requests", "rate_limit_exceeded"),
    }
    kind, code = kinds.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _anthropic_error(status: int, message: str) -> dict[str, Any]:
    kinds = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        429: "rate_limit_error",
        529: "overloaded_error",
    }
    kind = kinds.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(r"/v1/chat/completions"), "openai.chat"),
    ("POST", re.compile(r"/v1/files"), "openai.files.create"),
    ("GET", re.compile(r"/v1/files/(?P<id>[^/]+)/content"), "openai.files.content"),
    ("GET", re.compile(r"/v1/files/(?P<id>[^/]+)"), "openai.files.retrieve"),
    ("POST", re.compile(r"/v1/batches"), "openai.batches.create"),
    ("GET", re.compile(r"/v1/batches/(?P<id>[^/]+)"), "openai.batches.retrieve"),
    ("POST", re.compile(r"/v1/batches/(?P<id>[^/]+)/cancel"), "openai.batches.cancel"),
    ("POST", re.compile(r"/v1/messages"), "anthropic.messages"),
    ("POST", re.compile(r"/v1/messages/batches"), "anthropic.batches.create"),
    ("GET", re.compile(r"/v1/messages/batches/(?P<id>[^/]+)"), "anthropic.batches.retrieve"),
    (
        "GET",
        re.compile(r"/v1/messages/batches/(?P<id>[^/]+)/results"),
        "anthropic.batches.results",
    ),
    ("POST", re.compile(r"/v1/messages/batches/(?P<id>[^/]+)/cancel"), "anthropic.batches.cancel"),
    ("GET", re.compile(r"/_fake/log"), "control"),
    ("POST", re.compile(r"/_fake/config"), "control"),
    ("POST", re.compile(r"/_fake/reset"), "control"),
]


class _Handler(BaseHTTPRequestHandler):
    fake: FakeProviderServer
    protocol_version = "HTTP/1.1"
    server_version = "FakeProvider/1.0"

    def setup(self) -> None:
        super().setup()
        # Answers go out in one write with Nagle off: otherwise Nagle + delayed ACK add ~40 ms
        # to every call, which no real provider does.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    # -- dispatch -----------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        arrived = time.monotonic()
        path = urlsplit(self.path).path.rstrip("/")
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        kind, params = "unknown", {}
        for route_method, pattern, route_kind in _ROUTES:
            match = pattern.fullmatch(path)
            if match and route_method == method:
                kind, params = route_kind, match.groupdict()
                break
        body: dict[str, Any] | None = None
        if raw and "json" in (self.headers.get("content-type") or ""):
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        api_key = self._api_key()
        entry = LoggedRequest(
            kind=kind,
            method=method,
            path=path,
            status=0,
            at=arrived,
            body=body,
            api_key=api_key,
            headers={k.lower(): v for k, v in self.headers.items()},
        )
        # Logged on arrival (status filled in before the answer goes out), so a test that has
        # its answer always finds the request in the log.
        if kind != "control":
            self.fake._record(entry)
        self._route(kind, params, body, raw, api_key, entry)

    def _api_key(self) -> str:
        auth = self.headers.get("authorization") or ""
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return (self.headers.get("x-api-key") or "").strip()

    def _route(
        self,
        kind: str,
        params: dict[str, str],
        body: dict[str, Any] | None,
        raw: bytes,
        api_key: str,
        entry: LoggedRequest,
    ) -> None:
        fake = self.fake
        anthropic = kind.startswith("anthropic")
        error = _anthropic_error if anthropic else _openai_error
        if kind == "unknown":
            self._json(entry, 404, error(404, f"no route for {self.command} {self.path}"))
            return
        if kind == "control":
            self._control(entry, body)
            return
        redirect = fake._take_redirect(kind)
        if redirect is not None:
            to, status = redirect
            self._json(entry, status, {}, {"location": to + self.path})
            return
        if fake.api_keys is not None and api_key not in fake.api_keys:
            message = (
                "invalid x-api-key"
                if anthropic
                else f"Incorrect API key provided: {api_key[:3]}***{api_key[-4:]}."
            )
            self._json(entry, 401, error(401, message))
            return
        if kind in GENERATION_KINDS:
            with fake._lock:
                fake._active += 1
                fake.max_concurrent = max(fake.max_concurrent, fake._active)
            try:
                self._generation(kind, body, entry, anthropic, error)
            finally:
                with fake._lock:
                    fake._active -= 1
            return
        self._batch_route(kind, params, body, raw, entry)

    def _generation(
        self,
        kind: str,
        body: dict[str, Any] | None,
        entry: LoggedRequest,
        anthropic: bool,
        error: Callable[[int, str], dict[str, Any]],
    ) -> None:
        fake = self.fake
        if fake.latency_s:
            time.sleep(fake.latency_s)
        fault = fake._take_fault()
        if fault == "malformed":
            self._send(entry, 200, b'{"id": "broken", "choices": [', "application/json")
            return
        if isinstance(fault, _Failure):
            headers = {}
            if fault.retry_after is not None:
                headers["retry-after"] = fault.retry_after
            if fault.retry_after_ms is not None:
                headers["retry-after-ms"] = fault.retry_after_ms
            message = fault.message or _phrase(fault.status)
            self._json(entry, fault.status, error(fault.status, message), headers)
            return
        if body is None:
            self._json(entry, 400, error(400, "the body is not JSON"))
            return
        if anthropic:
            status, answer = fake.anthropic_message(body, batch=False)
        else:
            status, answer = fake.openai_completion(body, batch=False)
        request_header = "request-id" if anthropic else "x-request-id"
        self._json(entry, status, answer, {request_header: fake._ids("req_")})

    def _batch_route(
        self,
        kind: str,
        params: dict[str, str],
        body: dict[str, Any] | None,
        raw: bytes,
        entry: LoggedRequest,
    ) -> None:
        fake = self.fake
        if kind == "openai.files.create":
            fields = _multipart(self.headers.get("content-type") or "", raw)
            filename, data = fields.get("file", ("upload.jsonl", b""))
            purpose = fields.get("purpose", ("", b""))[1].decode()
            self._json(entry, 200, fake.create_file(filename, purpose, data))
        elif kind == "openai.files.retrieve":
            with fake._lock:
                obj = fake._files.get(params["id"])
            if obj is None:
                self._json(entry, 404, _openai_error(404, f"No such File object: {params['id']}"))
            else:
                self._json(entry, 200, obj)
        elif kind == "openai.files.content":
            with fake._lock:
                data = fake._file_bytes.get(params["id"])
            if data is None:
                self._json(entry, 404, _openai_error(404, f"No such File object: {params['id']}"))
            else:
                self._send(entry, 200, data, "application/octet-stream")
        elif kind == "openai.batches.create":
            self._json(entry, *fake.create_openai_batch(body or {}))
        elif kind == "openai.batches.retrieve":
            self._json(entry, *fake.retrieve_openai_batch(params["id"]))
        elif kind == "openai.batches.cancel":
            self._json(entry, *fake.cancel_openai_batch(params["id"]))
        elif kind == "anthropic.batches.create":
            self._json(entry, *fake.create_anthropic_batch(body or {}))
        elif kind == "anthropic.batches.retrieve":
            self._json(entry, *fake.retrieve_anthropic_batch(params["id"]))
        elif kind == "anthropic.batches.cancel":
            self._json(entry, *fake.cancel_anthropic_batch(params["id"]))
        elif kind == "anthropic.batches.results":
            with fake._lock:
                data = fake._anthropic_results.get(params["id"])
            if data is None:
                self._json(entry, 404, _anthropic_error(404, "results are not ready"))
            else:
                self._send(entry, 200, data, "application/x-jsonl")

    def _control(self, entry: LoggedRequest, body: dict[str, Any] | None) -> None:
        fake = self.fake
        if entry.path == "/_fake/log":
            self._json(entry, 200, {"requests": [asdict(r) for r in fake.requests()]})
            return
        if entry.path == "/_fake/reset":
            fake.reset()
            self._json(entry, 200, {"ok": True})
            return
        config = body or {}
        if "latency_s" in config:
            fake.latency_s = float(config["latency_s"])
        if "api_keys" in config:
            keys = config["api_keys"]
            fake.api_keys = None if keys is None else set(keys)
        if "batch_polls_before_done" in config:
            fake.batch_polls_before_done = int(config["batch_polls_before_done"])
        for failure in config.get("fail_next") or []:
            fake.fail_next(
                int(failure["status"]),
                int(failure.get("count", 1)),
                retry_after=failure.get("retry_after"),
                retry_after_ms=failure.get("retry_after_ms"),
            )
        if config.get("malformed_next"):
            fake.malformed_next(int(config["malformed_next"]))
        if "responder" in config:
            fake.responder = responder_by_name(str(config["responder"]))
        self._json(entry, 200, {"ok": True})

    # -- responses ----------------------------------------------------------------------------

    def _json(
        self,
        entry: LoggedRequest,
        status: int,
        payload: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> None:
        self._send(entry, status, json.dumps(payload).encode(), "application/json", headers)

    def _send(
        self,
        entry: LoggedRequest,
        status: int,
        data: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        entry.status = status
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        # end_headers() would flush the headers on their own; send headers and body together.
        self._headers_buffer.append(b"\r\n" + data)  # type: ignore[attr-defined]
        self.flush_headers()


def _multipart(content_type: str, raw: bytes) -> dict[str, tuple[str, bytes]]:
    """Parse a multipart/form-data body into {field: (filename, bytes)}."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw
    )
    fields: dict[str, tuple[str, bytes]] = {}
    for part in message.iter_parts():  # type: ignore[attr-defined]
        name = part.get_param("name", header="content-disposition")
        filename = part.get_filename() or ""
        payload = part.get_payload(decode=True) or b""
        if name:
            fields[str(name)] = (filename, payload)
    return fields


# ----------------------------------------------------------------------------------------------
# Command line: run as its own process


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per generation call")
    parser.add_argument(
        "--responder",
        default="first_label",
        help="echo | first_label | constant:TEXT | package.module:function",
    )
    parser.add_argument("--api-key", action="append", help="accept only these keys (repeatable)")
    parser.add_argument(
        "--exit-with-stdin",
        action="store_true",
        help="stop when standard input closes (the parent process ended, even if it was killed)",
    )
    args = parser.parse_args(argv)
    server = FakeProviderServer(
        responder_by_name(args.responder),
        latency_s=args.latency,
        api_keys=set(args.api_key) if args.api_key else None,
        port=args.port,
    ).start()
    print(f"READY {server.url}", flush=True)
    try:
        if args.exit_with_stdin:
            sys.stdin.read()
            return
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
