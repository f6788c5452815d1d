"""The fake provider's data: what a responder sees and answers, the request log, and the small
helpers (token counts, ids, timestamps) the wire formats share."""

from __future__ import annotations

import itertools
import json
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
                return content_text(message.get("content"))
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
    # Extra top-level fields of an OpenAI answer (e.g. a served student's "distillery").
    extra_body: dict[str, Any] | None = None


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
class Failure:
    status: int
    retry_after: str | None = None
    retry_after_ms: str | None = None
    message: str = ""


def content_text(content: Any) -> str:
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
    chars = sum(len(content_text(m.get("content"))) for m in messages)
    return 3 + 4 * len(messages) + math.ceil(chars / 4)


def default_output_tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / 4))


class IdCounter:
    def __init__(self) -> None:
        self._next = itertools.count(1)
        self._lock = threading.Lock()

    def __call__(self, prefix: str) -> str:
        with self._lock:
            return f"{prefix}{next(self._next):06d}"


def fmt_number(value: float | str) -> str:
    if isinstance(value, str):
        return value
    return str(int(value)) if float(value).is_integer() else str(value)


def iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def jsonl(rows: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(row).encode() + b"\n" for row in rows)
