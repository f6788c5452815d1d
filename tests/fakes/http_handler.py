"""HTTP plumbing of the fake provider: the route table, the request handler (dispatch, auth,
faults, control endpoints) and multipart parsing."""

from __future__ import annotations

import email.parser
import email.policy
import json
import re
import socket
import time
from collections.abc import Callable
from dataclasses import asdict
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tests.fakes.anthropic_wire import anthropic_error
from tests.fakes.openai_wire import openai_error
from tests.fakes.provider_types import GENERATION_KINDS, Failure, LoggedRequest
from tests.fakes.responders import responder_by_name

if TYPE_CHECKING:
    from tests.fakes.provider_server import FakeProviderServer


def phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:  # 529 "Overloaded" is Anthropic's own
        return "Overloaded" if status == 529 else f"HTTP {status}"


ROUTES: list[tuple[str, re.Pattern[str], str]] = [
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


class ProviderHandler(BaseHTTPRequestHandler):
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
        for route_method, pattern, route_kind in ROUTES:
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
        error = anthropic_error if anthropic else openai_error
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
        if isinstance(fault, Failure):
            headers = {}
            if fault.retry_after is not None:
                headers["retry-after"] = fault.retry_after
            if fault.retry_after_ms is not None:
                headers["retry-after-ms"] = fault.retry_after_ms
            message = fault.message or phrase(fault.status)
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
            fields = multipart(self.headers.get("content-type") or "", raw)
            filename, data = fields.get("file", ("upload.jsonl", b""))
            purpose = fields.get("purpose", ("", b""))[1].decode()
            self._json(entry, 200, fake.create_file(filename, purpose, data))
        elif kind == "openai.files.retrieve":
            with fake._lock:
                obj = fake._files.get(params["id"])
            if obj is None:
                self._json(entry, 404, openai_error(404, f"No such File object: {params['id']}"))
            else:
                self._json(entry, 200, obj)
        elif kind == "openai.files.content":
            with fake._lock:
                content = fake._file_bytes.get(params["id"])
            if content is None:
                self._json(entry, 404, openai_error(404, f"No such File object: {params['id']}"))
            else:
                self._send(entry, 200, content, "application/octet-stream")
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
                results = fake._anthropic_results.get(params["id"])
            if results is None:
                self._json(entry, 404, anthropic_error(404, "results are not ready"))
            else:
                self._send(entry, 200, results, "application/x-jsonl")

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


def multipart(content_type: str, raw: bytes) -> dict[str, tuple[str, bytes]]:
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
