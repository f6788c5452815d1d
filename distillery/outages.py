"""When a service behind the web process is down, say which one, with a 503, instead of a 500
traceback: the health check names the failing part, and pages that hit a locked SQLite file or
an unreachable broker answer "try again" with the reason."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.loader import render_to_string

BROKER_TIMEOUT_S = 3.0


def broker_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean the Celery broker (Redis) cannot be reached."""
    from kombu.exceptions import OperationalError as KombuOperationalError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return (KombuOperationalError, RedisConnectionError, RedisTimeoutError)


def check_database() -> str:
    with connection.cursor() as cursor:
        if connection.vendor == "sqlite":
            # A read works on a locked file; taking the write lock shows whether pages can write.
            cursor.execute("BEGIN IMMEDIATE")
            cursor.execute("ROLLBACK")
        else:
            cursor.execute("SELECT 1")
    return "ok"


def check_broker() -> str:
    from distillery.celery import app

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=BROKER_TIMEOUT_S)
    return "ok"


def healthz(request: HttpRequest) -> JsonResponse:
    """200 when the database answers a query (and takes a write lock) and the broker accepts a
    connection; 503 naming what failed otherwise."""
    parts: dict[str, str] = {}
    for name, check in (("database", check_database), ("broker", check_broker)):
        try:
            parts[name] = check()
        except Exception as exc:
            parts[name] = f"failed: {exc.__class__.__name__}: {str(exc)[:200]}"
    ok = all(v == "ok" for v in parts.values())
    return JsonResponse({"ok": ok, **parts}, status=200 if ok else 503)


def outage_message(exc: BaseException) -> str | None:
    if isinstance(exc, DatabaseError) and "locked" in str(exc).lower():
        return (
            "The database is busy (another process holds the lock on the SQLite file). "
            "Nothing was changed; try again in a moment."
        )
    if isinstance(exc, broker_errors()):
        return (
            "The job queue (the Celery broker) cannot be reached, so no job could be sent. "
            "Nothing was started; try again when the broker is back."
        )
    return None


class OutageMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        message = outage_message(exception)
        if message is None:
            return None
        context: dict[str, Any] = {"message": message, "debug": settings.DEBUG}
        response = HttpResponse(render_to_string("503.html", context, request=request), status=503)
        response["Retry-After"] = "5"
        return response
