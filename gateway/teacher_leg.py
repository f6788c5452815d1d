"""Calling the teacher from a web request: the engine every teacher call takes
(worker.teacher_runner.run, as teachers.calls uses it), on ONE event loop thread per process with
one provider client per credential kept open.

Why not ``teachers.calls.teacher_calls_run`` itself: it opens a fresh event loop and a fresh SDK
client for every call (right for a Celery task that makes thousands of calls, milliseconds too
many for one production request). The engine, the retries, the prices and the cache keys are the
same; the team's response cache is read here before the call (in the request's thread, which owns
the database connection) and written behind the answer (gateway.recorder).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from teachers.models import CachedResponse
from worker.pricing import ModelPrice
from worker.teacher_cache import cache_key
from worker.teacher_runner import RetryPolicy, run
from worker.teachers.base import ProviderConfig, TeacherRequest, TeacherResponse


class TeacherUnavailable(Exception):
    """The teacher gave no answer within the caller's deadline (after retries), or refused."""

    def __init__(self, message: str, *, status: int = 502) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.field = "teacher"


@dataclass
class TeacherAnswer:
    response: TeacherResponse
    key: str
    cost: Decimal
    ms: float


class _Loop:
    """A daemon thread running one asyncio loop, and the providers created on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.providers: dict[tuple[Any, ...], Any] = {}
        threading.Thread(target=self.loop.run_forever, name="gateway-teacher", daemon=True).start()

    async def provider(self, fingerprint: tuple[Any, ...], config: ProviderConfig) -> Any:
        found = self.providers.get(fingerprint)
        if found is None:
            from worker.teachers import make_provider

            found = self.providers[fingerprint] = make_provider(config)
        return found


_LOOP: _Loop | None = None
_LOOP_LOCK = threading.Lock()


def _loop() -> _Loop:
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None:
            _LOOP = _Loop()
        return _LOOP


class _Recent:
    """Answers this process received lately, by (team, cache key): the team's cache row is
    written behind the answer, and a repeat must not pay again meanwhile."""

    def __init__(self, size: int = 20_000) -> None:
        self.size = size
        self.lock = threading.Lock()
        self.items: OrderedDict[tuple[int, str], dict[str, Any]] = OrderedDict()

    def get(self, team_id: int, key: str) -> TeacherResponse | None:
        with self.lock:
            found = self.items.get((team_id, key))
        return None if found is None else TeacherResponse.from_json(found)

    def put(self, team_id: int, key: str, response: TeacherResponse) -> None:
        with self.lock:
            self.items[(team_id, key)] = response.to_json()
            while len(self.items) > self.size:
                self.items.popitem(last=False)


_RECENT = _Recent()


def cached_answer(*, team_id: int, key: str) -> TeacherResponse | None:
    recent = _RECENT.get(team_id, key)
    if recent is not None:
        recent.from_cache, recent.attempts = True, 0
        return recent
    row = CachedResponse.objects.filter(team_id=team_id, key=key).values_list("response").first()
    if row is None:
        return None
    response = TeacherResponse.from_json(row[0])
    response.from_cache, response.attempts = True, 0
    return response


def teacher_answer(
    *,
    team_id: int,
    fingerprint: tuple[Any, ...],
    config: ProviderConfig,
    request: TeacherRequest,
    price: ModelPrice,
    deadline_s: float,
) -> TeacherAnswer:
    """The teacher's answer to ``request``: from the team's cache, else called with retries and
    backoff that end at ``deadline_s``. Raises TeacherUnavailable."""
    started = time.perf_counter()
    key = cache_key(config, request)
    hit = cached_answer(team_id=team_id, key=key)
    if hit is not None:
        return TeacherAnswer(hit, key, Decimal(0), (time.perf_counter() - started) * 1000)
    holder = _loop()
    got: dict[str, Any] = {}

    async def on_result(
        _req: TeacherRequest, _key: str, response: TeacherResponse, cost: Decimal
    ) -> None:
        got["response"], got["cost"] = response, cost

    async def call() -> None:
        provider = await holder.provider(fingerprint, config)
        retry = RetryPolicy(
            max_attempts=6, base_delay_s=0.1, max_delay_s=2.0, max_retry_after_s=deadline_s
        )
        await asyncio.wait_for(
            run([request], provider, concurrency=1, price=price, retry=retry, on_result=on_result),
            timeout=deadline_s,
        )

    future = asyncio.run_coroutine_threadsafe(call(), holder.loop)
    try:
        future.result(timeout=deadline_s + 1.0)
    except (TimeoutError, FutureTimeout) as exc:
        future.cancel()
        raise TeacherUnavailable(
            f"the teacher gave no answer within the deadline of {deadline_s * 1000:.0f} ms "
            "(retries included)",
            status=504,
        ) from exc
    response = got.get("response")
    if response is None:
        raise TeacherUnavailable("the teacher call stopped before an answer")
    if response.error is not None:
        raise TeacherUnavailable(f"the teacher failed: {response.error}")
    _RECENT.put(team_id, key, response)
    return TeacherAnswer(response, key, got["cost"], (time.perf_counter() - started) * 1000)
