"""Write-behind recording: answers never wait for the database beyond a bounded time.

Each answered input becomes a ``Record`` put on ONE bounded in-process queue; a daemon thread
drains it in batches and writes, per batch and in one transaction: the request log
(GatewayRequest), the ledger rows of the teacher calls made (on the project's gateway teacher
run, whose totals stay equal to its ledger), the team's response cache, and — for sampled
requests with recording on — the input as an InputRow of the project and the teacher's answer
as a TeacherOutput (deduplicated by content), flagged for review when the student disagreed.

When the queue is full the record is dropped and the drop is COUNTED in the database
(GatewayDrops, one UPDATE), so "recorded rows + drops = sampled requests" always holds.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connection, transaction
from django.db.models import F
from django.utils import timezone

from gateway.drift import unseen_share
from gateway.models import GatewayDrops, GatewayPolicy, GatewayRequest
from projects.models import InputRow
from teachers.models import (
    CachedResponse,
    LedgerEntry,
    LedgerStatus,
    OutputFlag,
    TeacherOutput,
    TeacherRun,
)
from worker.taskspec import ParsedOutput
from worker.teachers.base import TeacherResponse

log = logging.getLogger(__name__)

DISAGREEMENT_FLAG = "gateway_disagreement"
PURGE_EVERY_S = 600


@dataclass
class TeacherCall:
    """A teacher answer to write down: the ledger row (when it was a real call) and the cache."""

    run_id: int
    key: str
    response: TeacherResponse
    cost: Decimal
    parsed: ParsedOutput


@dataclass
class Record:
    row: GatewayRequest
    team_id: int
    inputs: dict[str, Any]
    teacher: TeacherCall | None = None
    record_input: bool = False  # sampled, and the project records its traffic
    extra: dict[str, Any] = field(default_factory=dict)


class Recorder:
    def __init__(self, maxsize: int) -> None:
        self.queue: queue.Queue[Record] = queue.Queue(maxsize=maxsize)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._last_purge = 0.0

    def submit(self, record: Record) -> bool:
        """Queue ``record`` without waiting; when the queue is full, count the drop and say so."""
        self._ensure_thread()
        try:
            self.queue.put_nowait(record)
            return True
        except queue.Full:
            count_drop_or_log(project_id=record.row.project_id, cost=record.row.cost_usd)
            return False

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued record is written (tests, benchmarks, shutdown)."""
        deadline = time.monotonic() + timeout
        while self.queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def _ensure_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="gateway-recorder", daemon=True
                )
                self._thread.start()

    def _loop(self) -> None:
        while True:
            first = self.queue.get()
            batch = [first]
            while len(batch) < 500:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            try:
                close_old_connections()
                try:
                    write_records(batch)
                except Exception:  # one bad record must not take the batch with it
                    log.exception("gateway: writing %d records failed; one by one", len(batch))
                    write_one_by_one(batch)
                self._maybe_purge()
            except Exception:  # the thread must survive anything; the log says what
                log.exception("gateway: the recorder failed on %d records", len(batch))
            finally:
                if self.queue.empty():
                    connection.close()  # idle: hold no database connection
                for _ in batch:
                    self.queue.task_done()

    def _maybe_purge(self) -> None:
        if time.monotonic() - self._last_purge < PURGE_EVERY_S:
            return
        self._last_purge = time.monotonic()
        purge_expired_requests()


def write_one_by_one(batch: list[Record]) -> None:
    """After a failed batch: each record alone; one that still cannot be written (e.g. inputs
    PostgreSQL refuses) is counted as a drop, so recorded + dropped still equals requests."""
    for record in batch:
        try:
            close_old_connections()
            write_records([record])
        except Exception:
            log.exception("gateway: a record of project %s was dropped", record.row.project_id)
            connection.close()  # a broken connection is not reused for the count
            count_drop_or_log(
                project_id=record.row.project_id, cost=record.row.cost_usd or Decimal(0)
            )


def count_drop_or_log(*, project_id: int, cost: Decimal | None) -> None:
    """Count a drop; when even the count cannot be stored (the project was deleted meanwhile,
    the database is down) say so in the log and go on: the other records, and the caller's
    answer, must not fail with it."""
    try:
        count_drop(project_id=project_id, cost=cost or Decimal(0))
    except Exception:
        log.exception("gateway: a dropped record of project %s could not be counted", project_id)
        connection.close()


def count_drop(*, project_id: int, cost: Decimal) -> None:
    now = timezone.now()
    updated = GatewayDrops.objects.filter(project_id=project_id).update(
        dropped=F("dropped") + 1,
        dropped_cost_usd=F("dropped_cost_usd") + cost,
        last_dropped_at=now,
    )
    if not updated:
        _, created = GatewayDrops.objects.get_or_create(
            project_id=project_id,
            defaults={"dropped": 1, "dropped_cost_usd": cost, "last_dropped_at": now},
        )
        if not created:
            count_drop(project_id=project_id, cost=cost)


def purge_expired_requests() -> int:
    """The request log keeps each project's retention period (recorded inputs stay: they are
    project data now, and may be in frozen versions)."""
    deleted = 0
    now = timezone.now()
    for project_id, days in GatewayPolicy.objects.values_list("project_id", "retention_days"):
        deleted += GatewayRequest.objects.filter(
            project_id=project_id, created_at__lt=now - timedelta(days=days)
        ).delete()[0]
    return deleted


def write_records(batch: list[Record]) -> None:
    for record in batch:
        if record.row.unseen_share is None:
            record.row.unseen_share = unseen_share(record.row.project_id, record.inputs)
    with transaction.atomic():
        _ledger_and_cache(batch)
        _recorded_inputs(batch)
        GatewayRequest.objects.bulk_create([r.row for r in batch], batch_size=500)


