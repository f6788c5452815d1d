"""Distillery's OpenAI-compatible endpoint: ``POST /v1/chat/completions`` and ``GET /v1/models``.

A process of its own (``manage.py serve``), independent of Celery, so a stuck job cannot stall
it. The official ``openai`` SDK works unchanged with ``base_url=http://host:port/v1`` and a team
API token with the ``serve`` scope as the API key. The model name is the served student's slug.

Errors use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: a missing,
unknown or revoked token → 401; a model that is unknown, stopped or another team's → 404 (the
same answer, so a token learns nothing about other teams); a prompt over the context → 400
naming the limit; over capacity → 503 with ``Retry-After`` after a bounded wait for a slot.

Label answers asked with ``logprobs: true`` carry ``"distillery": {"confidence": p}`` at the
top level of the response (the SDK keeps it in ``model_extra``) — the probability the student
gives its answer, P(label, then end of turn) — and the same as one ``logprobs.content`` entry for
the whole label. Without it the label is answered as soon as it is decided, which is faster (the
label's remaining tokens are not generated).
"""

from __future__ import annotations

import json
import logging
import math
import select
import socket
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from django.db import close_old_connections, connection
from django.utils import timezone

from serving.engine_pool import (
    EnginePool,
    RequestLog,
    Students,
    Work,
    answer_logprobs,
    answer_payload,
    stream_deltas,
)
from serving.models import ServedModel, ServingRequest
from serving.selectors import active_models_for_team, served_model_for_token
from worker.serving_backends import engine_workers
from worker.serving_engine import ServeError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1_000_000


