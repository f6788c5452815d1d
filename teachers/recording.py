"""Writing the engine's answers to the database.

- ``on_sent`` → a LedgerEntry (status "sent", with the call's worst-case price) committed BEFORE
  the call, so a crash leaves a trace;
- ``on_result`` → in ONE transaction: the ledger row completed, the cache row, the TeacherOutput
  (parsed by the task spec, with per-output check flags) and the run's totals. The run's totals
  therefore always equal the ledger's sums.
- ``settle_lost_calls`` → when a run (re)starts, the "sent" rows an earlier attempt left (its
  worker died with those calls in flight) become "lost", charged at their worst-case price and
  added to the run's totals: the provider may have billed them, and the input is sent again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Count, F, Sum
from django.utils import timezone

from jobs import services as job_services
from jobs.models import Job
from projects.models import InputRow
from teachers.models import (
    CachedResponse,
    LedgerEntry,
    LedgerStatus,
    OutputFlag,
    TeacherOutput,
    TeacherRun,
)
from teachers.prices import run_price, usd
from teachers.run_requests import pair_of
from worker.pricing import ModelPrice
from worker.taskspec import TaskSpec, parse_output
from worker.teacher_runner import worst_case_cost
from worker.teachers.base import TeacherRequest, TeacherResponse
from worker.teachers.confidence import label_distribution

# Storing results -------------------------------------------------------------------------------


@dataclass
class CallResult:
    request: TeacherRequest
    key: str
    response: TeacherResponse
    cost: Decimal
    ledger_id: int | None = None


class Recorder:
    """Writes the engine's results to the database. Every method is synchronous ORM code; the
    async runner reaches them through DbPipe (one thread, writes grouped into transactions)."""

    def __init__(self, run: TeacherRun, spec: TaskSpec, *, batch: bool) -> None:
        self.run = run
        self.spec = spec
        self.team_id = run.project.team_id
        self.batch = batch
        self.stored = 0
        self.references: dict[int, str | None] = {}
        self._price: ModelPrice | None = None
        self._check_output: Any = None
        try:
            from worker.checks import OutputToCheck, check_output

            self._check_output = check_output
            self._output_to_check = OutputToCheck
        except ImportError:  # checks are optional for storing outputs
            self._check_output = None

    def preload_references(self, input_ids: Iterable[int]) -> None:
        ids = sorted(set(input_ids) - set(self.references))
        for start in range(0, len(ids), 2000):
            chunk = ids[start : start + 2000]
            self.references.update(
                InputRow.objects.filter(pk__in=chunk).values_list("id", "reference_output")
            )

    # -- cache

    def cache_get(self, key: str) -> TeacherResponse | None:
        return self.cache_get_many([key]).get(key)

    def cache_get_many(self, keys: list[str]) -> dict[str, TeacherResponse]:
        rows = CachedResponse.objects.filter(team_id=self.team_id, key__in=keys)
        return {row.key: TeacherResponse.from_json(row.response) for row in rows}

    # -- ledger

    def sent_many(self, requests: list[TeacherRequest], keys: list[str]) -> list[int]:
        """Ledger rows (status "sent") for calls about to be made; commit before calling. Each
        carries the call's worst case, what it is charged if its answer is lost in a crash."""
        if self._price is None:
            self._price = run_price(self.run)
        entries = []
        for request, key in zip(requests, keys, strict=True):
            input_id, sample = pair_of(request.custom_id)
            entries.append(
                LedgerEntry(
                    run=self.run,
                    input_id=input_id,
                    sample_index=sample,
                    cache_key=key,
                    estimated_cost_usd=usd(worst_case_cost(request, self._price, batch=self.batch)),
                )
            )
        created = LedgerEntry.objects.bulk_create(entries, batch_size=2000)
        return [entry.pk for entry in created]

    # -- results

    def result(
        self,
        request: TeacherRequest,
        key: str,
        response: TeacherResponse,
        cost: Decimal,
        ledger_id: int | None = None,
    ) -> None:
        self.results_many([CallResult(request, key, response, cost, ledger_id)])

    def results_many(self, items: list[CallResult]) -> None:
        """In ONE transaction: complete the ledger rows, cache the answers, store the outputs
        (parsed, checked) and add to the run's totals, so the totals always equal the ledger."""
        now = timezone.now()
        ledger_rows: list[LedgerEntry] = []
        cache_rows: list[CachedResponse] = []
        outputs: list[tuple[TeacherOutput, list[Any]]] = []
        totals = dict.fromkeys(
            ("calls", "hits", "failures", "input_tokens", "output_tokens"), 0
        ) | {"cost": Decimal(0)}
        self.preload_references(pair_of(i.request.custom_id)[0] for i in items)
        for item in items:
            response = item.response
            called = not response.from_cache
            cost = usd(item.cost) if called else Decimal(0)
            if called and item.ledger_id is not None:
                ledger_rows.append(
                    LedgerEntry(
                        pk=item.ledger_id,
                        status=LedgerStatus.COMPLETED if response.ok else LedgerStatus.FAILED,
                        input_tokens=response.input_tokens,
                        output_tokens=response.output_tokens,
                        cost_usd=cost,
                        attempt=max(1, response.attempts),
                        error=(response.error or "")[:5000],
                        http_status=_http_status(response.error),
                        provider_request_id=response.provider_request_id[:200],
                        completed_at=now,
                    )
                )
            if response.ok:
                if called:
                    cache_rows.append(
                        CachedResponse(
                            team_id=self.team_id, key=item.key, response=response.to_json()
                        )
                    )
                outputs.append(self._output(item, cost))
            totals["calls"] += 1 if called else 0
            totals["hits"] += 0 if called else 1
            totals["failures"] += 0 if response.ok else 1
            if called:
                totals["input_tokens"] += response.input_tokens
                totals["output_tokens"] += response.output_tokens
                totals["cost"] += cost
        with transaction.atomic(savepoint=False):  # inside DbPipe's transaction: no savepoint
            if ledger_rows:
                # A row already settled as lost (a newer attempt took this one for dead) is in
                # the totals at its estimate: its real figures replace it, not add to it.
                lost_calls, lost_cost = _lost_among([row.pk for row in ledger_rows])
                totals["calls"] -= lost_calls
                totals["cost"] -= lost_cost
                _complete_ledger_rows(ledger_rows)
            if cache_rows:
                CachedResponse.objects.bulk_create(cache_rows, ignore_conflicts=True)
            stored = self._store_outputs(outputs)
            TeacherRun.objects.filter(pk=self.run.pk).update(
                calls_made=F("calls_made") + totals["calls"],
                cache_hits=F("cache_hits") + totals["hits"],
                failures=F("failures") + totals["failures"],
                input_tokens=F("input_tokens") + totals["input_tokens"],
                output_tokens=F("output_tokens") + totals["output_tokens"],
                cost_usd=F("cost_usd") + totals["cost"],
            )
        self.stored += len(stored)

    def _output(self, item: CallResult, cost: Decimal) -> tuple[TeacherOutput, list[Any]]:
        response = item.response
        input_id, sample = pair_of(item.request.custom_id)
        parsed = parse_output(self.spec, response.raw_text)
        flags: list[Any] = []
        if self._check_output is not None:
            flags = self._check_output(
                self.spec,
                self._output_to_check(
                    output_id=item.request.custom_id,
                    raw=response.raw_text,
                    input_id=input_id,
                    reference=self.references.get(input_id),
                    confidence=response.label_confidence,
                ),
            )
        output = TeacherOutput(
            project_id=self.run.project_id,
            run=self.run,
            input_id=input_id,
            sample_index=sample,
            raw_text=response.raw_text,
            parsed=parsed.value,
            parse_error=parsed.error,
            finish_reason=response.finish_reason[:40],
            input_tokens=response.input_tokens,
            output_tokens=response.output_tokens,
            cost_usd=cost,
            latency_ms=response.latency_ms,
            confidence=response.label_confidence,
            top_logprobs=response.top_logprobs,
            label_distribution=(
                label_distribution(response.top_logprobs, self.spec.label_set)
                if response.label_confidence is not None
                else None
            ),
            rationale=parsed.rationale,
            cache_key=item.key,
            from_cache=response.from_cache,
            flag_codes=[f.code for f in flags],
        )
        return output, flags

    def _store_outputs(self, outputs: list[tuple[TeacherOutput, list[Any]]]) -> list[TeacherOutput]:
        """Insert the outputs (one statement); an output already stored (a redelivered or
        overlapping attempt) is skipped, row by row, without failing the others."""
        if not outputs:
            return []
        try:
            with transaction.atomic():
                TeacherOutput.objects.bulk_create([o for o, _ in outputs])
            stored = outputs
        except IntegrityError:
            stored = []
            for output, flags in outputs:
                output.pk = None
                try:
                    with transaction.atomic():
                        output.save(force_insert=True)
                    stored.append((output, flags))
                except IntegrityError:
                    continue
        flag_rows = [
            OutputFlag(
                output=output,
                project_id=self.run.project_id,
                code=f.code,
                message=f.message,
                score=f.score,
            )
            for output, flags in stored
            for f in flags
        ]
        if flag_rows:
            OutputFlag.objects.bulk_create(flag_rows, ignore_conflicts=True)
        if self.run.samples_per_input > 1:
            for input_id in sorted({o.input_id for o, _ in stored}):
                self._consistency(input_id)
        return [o for o, _ in stored]

    def _consistency(self, input_id: int) -> None:
        """Once every sample of an input is stored, flag them all if they disagree."""
        if self._check_output is None:
            return
        from worker.checks import SELF_INCONSISTENT

        outputs = list(
            TeacherOutput.objects.filter(run=self.run, input_id=input_id).order_by("sample_index")
        )
        if len(outputs) < self.run.samples_per_input:
            return
        first, rest = outputs[0], outputs[1:]
        flags = [
            f
            for f in self._check_output(
                self.spec,
                self._output_to_check(
                    output_id=first.pk,
                    raw=first.raw_text,
                    input_id=input_id,
                    samples=tuple(o.raw_text for o in rest),
                ),
            )
            if f.code == SELF_INCONSISTENT
        ]
        if not flags:
            return
        flag = flags[0]
        OutputFlag.objects.bulk_create(
            [
                OutputFlag(
                    output=o,
                    project_id=self.run.project_id,
                    code=flag.code,
                    message=flag.message,
                    score=flag.score,
                )
                for o in outputs
            ],
            ignore_conflicts=True,
        )
        for o in outputs:
            if flag.code not in o.flag_codes:
                o.flag_codes = [*o.flag_codes, flag.code]
                o.save(update_fields=["flag_codes"])


