"""Calling the served student over the serving process's OpenAI-compatible endpoint
(serving.server, ``POST /v1/chat/completions``), with the caller's own API token (the ``serve``
scope lets it call the team's served students) and a bounded timeout. Over HTTP on purpose: the
gateway answers whether or not the serving process runs, and a stuck student cannot stall it."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
from django.conf import settings


class StudentUnavailable(Exception):
    """The student did not answer: ``reason`` is "student_timeout" or "student_down"."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason


@dataclass
class StudentAnswer:
    raw_text: str
    confidence: float | None
    ms: float


_CLIENT: httpx.Client | None = None
_CLIENT_LOCK = threading.Lock()


def _client() -> httpx.Client:
    global _CLIENT
    with _CLIENT_LOCK:
        if _CLIENT is None:
            _CLIENT = httpx.Client(
                limits=httpx.Limits(max_connections=64, max_keepalive_connections=32)
            )
        return _CLIENT


def student_url() -> str:
    url = str(settings.GATEWAY_STUDENT_URL).rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def student_answer(
    *, model: str, messages: list[dict[str, str]], token: str, timeout_s: float, max_tokens: int
) -> StudentAnswer:
    """The student's answer and, for label tasks, its confidence (the serving process's
    ``distillery.confidence``). Raises StudentUnavailable."""
    started = time.perf_counter()
    # logprobs: label answers come with their confidence (cascade decides on it; shadow and
    # sampled traffic build the confidence/agreement curve from it).
    body = {
        "model": model,
        "messages": messages,
        "temperature": 0,
        "max_tokens": max_tokens,
        "logprobs": True,
    }
    try:
        reply = _client().post(
            student_url() + "/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout_s,
        )
    except httpx.TimeoutException as exc:
        raise StudentUnavailable(
            f"the student gave no answer within {timeout_s * 1000:.0f} ms", reason="student_timeout"
        ) from exc
    except httpx.HTTPError as exc:
        raise StudentUnavailable(
            f"the serving process is unreachable ({type(exc).__name__})", reason="student_down"
        ) from exc
    if reply.status_code != 200:
        raise StudentUnavailable(
            f"the serving process answered {reply.status_code}: {_error_of(reply)}",
            reason="student_down",
        )
    try:
        data = reply.json()
        text = str(data["choices"][0]["message"]["content"] or "")
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise StudentUnavailable(
            "the serving process sent a malformed answer", reason="student_down"
        ) from exc
    extra = data.get("distillery") if isinstance(data, dict) else None
    confidence = extra.get("confidence") if isinstance(extra, dict) else None
    return StudentAnswer(
        text,
        float(confidence) if isinstance(confidence, int | float) else None,
        (time.perf_counter() - started) * 1000,
    )


def _error_of(reply: httpx.Response) -> str:
    try:
        error: Any = reply.json().get("error", {})
        return str(error.get("message") or reply.text[:200])
    except (ValueError, AttributeError):
        return reply.text[:200]
