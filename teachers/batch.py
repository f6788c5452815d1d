"""Executing a run in batch mode: one provider batch, polled by ``jobs.teacher_batch_poll``."""

from __future__ import annotations

import contextlib
import logging
import uuid
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from jobs import services as job_services
from jobs.models import Job, JobStatus
from teachers.models import LedgerEntry, LedgerStatus, TeacherOutput, TeacherRun
from teachers.prices import run_price, usd
from teachers.recording import (
    CallResult,
    Recorder,
    begin_segment,
    ledger_totals,
    population_checks_summary,
    settle_lost_calls,
)
from teachers.run_requests import (
    build_requests,
    custom_id_for,
    existing_cache_keys,
    missing_pairs,
    provider_config_for_run,
)
from worker.pricing import ModelPrice
from worker.taskspec import TaskSpec
from worker.teacher_cache import cache_key
from worker.teacher_runner import worst_case_cost
from worker.teachers.base import ProviderConfig, TeacherRequest, TeacherResponse

logger = logging.getLogger(__name__)


# Batch mode ------------------------------------------------------------------------------------


def _batch_requests_for(
    run: TeacherRun, spec: TaskSpec, ledger_rows: list[LedgerEntry]
) -> list[TeacherRequest]:
    pairs = [(row.input_id, row.sample_index) for row in ledger_rows if row.input_id is not None]
    requests, _ = build_requests(run, spec, pairs)
    return requests


def _schedule_poll(job: Job, run: TeacherRun, *, chain: str, delay_s: float) -> None:
    from distillery.celery import app

    app.send_task(
        "jobs.teacher_batch_poll", args=[job.pk, chain], countdown=delay_s, queue="default"
    )


def _new_chain(run: TeacherRun) -> str:
    chain = uuid.uuid4().hex
    state = {**run.batch_state, "chain": chain}
    TeacherRun.objects.filter(pk=run.pk).update(batch_state=state)
    run.batch_state = state
    return chain


def batch_begin(job: Job, run: TeacherRun, spec: TaskSpec) -> dict[str, Any]:
    """Store cached answers, submit the rest as one provider batch (ledger rows first), and hand
    the job to the poll task. A re-claimed job with a batch in flight only resumes polling; one
    whose previous attempt died while submitting settles that attempt's rows as lost (possibly
    paid: the provider may have received the batch) and submits again."""
    done_before, total = begin_segment(job, run)
    state = run.batch_state or {}
    if state.get("batch_id") and not state.get("collected"):
        chain = _new_chain(run)
        _schedule_poll(job, run, chain=chain, delay_s=0)
        raise job_services.JobHandedOff

    # "sent" rows with no batch to collect them: an attempt died while submitting (before the
    # batch's id was stored). The provider may have the batch, so they are charged as lost.
    settle_lost_calls(run)
    requests, render_errors = build_requests(run, spec, missing_pairs(run))
    config = provider_config_for_run(run)
    recorder = Recorder(run, spec, batch=True)
    to_send, send_keys = _store_cache_hits(recorder, config, requests)
    if not to_send:
        job_services.job_progress(job=job, done=done_before + recorder.stored, total=total)
        if render_errors:
            raise RuntimeError(
                f"{len(render_errors)} inputs could not be rendered: {render_errors[0]}"
            )
        return {"outputs": done_before + recorder.stored, "calls": 0, "cache_hits": recorder.stored}
    _pause_if_over_budget(run, run_price(run), to_send)
    _submit(run, recorder, config, to_send, send_keys)
    chain = _new_chain(run)
    job_services.job_progress(
        job=job, done=done_before + recorder.stored, total=total, figures={"batch": "submitted"}
    )
    _schedule_poll(job, run, chain=chain, delay_s=float(run.batch_state["poll_s"]))
    raise job_services.JobHandedOff