_LEDGER_COMPLETION_FIELDS = (
    "status",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "attempt",
    "error",
    "http_status",
    "provider_request_id",
    "completed_at",
)


def _complete_ledger_rows(rows: list[LedgerEntry]) -> None:
    """One parameterised UPDATE per row, sent together (executemany; psycopg pipelines it).
    Django's bulk_update builds a CASE per field per row, which cost ~2 ms of CPU a row."""
    from django.db import connection

    meta = LedgerEntry._meta
    columns = [f for f in meta.concrete_fields if f.name in _LEDGER_COMPLETION_FIELDS]
    quote = connection.ops.quote_name
    # Only quoted names from the model's own metadata are formatted in; values are parameters.
    sql = "UPDATE {} SET {} WHERE {} = %s".format(  # noqa: S608
        quote(meta.db_table),
        ", ".join(f"{quote(field.column)} = %s" for field in columns),
        quote(meta.pk.column),
    )
    params = [
        [field.get_db_prep_save(getattr(row, field.attname), connection) for field in columns]
        + [row.pk]
        for row in rows
    ]
    with connection.cursor() as cursor:
        cursor.executemany(sql, params)


def _lost_among(ledger_ids: list[int]) -> tuple[int, Decimal]:
    found = LedgerEntry.objects.filter(pk__in=ledger_ids, status=LedgerStatus.LOST).aggregate(
        n=Count("id"), cost=Sum("cost_usd")
    )
    return found["n"] or 0, found["cost"] or Decimal(0)


