"""Turning a provider SDK's failures into TeacherErrors, for every SDK-based provider.

The ``openai`` and ``anthropic`` SDKs are generated from the same template and raise the same
family of exceptions (``APITimeoutError`` < ``APIConnectionError``, ``APIStatusError`` with the
response, ``APIResponseValidationError``), so one translation serves both: the provider passes
its SDK module. A status code becomes an error with a message a user can act on
(``error_from_status``); ``Retry-After`` travels as ``retry_after_s``.
"""

from __future__ import annotations

import email.utils
import time
from types import ModuleType
from typing import Any

from worker.teachers.base import (
    ProviderConfig,
    TeacherAuthError,
    TeacherBadRequestError,
    TeacherConnectionError,
    TeacherError,
    TeacherMalformedResponseError,
    TeacherNotFoundError,
    TeacherRateLimitError,
    TeacherServerError,
    TeacherTimeoutError,
)


def retry_after_seconds(headers: Any) -> float | None:
    """Read ``retry-after-ms`` (OpenAI) or ``retry-after`` (seconds or an HTTP date)."""
    if headers is None:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(0.0, float(ms) / 1000.0)
    except (TypeError, ValueError):
        pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        pass
    try:
        when = email.utils.parsedate_to_datetime(str(value))
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_from_status(
    status: int,
    detail: str,
    *,
    config: ProviderConfig,
    model: str,
    headers: Any = None,
    request_id: str = "",
) -> TeacherError:
    """The TeacherError for an HTTP status, with a message a user can act on."""
    detail = " ".join(str(detail).split())
    if len(detail) > 300:
        detail = detail[:297] + "..."
    suffix = f" (HTTP {status}: {detail})" if detail else f" (HTTP {status})"
    kwargs: dict[str, Any] = {"status_code": status, "provider_request_id": request_id}
    if status == 401:
        return TeacherAuthError(f"invalid API key for {config.label}{suffix}", **kwargs)
    if status == 403:
        return TeacherAuthError(
            f"the API key for {config.label} is not allowed to do this{suffix}", **kwargs
        )
    if status == 404:
        return TeacherNotFoundError(
            f"model {model!r} or its endpoint was not found for {config.label}{suffix}", **kwargs
        )
    if status == 429:
        return TeacherRateLimitError(
            f"rate limited by the provider for {config.label}{suffix}",
            retry_after_s=retry_after_seconds(headers),
            **kwargs,
        )
    if status == 408 or status >= 500:
        return TeacherServerError(
            f"the provider failed for {config.label}{suffix}",
            retry_after_s=retry_after_seconds(headers),
            **kwargs,
        )
    return TeacherBadRequestError(f"the provider refused the request{suffix}", **kwargs)


def _detail(exc: Any) -> str:
    """The provider's own error message: ``{"error": {"message": ...}}`` in both wire formats."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return str(getattr(exc, "message", "") or exc)


def _teacher_error_inside(exc: BaseException) -> TeacherError | None:
    """A TeacherError raised inside the HTTP client (the egress guard) reaches us wrapped in the
    SDK's ``APIConnectionError``; it is the real reason, so it wins."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, TeacherError):
            return current
        seen.add(id(current))
        current = current.__cause__
    return None


def translate_error(
    exc: BaseException, *, sdk: ModuleType, config: ProviderConfig, model: str
) -> TeacherError:
    """An exception of ``sdk`` (the ``openai`` or ``anthropic`` module) as a TeacherError,
    retryable or not, with a clear message naming the credential."""
    inside = _teacher_error_inside(exc)
    if inside is not None:
        return inside
    if isinstance(exc, sdk.APITimeoutError):
        return TeacherTimeoutError(
            f"the request to {config.label} timed out after {config.request_timeout_s:g} s"
        )
    if isinstance(exc, sdk.APIConnectionError):
        return TeacherConnectionError(f"could not connect to {config.label}: {exc}")
    if isinstance(exc, sdk.APIStatusError):
        return error_from_status(
            exc.status_code,
            _detail(exc),
            config=config,
            model=model,
            headers=exc.response.headers,
            request_id=str(getattr(exc, "request_id", "") or ""),
        )
    if isinstance(exc, sdk.APIResponseValidationError | ValueError):
        return TeacherMalformedResponseError(
            f"{config.label} answered with a body that is not a valid response: {exc}"
        )
    return TeacherError(f"{config.label}: {type(exc).__name__}: {exc}")
