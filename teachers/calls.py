"""The one path every call to a teacher takes: teacher runs (teachers.live), the LLM judge
(review) and endpoint candidates (evaluations) all run their requests through here.

It runs worker.teacher_runner synchronously on a fresh event loop (a Celery task is synchronous),
with the provider client created, used and closed on that loop, and optionally the team's response
cache (CachedResponse) read up front and written once the calls are done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.db import connections

from teachers.models import CachedResponse
from worker.pricing import ModelPrice
from worker.teacher_cache import cache_key
from worker.teacher_runner import CacheLookup, OnResult, OnSent, RunSummary, ShouldStop
from worker.teachers.base import ProviderConfig, TeacherRequest, TeacherResponse


@dataclass
class TeamResponseCache:
    """The team's cached answers for one list of requests, read in one query up front; the
    answers received are written in one statement by ``save`` (a row stored meanwhile wins)."""

    team_id: int
    keys: dict[str, str]  # custom_id -> cache key
    found: dict[str, TeacherResponse]
    new: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(
        cls, *, team_id: int, config: ProviderConfig, requests: Sequence[TeacherRequest]
    ) -> TeamResponseCache:
        keys = {r.custom_id: cache_key(config, r) for r in requests}
        rows = CachedResponse.objects.filter(team_id=team_id, key__in=keys.values())
        found = {row.key: TeacherResponse.from_json(row.response) for row in rows}
        return cls(team_id=team_id, keys=keys, found=found)

    def lookup(self, key: str) -> TeacherResponse | None:
        return self.found.get(key)

    def store(self, key: str, response: TeacherResponse) -> None:
        self.new[key] = response.to_json()

    def save(self) -> None:
        CachedResponse.objects.bulk_create(
            [CachedResponse(team_id=self.team_id, key=k, response=v) for k, v in self.new.items()],
            ignore_conflicts=True,
        )
        self.new = {}


def teacher_calls_run(
    requests: Sequence[TeacherRequest],
    config: ProviderConfig,
    *,
    price: ModelPrice,
    concurrency: int,
    budget_usd: Decimal | None = None,
    cache: TeamResponseCache | None = None,
    cache_lookup: CacheLookup | None = None,
    keys: dict[str, str] | None = None,
    on_sent: OnSent | None = None,
    on_result: OnResult | None = None,
    should_stop: ShouldStop | None = None,
) -> RunSummary:
    """Run ``requests`` through the teacher engine and return its summary.

    ``cache``: the team's response cache (looked up, then stored after the calls). A caller that
    keeps its own cache passes ``cache_lookup`` and the requests' cache ``keys`` (by custom_id)
    instead. Callbacks that reach the database must be wrapped with ``sync_to_async``
    (thread-sensitive); that thread's connections are closed when the calls end.
    """
    from asgiref.sync import sync_to_async

    from worker.teacher_runner import run
    from worker.teachers import make_provider

    if cache is not None:
        cache_lookup, keys = cache.lookup, cache.keys
    key_map = keys

    async def main() -> RunSummary:
        provider = make_provider(config)
        try:
            return await run(
                requests,
                provider,
                concurrency=concurrency,
                budget_usd=budget_usd,
                price=price,
                cache_lookup=cache_lookup,
                cache_store=None if cache is None else cache.store,
                on_sent=on_sent,
                on_result=on_result,
                should_stop=should_stop,
                key_for=None if key_map is None else (lambda r: key_map[r.custom_id]),
            )
        finally:
            await provider.aclose()
            # The callbacks' thread has its own connection: give it back.
            await sync_to_async(connections.close_all, thread_sensitive=True)()

    summary = asyncio.run(main())
    if cache is not None:
        cache.save()
    return summary
