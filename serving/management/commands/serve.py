"""``manage.py serve``: the OpenAI-compatible endpoint for served students (see serving.server)."""

from __future__ import annotations

import os
import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from worker.serving_llama import DEFAULT_GGUF_TYPE, GGUF_TYPES, gguf_type


class Command(BaseCommand):
    help = "Serve the team's served students at /v1/chat/completions (OpenAI wire format)."

    def add_arguments(self, parser: Any) -> None:
        env = os.environ.get
        parser.add_argument("--host", default=env("DISTILLERY_SERVE_HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(env("DISTILLERY_SERVE_PORT", "8001")))
        parser.add_argument(
            "--engine",
            default=env("DISTILLERY_SERVE_ENGINE", "auto"),
            choices=["auto", "onnx", "llama", "ct2", "transformers", "vllm"],
            help="auto: vLLM on a CUDA machine where installed, else ONNX Runtime int8 "
            "(Llama-architecture students), else llama.cpp Q8_0, else CTranslate2 int8, else "
            "transformers; a student an engine cannot take goes to the next",
        )
        parser.add_argument(
            "--gguf",
            type=str.upper,
            default=env("DISTILLERY_SERVE_GGUF") or DEFAULT_GGUF_TYPE,
            choices=GGUF_TYPES,
            help="llama.cpp: the format the student is converted to (Q8_0 stays closest to the "
            "evaluated student; measure another with bench/serve_latency.py --engine llama "
            "--gguf)",
        )
        parser.add_argument(
            "--capacity",
            type=int,
            default=int(env("DISTILLERY_SERVE_CAPACITY", "64")),
            help="requests answered or queued at once; more wait for a slot",
        )
        parser.add_argument(
            "--queue-wait",
            type=float,
            default=float(env("DISTILLERY_SERVE_QUEUE_WAIT", "10")),
            help="seconds a request waits for a slot before a 503 with Retry-After",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from serving.server import serve_forever

        try:  # the environment's value is checked here too, not at the first request
            os.environ["DISTILLERY_SERVE_GGUF"] = gguf_type(options["gguf"])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        # SIGTERM (docker stop, a test's terminate) stops like Ctrl-C: the log is flushed.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        serve_forever(
            host=options["host"],
            port=options["port"],
            engine=options["engine"],
            capacity=options["capacity"],
            queue_wait_s=options["queue_wait"],
        )