# Calls lost in a crash -------------------------------------------------------------------------


@dataclass(frozen=True)
class LostCalls:
    """Calls whose worker died before their answer was recorded: possibly paid, and sent again."""

    count: int = 0
    cost_usd: Decimal = Decimal(0)

    def __bool__(self) -> bool:
        return self.count > 0

    @property
    def text(self) -> str:
        return f"{self.count} calls, ~${self.cost_usd:.4f}"


def settle_lost_calls(run: TeacherRun) -> LostCalls:
    """Settle the "sent" rows an earlier attempt of ``run`` left: status "lost", charged at the
    worst case recorded when the call was sent (prompt tokens counted at send time at the input
    price + ``max_tokens`` at the output price: the most the provider can have billed), and added
    to the run's calls and cost, so the run's cost stays the ledger's sum. The resumed run sends
    those inputs again, each under a new ledger row. Call it before the attempt sends anything.
    Returns what this call settled."""
    fallback = _fallback_estimate(run)
    now = timezone.now()
    with transaction.atomic():
        rows = list(
            LedgerEntry.objects.select_for_update()
            .filter(run=run, status=LedgerStatus.SENT)
            .only("pk", "estimated_cost_usd")
        )
        if not rows:
            return LostCalls()
        for row in rows:
            row.status = LedgerStatus.LOST
            row.cost_usd = usd(
                fallback if row.estimated_cost_usd is None else row.estimated_cost_usd
            )
            row.error = "the worker died before the answer was recorded: possibly paid"
            row.completed_at = now
        LedgerEntry.objects.bulk_update(
            rows, ["status", "cost_usd", "error", "completed_at"], batch_size=500
        )
        settled = LostCalls(len(rows), sum((row.cost_usd for row in rows), Decimal(0)))
        TeacherRun.objects.filter(pk=run.pk).update(
            calls_made=F("calls_made") + settled.count,
            cost_usd=F("cost_usd") + settled.cost_usd,
        )
    return settled