def _store_cache_hits(
    recorder: Recorder, config: ProviderConfig, requests: list[TeacherRequest]
) -> tuple[list[TeacherRequest], list[str]]:
    """Store the answers the team's cache already has; return the requests left to send, with
    their cache keys."""
    keys = [cache_key(config, r) for r in requests]
    cached = existing_cache_keys(recorder.team_id, keys)
    to_send: list[TeacherRequest] = []
    send_keys: list[str] = []
    hits: list[CallResult] = []
    found = recorder.cache_get_many([k for k in keys if k in cached]) if cached else {}
    for request, key in zip(requests, keys, strict=True):
        response = found.get(key)
        if response is not None:
            response = TeacherResponse.from_json(response.to_json())  # one per request
            response.custom_id = request.custom_id
            response.from_cache = True
            response.attempts = 0
            hits.append(CallResult(request, key, response, Decimal(0)))
            continue
        to_send.append(request)
        send_keys.append(key)
    for start in range(0, len(hits), 500):
        recorder.results_many(hits[start : start + 500])
    return to_send, send_keys


def _pause_if_over_budget(
    run: TeacherRun, price: ModelPrice, to_send: list[TeacherRequest]
) -> None:
    """A batch is paid as a whole: if its worst case could exceed the cap, pause before sending."""
    if run.budget_usd is None:
        return
    worst = sum((worst_case_cost(r, price, batch=True) for r in to_send), Decimal(0))
    spent = ledger_totals(run)["cost_usd"]
    if spent + worst > run.budget_usd:
        message = (
            f"budget: the cap of ${run.budget_usd} could be exceeded by this batch "
            f"(spent ${usd(spent)}; the batch could cost up to ${usd(worst)}). "
            "Raise the budget cap and resume to continue."
        )
        TeacherRun.objects.filter(pk=run.pk).update(stopped_reason=message[:200])
        raise job_services.JobPaused(message)


def _submit(
    run: TeacherRun,
    recorder: Recorder,
    config: ProviderConfig,
    to_send: list[TeacherRequest],
    send_keys: list[str],
) -> None:
    """Ledger rows first (committed), then the provider batch; its ids go on the run."""
    from worker.teachers import batch as batch_api

    state = run.batch_state or {}
    ledger_ids = recorder.sent_many(to_send, send_keys)  # committed before the submission
    submission = batch_api.submit(config, to_send)
    new_state = {
        "poll_s": float(state.get("poll_s") or settings.TEACHER_BATCH_POLL_S),
        "batch_id": submission.batch_id,
        "input_file_id": submission.input_file_id,
        "provider": run.provider,
        "request_count": submission.request_count,
        "state": "submitted",
        "submitted_at": timezone.now().isoformat(),
        "ledger_ids": [min(ledger_ids), max(ledger_ids)],
        "history": list(state.get("history") or []),
        "collected": False,
    }
    with transaction.atomic():
        TeacherRun.objects.filter(pk=run.pk).update(batch_state=new_state)
        LedgerEntry.objects.filter(pk__in=ledger_ids).update(
            provider_request_id=f"batch:{submission.batch_id}"[:200]
        )
    run.batch_state = new_state


def teacher_batch_poll_step(*, job_id: int, chain: str) -> None:
    """One poll of a run's provider batch: heartbeat, then collect when it is done or schedule
    the next poll. Superseded chains (after a re-claim) stop quietly."""
    job = Job.objects.filter(pk=job_id, status=JobStatus.RUNNING).first()
    if job is None:
        return
    run = TeacherRun.objects.select_related("project__team", "credential").get(job=job)
    if (run.batch_state or {}).get("chain") != chain:
        return
    try:
        outcome = _batch_poll(job, run)
    except job_services.JobCancelled:
        job_services.job_mark_cancelled(job=job)
        return
    except Exception as exc:
        logger.exception("job %s: batch poll failed", job_id)
        job_services.job_fail(job=job, error=str(exc) or exc.__class__.__name__)
        return
    if outcome is None:
        _schedule_poll(
            job,
            run,
            chain=chain,
            delay_s=float(run.batch_state.get("poll_s") or settings.TEACHER_BATCH_POLL_S),
        )
        return
    if outcome.get("missing"):
        why = f" The provider said: {outcome['error']}." if outcome.get("error") else ""
        job_services.job_fail(
            job=job,
            error=(
                f"{outcome['missing']} answers are missing after the batch "
                f"({outcome['failed']} requests failed or were not processed).{why} "
                "Resume the run to send them again."
            ),
        )
        return
    job_services.job_succeed(job=job, result=outcome)