def error_body(
    message: str, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# While a request waits for a slot or for the engine, this often it checks that its client is
# still there.
GONE_POLL_S = 0.05


class ClientGone(Exception):
    """The client closed the connection while we were answering."""


class ServingServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], *, engine: str, capacity: int, queue_wait_s: float
    ) -> None:
        super().__init__(address, Handler)
        self.students = Students(engine)
        self.pool = EnginePool(
            capacity=capacity, queue_wait_s=queue_wait_s, workers=engine_workers(engine)
        )
        self.request_log = RequestLog()
        self.retry_after_s = max(1, math.ceil(queue_wait_s))

    def server_close(self) -> None:
        super().server_close()
        self.pool.close()
        self.request_log.close()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY: the headers and the body go out as two writes; with Nagle's algorithm the
    # body waited for the client's delayed ACK of the headers — ~40 ms on every kept-alive
    # request (measured: p50 132 ms through the SDK for an 80 ms answer).
    disable_nagle_algorithm = True
    server: ServingServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("serving: " + format, *args)

    def handle(self) -> None:
        try:
            super().handle()
        except (ClientGone, ConnectionError):
            self.close_connection = True  # the client left (a timeout on its side): not an error
        finally:
            connection.close()  # each connection thread had its own database connection

    # -- plumbing ----------------------------------------------------------------------------

    def _send_json(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        try:
            self.end_headers()
            self.wfile.write(data)
        except ConnectionError as exc:  # broken pipe, reset: the client gave up waiting
            raise ClientGone from exc

    def _send_error(self, exc: ServeError, headers: dict[str, str] | None = None) -> None:
        self._send_json(exc.status, error_body(exc.message, exc.type, exc.param, exc.code), headers)

    def _chunk(self, data: bytes) -> None:
        try:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError) as exc:
            raise ClientGone from exc

    def _event(self, payload: dict[str, Any] | str) -> None:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        self._chunk(f"data: {text}\n\n".encode())

    def _token(self) -> Any:
        from teams.api_tokens import api_token_authenticate

        header = self.headers.get("Authorization", "")
        raw = header[7:].strip() if header.lower().startswith("bearer ") else ""
        auth = api_token_authenticate(raw) if raw else None
        if auth is None:
            raise ServeError(
                "Incorrect or missing API key: send a Distillery team API token as "
                "'Authorization: Bearer dst_...'",
                status=401,
                code="invalid_api_key",
            )
        if not auth.can("serve"):
            raise ServeError(
                "this token may not call served students: it needs the 'serve' scope and a "
                "creator who may write in the team",
                status=403,
                type="permission_error",
                code="insufficient_scope",
            )
        return auth

    # -- routes ------------------------------------------------------------------------------

    def do_GET(self) -> None:
        close_old_connections()
        path = self.path.split("?")[0].rstrip("/")
        if path == "/healthz":
            self._send_json(200, {"ok": True})
            return
        try:
            auth = self._token()
            models = list(active_models_for_team(team_id=auth.team.pk))
            if path == "/v1/models":
                self._send_json(200, {"object": "list", "data": [self._model(m) for m in models]})
                return
            if path.startswith("/v1/models/"):
                slug = path[len("/v1/models/") :]
                found = next((m for m in models if m.slug == slug), None)
                if found is None:
                    raise self._unknown(slug)
                self._send_json(200, self._model(found))
                return
            raise ServeError(f"no route GET {path}", status=404, code="unknown_url")
        except ServeError as exc:
            self._send_error(exc)

    @staticmethod
    def _model(m: ServedModel) -> dict[str, Any]:
        return {
            "id": m.slug,
            "object": "model",
            "created": int(m.served_at.timestamp()),
            "owned_by": "distillery",
        }

    @staticmethod
    def _unknown(slug: str) -> ServeError:
        return ServeError(
            f"The model `{slug}` does not exist or you do not have access to it.",
            status=404,
            param="model",
            code="model_not_found",
        )

    def do_POST(self) -> None:
        close_old_connections()
        started = time.perf_counter()
        path = self.path.split("?")[0].rstrip("/")
        try:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                raise ServeError(f"the request body is over {MAX_BODY_BYTES} bytes", status=413)
            raw = self.rfile.read(length)
            if path != "/v1/chat/completions":
                raise ServeError(f"no route POST {path}", status=404, code="unknown_url")
            auth = self._token()
            try:
                body = json.loads(raw or b"{}")
            except ValueError as exc:
                raise ServeError(f"the body is not valid JSON: {exc}") from exc
            if not isinstance(body, dict):
                raise ServeError("the body must be a JSON object")
            slug = body.get("model")
            if not isinstance(slug, str) or not slug:
                raise ServeError("you must name a model", param="model")
            served = served_model_for_token(team_id=auth.team.pk, slug=slug)
            if served is None:
                raise self._unknown(slug)
        except ServeError as exc:
            self._send_error(exc)
            return
        self._complete(served, body, auth.token.pk, started)

    # -- chat completions --------------------------------------------------------------------

    def _complete(
        self, served: ServedModel, body: dict[str, Any], token_id: int, started: float
    ) -> None:
        entry = ServingRequest(
            served_model=served,
            token_id=token_id,
            stream=bool(body.get("stream")),
            status=200,
            created_at=timezone.now(),
        )
        work: Work | None = None
        admitted = False
        try:
            if body.get("n") not in (None, 1):
                raise ServeError("only n=1 is supported", param="n")
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise ServeError("messages must be a non-empty list", param="messages")
            if served.log_inputs:
                entry.input_text = json.dumps(messages, ensure_ascii=False)[:20000]
            student = self.server.students.get(served)
            entry.engine = student.backend.name
            want_logprobs = body.get("logprobs")
            if want_logprobs is not None and not isinstance(want_logprobs, bool):
                raise ServeError("logprobs must be true or false", param="logprobs")
            asked = body.get("max_completion_tokens", body.get("max_tokens"))
            if asked is not None and not isinstance(asked, int):
                raise ServeError("max_tokens must be an integer", param="max_tokens")
            max_tokens = student.max_tokens(asked)
            prompt = student.encode(messages, max_tokens)
            entry.prompt_tokens = len(prompt)
            # Nothing below reads the database (the log has its own thread): a thread waiting
            # for a slot or the engine holds no connection, so slow answers under many clients
            # cannot exhaust the server's connections (one per waiting request before).
            if connection.connection is not None:
                connection.close()
            if not self._admitted():
                raise ServeError(
                    f"the server is at capacity ({self.server.pool.capacity} requests at once) "
                    "and no slot came free in time; retry after the Retry-After seconds",
                    status=503,
                    type="server_error",
                    code="overloaded",
                )
            admitted = True
            work = self.server.pool.submit(
                Work(
                    student=student,
                    prompt=prompt,
                    max_tokens=max_tokens,
                    stream=entry.stream,
                    confidence=bool(want_logprobs),
                )
            )
            if entry.stream:
                self._stream(served, body, work, entry)
            else:
                self._whole(served, work, entry)
        except ServeError as exc:
            entry.status, entry.error_code = exc.status, exc.code or exc.type
            headers = {"Retry-After": str(self.server.retry_after_s)} if exc.status == 503 else None
            try:
                self._send_error(exc, headers)
            except (ClientGone, OSError):
                entry.status = 499
        except ClientGone:
            entry.status, entry.error_code = 499, "client_closed"
            if work is not None:
                work.cancelled.set()
        finally:
            if work is not None:
                work.done.wait()  # the engine is done with it before the slot is given back
                entry.queue_ms = max(0.0, (work.started_at - work.queued_at) * 1000)
            if admitted:
                self.server.pool.release()
            entry.latency_ms = (time.perf_counter() - started) * 1000
            self.server.request_log.add(entry)
        if entry.status == 499:
            self.close_connection = True

    def _client_gone(self) -> bool:
        """The client closed its side (it gave up waiting): its socket reads end-of-file."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _admitted(self) -> bool:
        """A slot within the queue wait; ClientGone as soon as the client stops waiting (its
        request is never run: a client that timed out must not cost the engine anything)."""
        pool = self.server.pool
        deadline = time.monotonic() + pool.queue_wait_s
        while not pool.admit(timeout=min(GONE_POLL_S, max(0.0, deadline - time.monotonic()))):
            if self._client_gone():
                raise ClientGone
            if time.monotonic() >= deadline:
                return False
        return True

    def _result(self, work: Work) -> Any:
        while not work.done.wait(GONE_POLL_S):
            if self._client_gone():  # the engine skips it if it has not started it yet
                work.cancelled.set()
                raise ClientGone
        if isinstance(work.error, ServeError):
            raise work.error
        if work.error is not None:
            raise ServeError(f"the engine failed: {work.error}", status=500, type="server_error")
        return work.answer

    def _whole(self, served: ServedModel, work: Work, entry: ServingRequest) -> None:
        answer = self._result(work)
        entry.completion_tokens = answer.completion_tokens
        entry.confidence = answer.confidence
        if served.log_inputs:
            entry.output_text = answer.text
        body: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": served.slug,
            "system_fingerprint": entry.engine,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer.text, "refusal": None},
                    "logprobs": answer_logprobs(answer),
                    "finish_reason": answer.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": answer.prompt_tokens,
                "completion_tokens": answer.completion_tokens,
                "total_tokens": answer.prompt_tokens + answer.completion_tokens,
            },
        }
        extra = answer_payload(answer)
        if extra:
            body["distillery"] = extra
        self._send_json(200, body)

    def _stream(
        self, served: ServedModel, body: dict[str, Any], work: Work, entry: ServingRequest
    ) -> None:
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": served.slug,
            "system_fingerprint": entry.engine,
        }

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
            return {
                **base,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
                **extra,
            }

        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._event(chunk({"role": "assistant", "content": ""}))
        text, finish, extra = "", "stop", {}
        if work.student.task.output_kind == "text":
            for delta in stream_deltas(work):
                text += delta
                self._event(chunk({"content": delta}))
            self._result(work)
            completion = len(work.student.tokenizer(text, add_special_tokens=False)["input_ids"])
            finish = "length" if completion >= work.max_tokens else "stop"
            entry.completion_tokens = completion
        else:
            answer = self._result(work)
            text, finish = answer.text, answer.finish_reason
            entry.completion_tokens, entry.confidence = answer.completion_tokens, answer.confidence
            extra = answer_payload(answer)
            self._event(chunk({"content": text}))
        final = chunk({}, finish, **({"distillery": extra} if extra else {}))
        self._event(final)
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {
                "prompt_tokens": entry.prompt_tokens,
                "completion_tokens": entry.completion_tokens,
                "total_tokens": entry.prompt_tokens + entry.completion_tokens,
            }
            self._event({**base, "choices": [], "usage": usage})
        self._event("[DONE]")
        self._chunk(b"")
        if served.log_inputs:
            entry.output_text = text


def serve_forever(*, host: str, port: int, engine: str, capacity: int, queue_wait_s: float) -> None:
    server = ServingServer(
        (host, port), engine=engine, capacity=capacity, queue_wait_s=queue_wait_s
    )
    host, port = str(server.server_address[0]), int(server.server_address[1])
    # The line tests and the benchmark wait for (the port may have been 0: any free one).
    print(f"serving: listening on http://{host}:{port}/v1 (engine {engine})", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        print("serving: stopped", flush=True)


__all__ = ["HTTPStatus", "ServingServer", "serve_forever"]
