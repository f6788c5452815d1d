"""The fake provider's state: knobs (latency, faults, API keys, redirects), the request log,
and the responder every generation call goes through. The wire formats, batches and HTTP
lifecycle build on it."""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer
from typing import Any

from tests.fakes.provider_types import (
    GENERATION_KINDS,
    Failure,
    FakeAnswer,
    FakeRequest,
    IdCounter,
    LoggedRequest,
    Responder,
    fmt_number,
)
from tests.fakes.responders import first_label_responder


class FakeServerCore:
    """State shared by every part of the fake; :class:`FakeProviderServer` is the whole."""

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
        self._failures: list[Failure] = []
        self._malformed = 0
        self._ids = IdCounter()
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
        failure = Failure(
            status=status,
            retry_after=None if retry_after is None else fmt_number(retry_after),
            retry_after_ms=None if retry_after_ms is None else fmt_number(retry_after_ms),
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

    def _take_fault(self) -> Failure | str | None:
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
