"""Chaos: a live run of 200 inputs whose worker is killed (SIGKILL) three times, re-queued each
time by the reaper task run as beat runs it, and finished by a fresh worker. A kill costs at most
the calls in flight, and each of those is in the ledger ("lost", at its worst-case price): the
ledger has one row per request the provider received, and the run's cost is the ledger's sum."""

from __future__ import annotations

import re
import threading
from collections import Counter
from decimal import Decimal
from typing import Any

import pytest

from jobs.models import Job, JobStatus
from jobs.tasks import reap_stale_jobs
from teachers.models import LedgerEntry, LedgerStatus, TeacherOutput
from tests.conftest import wait_until
from tests.fakes.provider_server import FakeRequest, first_label_responder
from tests.teachers.teacher_support import label_project, openai_credential, reload, start

pytestmark = pytest.mark.slow

TICKET = re.compile(r"Ticket (\d+):")
INPUTS = 200
CONCURRENCY = 4


class Gate:
    """A responder that holds every answer while closed. Closed, the provider soon holds all the
    worker's calls, so a kill then finds each of them sent: the ledger's "sent" row is committed
    before its call, and a kill between that commit and the request leaving the worker would
    leave a row for a request the provider never saw (the ledger errs on the paying side)."""

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.opened.set()

    def __call__(self, request: FakeRequest) -> Any:
        self.opened.wait(timeout=60)
        return first_label_responder(request)


def ticket_of(text: str) -> int:
    found = TICKET.search(text)
    assert found is not None
    return int(found.group(1))


def test_three_kills_cost_only_the_calls_in_flight_and_the_ledger_counts_each(
    worker_factory, team, owner, fake_provider, settings
):  # type: ignore[no-untyped-def]
    # The reaper re-queues a job whose heartbeat (every second while it runs) is 3 s old; the
    # default attempt limit (3) stands: attempts that made progress don't count toward it.
    settings.JOB_HEARTBEAT_STALE_AFTER_S = 3
    gate = Gate()
    fake_provider.responder = gate
    fake_provider.latency_s = 0.1
    project = label_project(team, owner, n=INPUTS)
    tickets = {row.pk: ticket_of(row.data["text"]) for row in project.inputs.all()}
    worker = worker_factory()
    run = start(
        project, owner, openai_credential(team, owner, fake_provider), concurrency=CONCURRENCY
    )

    lost_at_kills: list[set[int]] = []
    for progress in (30, 90, 150):
        wait_until(
            lambda p=progress: TeacherOutput.objects.filter(run=run).count() >= p,
            timeout=90,
            message=f"the worker to store {progress} answers",
        )
        gate.opened.clear()
        wait_until(
            lambda: fake_provider._active == CONCURRENCY,
            timeout=30,
            message="the provider to hold every call in flight",
        )
        worker.kill()
        gate.opened.set()
        sent = LedgerEntry.objects.filter(run=run, status=LedgerStatus.SENT)
        lost_at_kills.append({tickets[e.input_id] for e in sent})
        assert len(lost_at_kills[-1]) == CONCURRENCY
        assert Job.objects.get(pk=run.job_id).status == JobStatus.RUNNING  # nobody told the db

        worker = worker_factory()  # started first: starting a worker purges the queue
        wait_until(
            lambda: reap_stale_jobs()["requeued"] == 1,
            timeout=30,
            interval=0.5,
            message="the reaper to re-queue the dead worker's job",
        )

    wait_until(
        lambda: Job.objects.get(pk=run.job_id).status in {JobStatus.SUCCEEDED, JobStatus.FAILED},
        timeout=120,
        message="the last worker to finish the run",
    )
    run = reload(run)
    assert run.job.status == JobStatus.SUCCEEDED, run.job.error + "".join(worker.log[-30:])
    assert run.job.attempts == 4

    # One output per input.
    per_input = Counter(TeacherOutput.objects.filter(run=run).values_list("input_id", flat=True))
    assert len(per_input) == INPUTS and set(per_input.values()) == {1}

    # One ledger row per request the provider received, input by input; none left "sent".
    requests = Counter(
        ticket_of(r.body["messages"][-1]["content"]) for r in fake_provider.requests("openai.chat")
    )
    rows = Counter(
        tickets[i] for i in LedgerEntry.objects.filter(run=run).values_list("input_id", flat=True)
    )
    assert rows == requests
    assert sum(rows.values()) == fake_provider.count("openai.chat") == INPUTS + 3 * CONCURRENCY
    assert not LedgerEntry.objects.filter(run=run, status=LedgerStatus.SENT).exists()

    # What was paid twice is exactly the calls in flight at the kills, each counted as lost.
    lost = list(LedgerEntry.objects.filter(run=run, status=LedgerStatus.LOST))
    assert sorted(tickets[e.input_id] for e in lost) == sorted(
        t for kill in lost_at_kills for t in kill
    )
    assert {t for t, n in requests.items() if n > 1} == set().union(*lost_at_kills)
    assert all(e.cost_usd > 0 for e in lost)

    # The run's cost (run page, job result) is the ledger's sum, lost calls included.
    ledger = sum((e.cost_usd for e in LedgerEntry.objects.filter(run=run)), Decimal(0))
    assert run.cost_usd == ledger == Decimal(run.job.result["cost_usd"])
    assert run.calls_made == len(lost) + INPUTS
    lost_cost = sum((e.cost_usd for e in lost), Decimal(0))
    assert run.job.result["possibly_paid_twice"] == f"{len(lost)} calls, ~${lost_cost:.4f}"