def _ledger_and_cache(batch: list[Record]) -> None:
    now = timezone.now()
    ledger: list[LedgerEntry] = []
    cache: list[CachedResponse] = []
    totals: dict[int, dict[str, Any]] = {}
    for record in batch:
        call = record.teacher
        if call is None:
            continue
        t = totals.setdefault(
            call.run_id, {"calls": 0, "hits": 0, "in": 0, "out": 0, "cost": Decimal(0)}
        )
        if call.response.from_cache:
            t["hits"] += 1
            continue
        t["calls"] += 1
        t["in"] += call.response.input_tokens
        t["out"] += call.response.output_tokens
        t["cost"] += call.cost
        ledger.append(
            LedgerEntry(
                run_id=call.run_id,
                cache_key=call.key,
                attempt=max(1, call.response.attempts),
                status=LedgerStatus.COMPLETED,
                input_tokens=call.response.input_tokens,
                output_tokens=call.response.output_tokens,
                cost_usd=call.cost,
                provider_request_id=call.response.provider_request_id[:200],
                completed_at=now,
            )
        )
        cache.append(
            CachedResponse(team_id=record.team_id, key=call.key, response=call.response.to_json())
        )
    LedgerEntry.objects.bulk_create(ledger, batch_size=500)
    CachedResponse.objects.bulk_create(cache, batch_size=500, ignore_conflicts=True)
    for run_id, t in totals.items():
        TeacherRun.objects.filter(pk=run_id).update(
            calls_made=F("calls_made") + t["calls"],
            cache_hits=F("cache_hits") + t["hits"],
            input_tokens=F("input_tokens") + t["in"],
            output_tokens=F("output_tokens") + t["out"],
            cost_usd=F("cost_usd") + t["cost"],
        )


def _recorded_inputs(batch: list[Record]) -> None:
    """Sampled inputs become InputRows of the project (by content hash: a repeated input is one
    row) with the teacher's answer as a TeacherOutput of the gateway run (one per input)."""
    chosen = [r for r in batch if r.record_input and r.teacher is not None]
    if not chosen:
        return
    InputRow.objects.bulk_create(
        [
            InputRow(
                project_id=r.row.project_id,
                data=r.inputs,
                content_hash=r.row.input_hash,
                search_text=" ".join(str(v) for v in r.inputs.values()).lower(),
            )
            for r in chosen
        ],
        ignore_conflicts=True,
    )
    ids = _ids_by_project(chosen)
    outputs = []
    for r in chosen:
        call = r.teacher
        assert call is not None
        input_id = ids.get(r.row.input_hash)
        if input_id is None:
            continue
        r.row.recorded_input_id = input_id
        flagged = r.row.agrees is False
        outputs.append(
            TeacherOutput(
                project_id=r.row.project_id,
                run_id=call.run_id,
                input_id=input_id,
                raw_text=call.response.raw_text,
                parsed=call.parsed.value,
                parse_error=call.parsed.error,
                finish_reason=call.response.finish_reason,
                input_tokens=call.response.input_tokens,
                output_tokens=call.response.output_tokens,
                cost_usd=call.cost,
                latency_ms=call.response.latency_ms,
                confidence=call.response.label_confidence,
                cache_key=call.key,
                from_cache=call.response.from_cache,
                flag_codes=[DISAGREEMENT_FLAG] if flagged else [],
            )
        )
    TeacherOutput.objects.bulk_create(outputs, batch_size=500, ignore_conflicts=True)
    _flag_disagreements(chosen)


def _ids_by_project(chosen: list[Record]) -> dict[str, int]:
    found: dict[str, int] = {}
    for project_id in {r.row.project_id for r in chosen}:
        hashes = [r.row.input_hash for r in chosen if r.row.project_id == project_id]
        found.update(
            InputRow.objects.filter(project_id=project_id, content_hash__in=hashes).values_list(
                "content_hash", "id"
            )
        )
    return found


def _flag_disagreements(chosen: list[Record]) -> None:
    """A disagreement lands in the review queue with a flag saying what the student answered."""
    wanted = {
        (r.teacher.run_id, r.row.recorded_input_id): r
        for r in chosen
        if r.teacher is not None and r.row.agrees is False and r.row.recorded_input_id
    }
    if not wanted:
        return
    outputs = TeacherOutput.objects.filter(
        run_id__in={k[0] for k in wanted}, input_id__in={k[1] for k in wanted}, sample_index=0
    ).only("id", "run_id", "input_id", "project_id", "flag_codes")
    flags = []
    for output in outputs:
        r = wanted.get((output.run_id, output.input_id))
        if r is None:
            continue
        flags.append(
            OutputFlag(
                output=output,
                project_id=output.project_id,
                code=DISAGREEMENT_FLAG,
                message=f"in production the student answered {r.row.student_answer!r}",
                score=r.row.student_confidence,
            )
        )
        if DISAGREEMENT_FLAG not in output.flag_codes:
            output.flag_codes = [*output.flag_codes, DISAGREEMENT_FLAG]
            output.save(update_fields=["flag_codes"])
    OutputFlag.objects.bulk_create(flags, ignore_conflicts=True)


_RECORDER: Recorder | None = None
_RECORDER_LOCK = threading.Lock()


def recorder() -> Recorder:
    global _RECORDER
    with _RECORDER_LOCK:
        size = int(settings.GATEWAY_QUEUE_SIZE)
        # A changed setting takes effect for new records; the old recorder drains what it holds.
        if _RECORDER is None or _RECORDER.queue.maxsize != size:
            _RECORDER = Recorder(size)
        return _RECORDER
