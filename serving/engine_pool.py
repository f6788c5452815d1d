"""The serving process's inference side: loaded students, engine threads that batch
concurrent requests, bounded admission (slots, bounded wait), and the request-log writer.

Threads: the HTTP server answers each connection on its own thread; they all hand work to the
engine threads — one per batch the engine can run at once (``engine_workers``: CTranslate2 runs
one batch per core with one thread each; transformers and vLLM use every core for one batch, so
a second thread would only fight over them). While a batch runs, new requests queue; the next
batch takes every queued request of the same model at once.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings

from serving.models import ServedModel, ServingRequest
from worker.serving_engine import Answer, ServedStudent, ServeError

log = logging.getLogger(__name__)

MAX_BATCH = 16


@dataclass
class Work:
    student: ServedStudent
    prompt: list[int]
    max_tokens: int
    stream: bool = False
    confidence: bool = False  # label answers: compute P(label, then end of turn)
    done: threading.Event = field(default_factory=threading.Event)
    answer: Answer | None = None
    error: BaseException | None = None
    deltas: queue.Queue[str | None] = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    queued_at: float = field(default_factory=time.perf_counter)
    started_at: float = 0.0


class Students:
    """Students loaded on demand (converted once into the data dir), kept while served."""

    def __init__(self, engine: str) -> None:
        self.engine = engine
        self._loaded: dict[tuple[int, str], ServedStudent] = {}
        self._lock = threading.Lock()

    def get(self, served: ServedModel) -> ServedStudent:
        key = (served.pk, served.student.path)
        with self._lock:  # loads are rare; one at a time keeps memory and cores sane
            found = self._loaded.get(key)
            if found is None:
                model_dir = Path(settings.DATA_DIR) / served.student.path
                if not (model_dir / "config.json").is_file():
                    raise ServeError(
                        f"the student's files are gone ({served.student.path}); serve it again "
                        "after re-training or re-registering it",
                        status=503,
                        type="server_error",
                        code="model_files_missing",
                    )
                started = time.perf_counter()
                found = ServedStudent.load(
                    task=served.project.task_spec(),
                    model_dir=model_dir,
                    cache_dir=Path(settings.DATA_DIR) / "serving" / f"student-{served.student_id}",
                    engine=self.engine,
                )
                log.info(
                    "serving: loaded %s (student %s) with %s in %.1f s",
                    served.slug,
                    served.student_id,
                    found.backend.name,
                    time.perf_counter() - started,
                )
                self._loaded[key] = found
            return found


class EnginePool:
    """Admission (``capacity`` requests at once, a bounded wait for a slot) and the engine loop."""

    def __init__(self, *, capacity: int, queue_wait_s: float, workers: int = 1) -> None:
        self.capacity = capacity
        self.queue_wait_s = queue_wait_s
        self._slots = threading.BoundedSemaphore(capacity)
        self._queue: queue.Queue[Work] = queue.Queue()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, name=f"engine-{i}", daemon=True)
            for i in range(max(1, workers))
        ]
        for thread in self._threads:
            thread.start()

    def admit(self, timeout: float | None = None) -> bool:
        """Take a slot, waiting at most ``timeout`` (default ``queue_wait_s``); False: none came
        free (over capacity: 503)."""
        return self._slots.acquire(timeout=self.queue_wait_s if timeout is None else timeout)

    def release(self) -> None:
        self._slots.release()

    def submit(self, work: Work) -> Work:
        self._queue.put(work)
        return work

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if first.stream:
                self._run_stream(first)
                continue
            batch: list[Work] = [first]
            later: list[Work] = []
            while len(batch) < MAX_BATCH:
                try:
                    other = self._queue.get_nowait()
                except queue.Empty:
                    break
                same = (
                    other.student is first.student
                    and other.max_tokens == first.max_tokens
                    and other.confidence == first.confidence
                )
                (batch if same and not other.stream else later).append(other)
            for other in later:
                self._queue.put(other)
            self._run_batch(batch)

    def _run_batch(self, batch: list[Work]) -> None:
        live = [w for w in batch if not w.cancelled.is_set()]
        now = time.perf_counter()
        for w in batch:
            w.started_at = now
        try:
            if live:
                first = live[0]
                answers = first.student.answer_batch(
                    [w.prompt for w in live], first.max_tokens, confidence=first.confidence
                )
                for w, a in zip(live, answers, strict=True):
                    w.answer = a
        except BaseException as exc:
            log.exception("serving: batch failed")
            for w in live:
                w.error = exc
        for w in batch:
            w.done.set()

    def _run_stream(self, work: Work) -> None:
        work.started_at = time.perf_counter()
        try:
            if work.student.task.output_kind == "text":
                for delta in work.student.stream_text(work.prompt, work.max_tokens):
                    if work.cancelled.is_set():  # the client went away: free the engine
                        break
                    work.deltas.put(delta)
            else:  # label / json: answered whole (constrained or checked), then sent
                work.answer = work.student.answer_batch(
                    [work.prompt], work.max_tokens, confidence=work.confidence
                )[0]
        except BaseException as exc:
            log.exception("serving: stream failed")
            work.error = exc
        work.deltas.put(None)
        work.done.set()


def stream_deltas(work: Work) -> Iterator[str]:
    while True:
        delta = work.deltas.get()
        if delta is None:
            return
        yield delta


class RequestLog:
    """Writes ServingRequest rows in batches from one thread, off the request's path."""

    def __init__(self, flush_every_s: float = 0.25) -> None:
        self._queue: queue.Queue[ServingRequest] = queue.Queue()
        self._stop = threading.Event()
        self._flush_every_s = flush_every_s
        self._thread = threading.Thread(target=self._loop, name="request-log", daemon=True)
        self._thread.start()

    def add(self, entry: ServingRequest) -> None:
        self._queue.put(entry)

    def _drain(self) -> list[ServingRequest]:
        rows = []
        while True:
            try:
                rows.append(self._queue.get_nowait())
            except queue.Empty:
                return rows

    def _write(self) -> None:
        from django.db import close_old_connections

        from serving.services import serving_requests_record

        rows = self._drain()
        if not rows:
            return
        try:
            close_old_connections()
            serving_requests_record(entries=rows)
        except Exception:  # a log outage must not take the endpoint down
            log.exception("serving: could not write %d request log rows", len(rows))

    def _loop(self) -> None:
        while not self._stop.wait(self._flush_every_s):
            self._write()
        self._write()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def answer_payload(answer: Answer) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if answer.confidence is not None:
        extra["confidence"] = float(f"{answer.confidence:.6g}")
    if answer.attempts > 1:
        extra["attempts"] = answer.attempts
    return extra


def answer_logprobs(answer: Answer) -> dict[str, Any] | None:
    """OpenAI's ``choices[].logprobs`` for a label answered with its confidence: one entry for
    the whole label (its log-probability, end of turn included), no alternatives."""
    if answer.confidence is None or answer.confidence <= 0:
        return None
    return {
        "content": [
            {
                "token": answer.text,
                "logprob": math.log(answer.confidence),
                "bytes": list(answer.text.encode("utf-8")),
                "top_logprobs": [],
            }
        ],
        "refusal": None,
    }
