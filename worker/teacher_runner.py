"""Run many teacher requests: bounded concurrency, cache first, budget cap, counted retries.

The Django side stays thin: it builds the requests and the provider, and supplies callbacks::

    summary = run_sync(
        requests, provider,
        concurrency=16, budget_usd=Decimal("25"), price=price,
        cache_lookup=lookup,          # key -> TeacherResponse | None
        cache_store=store,            # (key, response) after a successful call
        on_sent=ledger_sent,          # (request, key) BEFORE the call: the ledger's "sent" row
        on_result=save_output,        # (request, key, response, cost_usd) after it, every time
        should_stop=check_job,        # () -> StopReason.PAUSED | StopReason.CANCELLED | None
    )

A stopped run says why twice: ``summary.stopped`` is a ``StopReason`` for code to branch on, and
``summary.stopped_reason`` is the human message (for PAUSED and CANCELLED, the enum's value).

Callbacks may be plain functions or coroutine functions. Plain ones run on the event loop (keep
them quick); Django ORM code must be wrapped with ``asgiref.sync.sync_to_async`` (which also
serialises them on one thread).

Rules:

- A cache hit calls nothing and costs nothing (``on_result`` gets ``response.from_cache``).
  Two requests with the same key in one run make one call.
- Before a call starts, its worst case (prompt tokens + ``max_tokens`` at the model's price) is
  reserved against the budget. A call that does not fit waits for in-flight calls to settle; if it
  still does not fit, the run stops with ``StopReason.BUDGET``, before exceeding the cap.
  An attempt whose response was lost (timeout, unreadable body) may have been billed, so its
  worst case stays counted against the budget.
- Retries: 429 waits for Retry-After (and pauses every worker until then); 5xx, timeouts,
  connection errors and unreadable bodies back off exponentially with jitter, up to
  ``RetryPolicy.max_attempts`` attempts. 400/401/403/404 are never retried; 401/403/404 stop the
  whole run (no other request can succeed): ``StopReason.FATAL``, with the error's message as
  ``stopped_reason``.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

from worker.pricing import FREE, ModelPrice, count_message_tokens, price_for
from worker.teacher_cache import cache_key
from worker.teachers.base import (
    TeacherConfigError,
    TeacherError,
    TeacherMalformedResponseError,
    TeacherProvider,
    TeacherRequest,
    TeacherResponse,
    TeacherTimeoutError,
)

MaybeAwaitable = Any
CacheLookup = Callable[[str], MaybeAwaitable]
CacheStore = Callable[[str, TeacherResponse], MaybeAwaitable]
OnSent = Callable[[TeacherRequest, str], MaybeAwaitable]
OnResult = Callable[[TeacherRequest, str, TeacherResponse, Decimal], MaybeAwaitable]
ShouldStop = Callable[[], MaybeAwaitable]


class StopReason(StrEnum):
    """Why a run stopped before handling every request."""

    PAUSED = "paused"  # should_stop asked for a pause
    CANCELLED = "cancelled"  # should_stop asked for a cancel
    BUDGET = "budget"  # the next call could have exceeded the budget cap
    FATAL = "fatal"  # a provider error no other request can get past (bad key, unknown model)


# An approximate prompt count (non-OpenAI models) is inflated by this much for the worst case.
APPROX_TOKEN_MARGIN = 1.5


def worst_case_cost(request: TeacherRequest, price: ModelPrice, *, batch: bool = False) -> Decimal:
    """The most one call can cost: its prompt tokens (counted; an approximate count inflated by
    ``APPROX_TOKEN_MARGIN``) plus ``max_tokens`` of output, at ``price``. The budget reserves it
    before a call, and the ledger charges it for a call whose answer was lost in a crash."""
    counted = count_message_tokens(request.messages, request.model)
    tokens = counted.tokens if counted.exact else int(counted.tokens * APPROX_TOKEN_MARGIN) + 1
    return price.cost(tokens, request.max_tokens, batch=batch)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    jitter: float = 0.25  # +/- this fraction of the backoff delay
    retry_after_jitter: float = 0.05  # up to this fraction added on top of a Retry-After
    max_retry_after_s: float = 600.0  # longer asks are treated as a failed attempt

    def backoff(self, attempt: int) -> float:
        """Delay before attempt ``attempt + 1`` after ``attempt`` failures (1-based)."""
        delay = min(self.max_delay_s, self.base_delay_s * (2.0 ** (attempt - 1)))
        return max(0.0, delay * (1.0 + random.uniform(-self.jitter, self.jitter)))


@dataclass
class RunSummary:
    total: int = 0  # requests handled (called, cached or failed)
    calls: int = 0  # requests sent to the provider (retries of one request count once)
    attempts: int = 0  # HTTP attempts, retries included
    retries: int = 0
    cache_hits: int = 0
    succeeded: int = 0  # answered (from the provider or the cache)
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    # Worst case of attempts whose response was lost (may or may not have been billed).
    possibly_billed_usd: Decimal = Decimal(0)
    stopped: StopReason | None = None
    stopped_reason: str | None = None  # the human message for ``stopped``
    failures: list[tuple[str, str]] = field(default_factory=list)  # (custom_id, error), first 100
    wall_s: float = 0.0

    @property
    def completed(self) -> bool:
        return self.stopped is None

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "calls": self.calls,
            "attempts": self.attempts,
            "retries": self.retries,
            "cache_hits": self.cache_hits,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": str(self.cost_usd),
            "possibly_billed_usd": str(self.possibly_billed_usd),
            "stopped": None if self.stopped is None else self.stopped.value,
            "stopped_reason": self.stopped_reason,
            "failures": [list(f) for f in self.failures],
            "wall_s": round(self.wall_s, 3),
        }


async def _call(fn: Callable[..., Any] | None, *args: Any) -> Any:
    if fn is None:
        return None
    result = fn(*args)
    if inspect.isawaitable(result):
        return await result
    return result


class _Stop(Exception):
    pass


class _Run:
    def __init__(
        self,
        requests: Iterable[TeacherRequest],
        provider: TeacherProvider,
        *,
        concurrency: int,
        budget_usd: Decimal | None,
        price: ModelPrice | None,
        batch_pricing: bool,
        cache_lookup: CacheLookup | None,
        cache_store: CacheStore | None,
        on_sent: OnSent | None,
        on_result: OnResult | None,
        should_stop: ShouldStop | None,
        retry: RetryPolicy,
        stop_check_interval_s: float,
        key_for: Callable[[TeacherRequest], str],
    ) -> None:
        self.requests: Iterator[TeacherRequest] = iter(requests)
        self.provider = provider
        self.concurrency = max(1, int(concurrency))
        self.budget = budget_usd
        self.price = price
        self.batch_pricing = batch_pricing
        self.cache_lookup = cache_lookup
        self.cache_store = cache_store
        self.on_sent = on_sent
        self.on_result = on_result
        self.should_stop_fn = should_stop
        self.retry = retry
        self.stop_check_interval_s = stop_check_interval_s
        self.key_for = key_for
        self.summary = RunSummary()
        self.stop_reason: StopReason | None = None
        self.stop_message = ""
        self.spent = Decimal(0)  # actual cost + possibly-billed worst cases
        self.reserved = Decimal(0)
        self.in_flight_reservations = 0
        self.budget_changed = asyncio.Condition()
        self.pause_until = 0.0  # monotonic time before which nobody sends (429 Retry-After)
        self.last_stop_check = -1e9
        self.in_flight_keys: dict[str, asyncio.Future[TeacherResponse | None]] = {}

    # -- helpers ------------------------------------------------------------------------------

    def _price_for(self, request: TeacherRequest) -> ModelPrice:
        if self.price is not None:
            return self.price
        if self.provider.config.kind == "local_hf":
            return FREE
        price = price_for(request.model)
        if price is None:
            raise TeacherConfigError(
                f"no price for model {request.model!r}; add it to the price table "
                "so the run can be metered"
            )
        self.price = price
        return price

    def _worst_case(self, request: TeacherRequest, price: ModelPrice) -> Decimal:
        return worst_case_cost(request, price, batch=self.batch_pricing)

    async def _check_should_stop(self, *, force: bool = False) -> None:
        if self.stop_reason is not None:
            raise _Stop
        if self.should_stop_fn is None:
            return
        now = time.monotonic()
        if not force and now - self.last_stop_check < self.stop_check_interval_s:
            return
        self.last_stop_check = now
        reason = await _call(self.should_stop_fn)
        if reason:
            self._stop(StopReason(reason))
            raise _Stop

    def _stop(self, reason: StopReason, message: str = "") -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self.stop_message = message or reason.value

    async def _reserve(self, amount: Decimal) -> bool:
        if self.budget is None:
            return True
        async with self.budget_changed:
            while True:
                if self.stop_reason is not None:
                    return False
                if self.spent + self.reserved + amount <= self.budget:
                    self.reserved += amount
                    self.in_flight_reservations += 1
                    return True
                if self.in_flight_reservations == 0:
                    return False
                await self.budget_changed.wait()

    async def _settle(self, reserved: Decimal, spent: Decimal) -> None:
        if self.budget is None:
            self.spent += spent
            return
        async with self.budget_changed:
            self.reserved -= reserved
            self.in_flight_reservations -= 1
            self.spent += spent
            self.budget_changed.notify_all()

    async def _sleep(self, seconds: float) -> None:
        """Sleep, waking up to notice a stop request (pause/cancel) during long waits."""
        deadline = time.monotonic() + seconds
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(left, max(self.stop_check_interval_s, 0.05)))
            await self._check_should_stop()

    async def _wait_for_pause(self) -> None:
        while True:
            left = self.pause_until - time.monotonic()
            if left <= 0:
                return
            await self._sleep(left)

    # -- the work -----------------------------------------------------------------------------

    async def worker(self) -> None:
        while True:
            try:
                await self._check_should_stop()
            except _Stop:
                return
            try:
                request = next(self.requests)
            except StopIteration:
                return
            try:
                await self.handle(request)
            except _Stop:
                return

    async def handle(self, request: TeacherRequest) -> None:
        key = self.key_for(request)
        cached = await self._from_cache(key)
        if cached is None and key in self.in_flight_keys:
            # The same call is already on its way for another request of this run.
            cached = await self.in_flight_keys[key]
        if cached is not None:
            cached.custom_id = request.custom_id
            cached.from_cache = True
            cached.attempts = 0
            self.summary.total += 1
            self.summary.cache_hits += 1
            self.summary.succeeded += 1
            await _call(self.on_result, request, key, cached, Decimal(0))
            return

        price = self._price_for(request)
        reservation = self._worst_case(request, price) if self.budget is not None else Decimal(0)
        if not await self._reserve(reservation):
            if self.stop_reason is None:
                spent = self.spent.quantize(Decimal("0.000001"))
                self._stop(
                    StopReason.BUDGET,
                    f"budget: the cap of ${self.budget} would be exceeded "
                    f"(spent ${spent}; the next call could cost up to "
                    f"${reservation.quantize(Decimal('0.000001'))})",
                )
            raise _Stop

        future: asyncio.Future[TeacherResponse | None] = asyncio.get_running_loop().create_future()
        self.in_flight_keys[key] = future
        spent = Decimal(0)
        response: TeacherResponse | None = None
        try:
            await _call(self.on_sent, request, key)
            self.summary.calls += 1
            response, lost_attempts = await self._attempts(request)
            spent_lost = reservation * lost_attempts if self.budget is not None else Decimal(0)
            cost = Decimal(0)
            if response.error is None:
                cost = price.cost(
                    response.input_tokens, response.output_tokens, batch=self.batch_pricing
                )
            spent = cost + spent_lost
            self.summary.total += 1
            self.summary.cost_usd += cost
            self.summary.possibly_billed_usd += spent_lost
            self.summary.input_tokens += response.input_tokens
            self.summary.output_tokens += response.output_tokens
            if response.error is None:
                self.summary.succeeded += 1
                await _call(self.cache_store, key, response)
            else:
                self.summary.failed += 1
                if len(self.summary.failures) < 100:
                    self.summary.failures.append((request.custom_id, response.error))
            await _call(self.on_result, request, key, response, cost)
        finally:
            await self._settle(reservation, spent)
            self.in_flight_keys.pop(key, None)
            if not future.done():
                ok = response is not None and response.error is None
                future.set_result(_copy(response) if ok and response is not None else None)

    async def _from_cache(self, key: str) -> TeacherResponse | None:
        if self.cache_lookup is None:
            return None
        found = await _call(self.cache_lookup, key)
        return found if isinstance(found, TeacherResponse) else None

    async def _attempts(self, request: TeacherRequest) -> tuple[TeacherResponse, int]:
        """Call until an answer, a non-retryable error or the attempt limit. Returns the response
        (``error`` set on failure) and how many attempts lost their response after sending."""
        attempt = 0
        lost = 0
        while True:
            attempt += 1
            await self._wait_for_pause()
            self.summary.attempts += 1
            if attempt > 1:
                self.summary.retries += 1
            try:
                response = await self.provider.generate(request)
                response.attempts = attempt
                return response, lost
            except TeacherError as exc:
                error: TeacherError = exc
            except Exception as exc:  # a provider bug must not take the whole run down
                error = TeacherError(f"{type(exc).__name__}: {exc}")
            if isinstance(error, TeacherTimeoutError | TeacherMalformedResponseError):
                lost += 1
            if error.fatal:
                self._stop(StopReason.FATAL, error.message)
            give_up = (
                not error.retryable
                or attempt >= self.retry.max_attempts
                or self.stop_reason is not None
            )
            delay = self.retry.backoff(attempt)
            if error.retry_after_s is not None:
                if error.retry_after_s > self.retry.max_retry_after_s:
                    give_up = True
                delay = error.retry_after_s * (1 + random.uniform(0, self.retry.retry_after_jitter))
                if error.status_code == 429:
                    self.pause_until = max(self.pause_until, time.monotonic() + delay)
            if give_up:
                suffix = f" (after {attempt} attempts)" if attempt > 1 else ""
                return (
                    TeacherResponse(
                        custom_id=request.custom_id,
                        raw_text="",
                        error=error.message + suffix,
                        provider_request_id=error.provider_request_id,
                        attempts=attempt,
                    ),
                    lost,
                )
            try:
                await self._sleep(delay)
            except _Stop:
                return (
                    TeacherResponse(
                        custom_id=request.custom_id,
                        raw_text="",
                        error=f"{error.message} (not retried: the run stopped)",
                        attempts=attempt,
                    ),
                    lost,
                )

    async def run(self) -> RunSummary:
        started = time.perf_counter()
        try:
            await self._check_should_stop(force=True)
            workers = [asyncio.create_task(self.worker()) for _ in range(self.concurrency)]
            try:
                await asyncio.gather(*workers)
            except BaseException:
                for task in workers:
                    task.cancel()
                raise
        except _Stop:
            pass
        self.summary.stopped = self.stop_reason
        self.summary.stopped_reason = self.stop_message if self.stop_reason is not None else None
        self.summary.wall_s = time.perf_counter() - started
        return self.summary


def _copy(response: TeacherResponse) -> TeacherResponse:
    return TeacherResponse.from_json(response.to_json())


async def run(
    requests: Iterable[TeacherRequest],
    provider: TeacherProvider,
    *,
    concurrency: int = 8,
    budget_usd: Decimal | float | str | None = None,
    price: ModelPrice | None = None,
    batch_pricing: bool = False,
    cache_lookup: CacheLookup | None = None,
    cache_store: CacheStore | None = None,
    on_sent: OnSent | None = None,
    on_result: OnResult | None = None,
    should_stop: ShouldStop | None = None,
    retry: RetryPolicy | None = None,
    stop_check_interval_s: float = 1.0,
    key_for: Callable[[TeacherRequest], str] | None = None,
) -> RunSummary:
    """Run ``requests`` through ``provider``; see the module docstring for the rules.

    ``price`` defaults to the model's row in worker.pricing's default table (free for local
    models); a model without a price is refused, since it could not be metered. ``key_for``
    defaults to worker.teacher_cache.cache_key with the provider's config. The provider is not
    closed here: its owner closes it.
    """
    budget = None if budget_usd is None else Decimal(str(budget_usd))
    config = provider.config
    job = _Run(
        requests,
        provider,
        concurrency=concurrency,
        budget_usd=budget,
        price=price,
        batch_pricing=batch_pricing,
        cache_lookup=cache_lookup,
        cache_store=cache_store,
        on_sent=on_sent,
        on_result=on_result,
        should_stop=should_stop,
        retry=retry or RetryPolicy(),
        stop_check_interval_s=stop_check_interval_s,
        key_for=key_for or (lambda request: cache_key(config, request)),
    )
    return await job.run()


def run_sync(
    requests: Iterable[TeacherRequest],
    provider_factory: Callable[[], TeacherProvider] | TeacherProvider,
    **kwargs: Any,
) -> RunSummary:
    """``run`` from synchronous code (a Celery task). Pass a factory (e.g.
    ``lambda: make_provider(config)``) so the SDK client is created, used and closed on the same
    event loop."""

    async def main() -> RunSummary:
        provider = provider_factory() if callable(provider_factory) else provider_factory
        try:
            return await run(requests, provider, **kwargs)
        finally:
            await provider.aclose()

    return asyncio.run(main())


__all__ = ["RetryPolicy", "RunSummary", "StopReason", "run", "run_sync", "worst_case_cost"]
