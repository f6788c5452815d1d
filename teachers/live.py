"""Executing a live run: the engine calls the provider, request by request, with the callbacks

- ``cache_lookup`` → CachedResponse (per team): nothing is paid twice;
- ``on_sent``/``on_result`` → teachers.recording (ledger first, then answer + totals at once);
- ``should_stop`` → heartbeat + progress, and the user's pause / cancel.

A resumed run (after a pause, a failure, or a worker crash re-queued by the reaper) first settles
the calls a dead attempt left in flight (ledger "sent" → "lost", charged at their worst case), then
builds only the (input, sample) pairs that have no stored output yet; answers that were paid for
and cached before a crash are reused. A kill therefore costs at most the calls in flight, and
each of them is in the ledger and the run's cost.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from jobs import services as job_services
from jobs.models import Job
from teachers.calls import teacher_calls_run
from teachers.models import TeacherRun
from teachers.prices import run_price, usd
from teachers.recording import (
    CallResult,
    DbPipe,
    LostCalls,
    Recorder,
    begin_segment,
    ledger_totals,
    lost_calls,
    population_checks_summary,
    settle_lost_calls,
)
from teachers.run_requests import (
    build_requests,
    existing_cache_keys,
    missing_pairs,
    provider_config_for_run,
)
from worker.taskspec import TaskSpec
from worker.teacher_cache import cache_key
from worker.teacher_runner import RunSummary, StopReason
from worker.teachers.base import TeacherRequest, TeacherResponse

PAUSED_MESSAGE = "paused by a user"


def execute_live(job: Job, run: TeacherRun, spec: TaskSpec) -> dict[str, Any]:
    """Call the teacher for every (input, sample) still missing, recording as answers arrive.
    Raises JobPaused (a pause or the budget cap), JobCancelled, or RuntimeError (answers are
    missing or the provider refused the run)."""
    if run.pause_requested:
        raise job_services.JobPaused(PAUSED_MESSAGE)
    settle_lost_calls(run)  # before the budget reads the ledger and before anything is sent
    done_before, total = begin_segment(job, run)
    pairs = missing_pairs(run)
    requests, render_errors = build_requests(run, spec, pairs)
    config = provider_config_for_run(run)
    keys = {r.custom_id: cache_key(config, r) for r in requests}
    cached_keys = existing_cache_keys(run.project.team_id, keys.values())
    price = run_price(run)
    spent = ledger_totals(run)["cost_usd"]
    recorder = Recorder(run, spec, batch=False)
    recorder.preload_references(input_id for input_id, _ in pairs)
    callbacks = _LiveCallbacks(job, run, recorder, cached_keys, done_before, total, lost_calls(run))
    summary = teacher_calls_run(
        requests,
        config,
        price=price,
        concurrency=run.concurrency,
        budget_usd=None if run.budget_usd is None else max(Decimal(0), run.budget_usd - spent),
        cache_lookup=callbacks.cache_lookup,
        keys=keys,
        on_sent=callbacks.sent,
        on_result=callbacks.result,
        should_stop=callbacks.should_stop,
    )
    job_services.job_progress(job=job, done=done_before + recorder.stored, total=total)
    _raise_if_stopped(run, summary)
    return _outcome(run, summary, total=total, render_errors=render_errors)


class _LiveCallbacks:
    """The engine's callbacks for one live segment: reads and writes go through one DbPipe
    (grouped into transactions); ``should_stop`` is the heartbeat and the pause/cancel check."""

    def __init__(
        self,
        job: Job,
        run: TeacherRun,
        recorder: Recorder,
        cached_keys: set[str],
        done_before: int,
        total: int,
        lost: LostCalls,
    ) -> None:
        from asgiref.sync import sync_to_async

        self.job, self.run, self.recorder = job, run, recorder
        self.lost = lost
        self.cached_keys = cached_keys
        self.done_before, self.total = done_before, total
        self.pipe = DbPipe(recorder)
        self.ledger_ids: dict[str, int] = {}
        self.should_stop = sync_to_async(self._check_stop, thread_sensitive=True)

    async def cache_lookup(self, key: str) -> TeacherResponse | None:
        if key not in self.cached_keys:
            return None  # most keys: no database round trip
        found: TeacherResponse | None = await self.pipe.submit("get", key)
        return found

    async def sent(self, request: TeacherRequest, key: str) -> None:
        self.ledger_ids[request.custom_id] = await self.pipe.submit("sent", (request, key))

    async def result(
        self, request: TeacherRequest, key: str, response: TeacherResponse, cost: Decimal
    ) -> None:
        ledger_id = self.ledger_ids.pop(request.custom_id, None)
        await self.pipe.submit("result", CallResult(request, key, response, cost, ledger_id))

    def _check_stop(self) -> StopReason | None:
        run_id = self.run.pk
        run_flags = TeacherRun.objects.filter(pk=run_id).values_list("pause_requested").first()
        try:
            job_services.job_progress(
                job=self.job,
                done=self.done_before + self.recorder.stored,
                total=self.total,
                figures=_live_figures(run_id, self.lost),
            )
        except job_services.JobCancelled:
            return StopReason.CANCELLED
        if run_flags and run_flags[0]:
            return StopReason.PAUSED
        return None


def _raise_if_stopped(run: TeacherRun, summary: RunSummary) -> None:
    """A pause or the budget cap pauses the job (resumable); a cancel cancels it; a provider
    error that no request can get past fails it. The run keeps the message it shows."""
    stopped = summary.stopped
    if stopped is None:
        return
    if stopped is StopReason.CANCELLED:
        raise job_services.JobCancelled
    message = summary.stopped_reason or stopped.value
    if stopped is StopReason.PAUSED:
        message = PAUSED_MESSAGE
    elif stopped is StopReason.BUDGET:
        message += ". Raise the budget cap and resume to continue."
    TeacherRun.objects.filter(pk=run.pk).update(stopped_reason=message[:200])
    if stopped in (StopReason.PAUSED, StopReason.BUDGET):
        raise job_services.JobPaused(message)
    raise RuntimeError(message)


def _outcome(
    run: TeacherRun, summary: RunSummary, *, total: int, render_errors: list[str]
) -> dict[str, Any]:
    """The job's result once every request was handled; RuntimeError if answers are missing."""
    missing = len(missing_pairs(run))
    lost = lost_calls(run)
    result_summary = {
        **population_checks_summary(run),
        "outputs": total - missing,
        "calls": summary.calls,
        "cache_hits": summary.cache_hits,
        "retries": summary.retries,
        "failed": summary.failed,
        # The run's cost: the ledger's sum over every attempt, lost calls included.
        "cost_usd": str(usd(ledger_totals(run)["cost_usd"])),
    }
    if lost:
        result_summary["possibly_paid_twice"] = lost.text
    if missing:
        first = summary.failures[0][1] if summary.failures else (render_errors or [""])[0]
        message = (
            f"{missing} of {total} answers are missing ({summary.failed} calls failed"
            + (f", {len(render_errors)} inputs could not be rendered" if render_errors else "")
            + f"). First error: {first}. Resume the run to retry them."
        )
        TeacherRun.objects.filter(pk=run.pk).update(stopped_reason=message[:200])
        raise RuntimeError(message)
    return result_summary


def _live_figures(run_id: int, lost: LostCalls) -> dict[str, Any]:
    row: dict[str, Any] = dict(
        TeacherRun.objects.filter(pk=run_id)
        .values("cost_usd", "failures", "calls_made", "cache_hits")
        .first()
        or {}
    )
    return {
        "cost so far": f"${row.get('cost_usd', 0):.4f}",
        "calls": row.get("calls_made", 0),
        "cache hits": row.get("cache_hits", 0),
        "failures": row.get("failures", 0),
    } | ({"possibly paid twice": lost.text} if lost else {})
