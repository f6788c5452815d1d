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
import sys
import threading
import time
from http.server import ThreadingHTTPServer

from tests.fakes.batches import AnthropicBatches, OpenAIBatches
from tests.fakes.http_handler import ProviderHandler
from tests.fakes.provider_types import (
    GENERATION_KINDS,
    FakeAnswer,
    FakeRequest,
    LoggedRequest,
    Responder,
    default_input_tokens,
    default_output_tokens,
    fake_tokens,
)
from tests.fakes.responders import echo_responder, first_label_responder, responder_by_name

__all__ = [
    "GENERATION_KINDS",
    "FakeAnswer",
    "FakeProviderServer",
    "FakeRequest",
    "LoggedRequest",
    "Responder",
    "default_input_tokens",
    "default_output_tokens",
    "echo_responder",
    "fake_tokens",
    "first_label_responder",
    "main",
    "responder_by_name",
]


class FakeProviderServer(OpenAIBatches, AnthropicBatches):
    """Start with ``start()`` (or ``with``); ``url`` is ``http://127.0.0.1:<ephemeral port>``.

    Its parts: state, knobs and log (``server_core``), the OpenAI and Anthropic wire formats
    (``openai_wire``, ``anthropic_wire``), batches (``batches``) and HTTP (``http_handler``)."""

    def start(self) -> FakeProviderServer:
        server = self

        class Handler(ProviderHandler):
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
    main()
