"""Rate limits and idempotency keys for /api/v1/, around every route at once.

Both key on the SHA-256 of the bearer token (what teams.api_tokens stores), so they work before
the route authenticates and never keep a token in the clear. A request with no bearer token is
left to the route, which answers 401.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.http import HttpRequest, HttpResponse

from teams.api_kit import error_response
from teams.api_tokens import token_hash
from teams.models import IdempotentRequest

API_PREFIX = "/api/"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_KEY_LENGTH = 255


def _bearer(request: HttpRequest) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


class ApiRateLimitMiddleware:
    """At most API_RATE_LIMIT_PER_MINUTE requests per token per clock minute; beyond that 429
    with Retry-After (the seconds to the next minute). Counted in the shared cache (Redis in
    production), so every web process shares one count."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        raw = _bearer(request) if request.path.startswith(API_PREFIX) else None
        limit = settings.API_RATE_LIMIT_PER_MINUTE
        if raw is None or limit <= 0:
            return self.get_response(request)
        now = time.time()
        window = int(now // 60)
        key = f"api-rate:{token_hash(raw)}:{window}"
        cache.add(key, 0, timeout=120)
        try:
            count = cache.incr(key)
        except ValueError:  # expired between add and incr
            cache.set(key, 1, timeout=120)
            count = 1
        if count > limit:
            retry_after = max(1, int(60 - now % 60) + 1)
            return error_response(
                429,
                f"rate limit: at most {limit} requests a minute per token; "
                f"retry in {retry_after} s",
                headers={"Retry-After": str(retry_after)},
            )
        return self.get_response(request)


def _request_fingerprint(request: HttpRequest) -> str:
    digest = hashlib.sha256(f"{request.method} {request.get_full_path()}\n".encode())
    if request.content_type == "multipart/form-data":
        # Reading a multipart body here would hold the whole upload in memory: its size and
        # path stand in for it (a retry sends the same file).
        digest.update(request.META.get("CONTENT_LENGTH", "").encode())
    else:
        digest.update(request.body)
    return digest.hexdigest()


class ApiIdempotencyMiddleware:
    """A write sent with ``Idempotency-Key`` is answered once: a retry with the same key and the
    same request gets the first (successful) response again, marked ``Idempotent-Replayed:
    true``, and starts nothing. The same key with a different request is 422; a retry while the
    first is still running is 409. A failed first attempt frees its key, so it can be retried."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        key = request.headers.get("Idempotency-Key", "").strip()
        raw = _bearer(request)
        if (
            not key
            or raw is None
            or request.method not in WRITE_METHODS
            or not request.path.startswith(API_PREFIX)
        ):
            return self.get_response(request)
        if len(key) > MAX_KEY_LENGTH:
            return error_response(
                400,
                f"Idempotency-Key is {len(key)} characters; at most {MAX_KEY_LENGTH}",
                [{"field": "Idempotency-Key", "message": "too long"}],
            )
        fingerprint = _request_fingerprint(request)
        hashed = token_hash(raw)
        try:
            with transaction.atomic():
                record = IdempotentRequest.objects.create(
                    token_hash=hashed,
                    key=key,
                    method=request.method or "",
                    path=request.path[:500],
                    request_hash=fingerprint,
                )
        except IntegrityError:
            return self._replay(hashed, key, fingerprint)
        try:
            response = self.get_response(request)
        except BaseException:
            IdempotentRequest.objects.filter(pk=record.pk).delete()
            raise
        if 200 <= response.status_code < 300 and not response.streaming:
            IdempotentRequest.objects.filter(pk=record.pk).update(
                status_code=response.status_code,
                content_type=response.get("Content-Type", "application/json"),
                body=response.content,
            )
        else:
            IdempotentRequest.objects.filter(pk=record.pk).delete()
        return response

    @staticmethod
    def _replay(hashed: str, key: str, fingerprint: str) -> HttpResponse:
        first = IdempotentRequest.objects.filter(token_hash=hashed, key=key).first()
        if first is None:  # the first attempt failed and freed the key just now
            return error_response(
                409,
                "a request with this Idempotency-Key just failed; retry it",
                headers={"Retry-After": "1"},
            )
        if first.request_hash != fingerprint:
            return error_response(
                422,
                "this Idempotency-Key was already used for a different request",
                [{"field": "Idempotency-Key", "message": "reused with another request"}],
            )
        if first.status_code is None:
            return error_response(
                409,
                "the first request with this Idempotency-Key is still being answered",
                headers={"Retry-After": "1"},
            )
        response = HttpResponse(
            bytes(first.body), status=first.status_code, content_type=first.content_type
        )
        response["Idempotent-Replayed"] = "true"
        return response