def _batch_poll(job: Job, run: TeacherRun) -> dict[str, Any] | None:
    """None while the batch runs; its outcome once collected. Raises JobCancelled once a
    cancelled batch has ended (what it finished before the cancel is stored and paid for)."""
    from worker.teachers import batch as batch_api

    state = dict(run.batch_state)
    config = provider_config_for_run(run)
    batch_id = state["batch_id"]
    total = len(run.input_ids) * run.samples_per_input
    cancel = Job.objects.filter(pk=job.pk, cancel_requested=True).exists()
    if cancel and not state.get("cancel_sent"):
        status = batch_api.cancel(config, batch_id)
        state["cancel_sent"] = True
    else:
        status = batch_api.poll(config, batch_id)
    state.update(
        state=status.state,
        provider_status=status.provider_status,
        total=status.total,
        completed=status.completed,
        failed=status.failed,
        error=status.error,
        polled_at=timezone.now().isoformat(),
    )
    TeacherRun.objects.filter(pk=run.pk).update(batch_state=state)
    run.batch_state = state
    done = TeacherOutput.objects.filter(run=run).count()
    # A cancel is handled above, at the provider, on this poll or the next.
    with contextlib.suppress(job_services.JobCancelled):
        job_services.job_progress(
            job=job,
            done=done,
            total=total,
            figures={"batch": f"{status.state} ({status.completed}/{status.total})"},
        )
    if not status.done:
        return None
    outcome = _collect(run, config, batch_id, cancelled=cancel)
    if cancel:
        raise job_services.JobCancelled
    if status.error:
        outcome["error"] = status.error
    return outcome


def _collect(
    run: TeacherRun, config: ProviderConfig, batch_id: str, *, cancelled: bool
) -> dict[str, Any]:
    """Store every answer the batch has, complete its ledger rows at the batch price, and close
    the rows of requests it never processed (not billed)."""
    from worker.teachers import batch as batch_api

    spec = run.project.task_spec()
    rows = list(
        LedgerEntry.objects.filter(
            run=run, status=LedgerStatus.SENT, provider_request_id=f"batch:{batch_id}"[:200]
        )
    )
    requests = _batch_requests_for(run, spec, rows)
    by_id = {r.custom_id: r for r in requests}
    responses = batch_api.collect(config, batch_id, requests)
    price = run_price(run)
    recorder = Recorder(run, spec, batch=True)
    failed = 0
    items: list[CallResult] = []
    for row in rows:
        custom_id = custom_id_for(row.input_id or 0, row.sample_index)
        request = by_id.get(custom_id)
        response = responses.get(custom_id)
        if request is None:
            LedgerEntry.objects.filter(pk=row.pk).update(
                status=LedgerStatus.FAILED,
                error="the input was deleted",
                completed_at=timezone.now(),
            )
            failed += 1
            continue
        if response is None:
            response = TeacherResponse(
                custom_id=custom_id,
                raw_text="",
                error="not processed: the batch "
                + ("was cancelled" if cancelled else "ended without this request"),
            )
        cost = Decimal(0)
        if response.ok:
            cost = price.cost(response.input_tokens, response.output_tokens, batch=True)
        else:
            failed += 1
        response.attempts = 1
        items.append(CallResult(request, row.cache_key, response, cost, ledger_id=row.pk))
    for start in range(0, len(items), 500):
        recorder.results_many(items[start : start + 500])
    state = {**run.batch_state, "collected": True, "collected_at": timezone.now().isoformat()}
    state["history"] = [*(state.get("history") or []), batch_id]
    TeacherRun.objects.filter(pk=run.pk).update(batch_state=state)
    run.batch_state = state
    missing = len(missing_pairs(run))
    run.refresh_from_db(fields=["cost_usd", "calls_made", "cache_hits"])
    return {
        **population_checks_summary(run),
        "outputs": len(run.input_ids) * run.samples_per_input - missing,
        "batch_id": batch_id,
        "failed": failed,
        "missing": missing,
        "cost_usd": str(run.cost_usd),
    }