def _fallback_estimate(run: TeacherRun) -> Decimal:
    """A call's worst case from the run's estimate, for rows sent before the ledger kept one."""
    estimate = run.estimate or {}
    worst = estimate.get("worst_case_usd")
    if worst is None:
        return Decimal(0)
    return Decimal(str(worst)) / max(1, int(estimate.get("calls") or 1))


def lost_calls(run: TeacherRun) -> LostCalls:
    """The run's calls lost in crashes so far (all attempts): possibly paid twice."""
    found = LedgerEntry.objects.filter(run=run, status=LedgerStatus.LOST).aggregate(
        n=Count("id"), cost=Sum("cost_usd")
    )
    return LostCalls(found["n"] or 0, found["cost"] or Decimal(0))


class DbPipe:
    """Group commit for the runner's callbacks: concurrent callers' cache reads, "sent" rows and
    results wait together for ONE database round (one transaction, one WAL flush) instead of one
    each. A caller resumes only after its rows are committed, so a "sent" row still exists
    before its call and an answer is durable before the next request is taken."""

    def __init__(self, recorder: Recorder) -> None:
        from asgiref.sync import sync_to_async

        self.recorder = recorder
        self.pending: list[tuple[str, Any, asyncio.Future[Any]]] = []
        self.draining = False
        self._flush = sync_to_async(self._flush_sync, thread_sensitive=True)

    async def submit(self, kind: str, payload: Any) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending.append((kind, payload, future))
        if not self.draining:
            self.draining = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self.pending:
                batch, self.pending = self.pending, []
                try:
                    answers = await self._flush([(kind, payload) for kind, payload, _ in batch])
                except Exception as exc:
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, _, future), answer in zip(batch, answers, strict=True):
                    if not future.done():
                        future.set_result(answer)
        finally:
            self.draining = False

    def _flush_sync(self, batch: list[tuple[str, Any]]) -> list[Any]:
        recorder = self.recorder
        keys = [payload for kind, payload in batch if kind == "get"]
        found = recorder.cache_get_many(keys) if keys else {}
        sent = [payload for kind, payload in batch if kind == "sent"]
        results = [payload for kind, payload in batch if kind == "result"]
        ids: list[int] = []
        with transaction.atomic():
            if sent:
                ids = recorder.sent_many([r for r, _ in sent], [k for _, k in sent])
            if results:
                recorder.results_many(results)
        sent_ids = iter(ids)
        answers: list[Any] = []
        for kind, payload in batch:
            if kind == "get":
                hit = found.get(payload)
                # A copy per caller: the runner stamps its own custom_id on it.
                answers.append(None if hit is None else TeacherResponse.from_json(hit.to_json()))
            else:
                answers.append(next(sent_ids) if kind == "sent" else None)
        return answers


def _http_status(error: str | None) -> int | None:
    if not error:
        return None
    import re

    match = re.search(r"HTTP (\d{3})", error)
    return int(match.group(1)) if match else None


def begin_segment(job: Job, run: TeacherRun) -> tuple[int, int]:
    total = len(run.input_ids) * run.samples_per_input
    done = TeacherOutput.objects.filter(run=run).count()
    TeacherRun.objects.filter(pk=run.pk).update(
        segment_started_at=timezone.now(), segment_done_start=done, stopped_reason=""
    )
    job_services.job_progress(job=job, done=done, total=total)
    return done, total


def ledger_totals(run: TeacherRun) -> dict[str, Any]:
    sums = LedgerEntry.objects.filter(run=run).aggregate(
        cost=Sum("cost_usd"), input_tokens=Sum("input_tokens"), output_tokens=Sum("output_tokens")
    )
    return {
        "cost_usd": sums["cost"] or Decimal(0),
        "input_tokens": sums["input_tokens"] or 0,
        "output_tokens": sums["output_tokens"] or 0,
    }


def population_checks_summary(run: TeacherRun) -> dict[str, int]:
    """Length outliers and repeated outputs need every output of the project: they run once a
    run's answers are stored (also when some are missing), replacing the previous ones."""
    from teachers.checks import population_checks_run

    found = population_checks_run(project=run.project)
    return {f"flagged_{code}": n for code, n in found.items() if code != "outputs_checked"}
