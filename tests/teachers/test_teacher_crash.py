"""Crash safety with real Celery worker processes: a worker killed (SIGKILL) in the middle of a
300-input teacher run, the reaper, and a second worker that finishes the run without paying for
anything twice except the calls that were in flight at the kill, which the ledger charges."""

from __future__ import annotations

import re
from collections import Counter
from decimal import Decimal

import pytest
from django.core.cache import cache
from django.utils import timezone

from jobs import services as job_services
from jobs.models import Job, JobStatus
from teachers.models import LedgerEntry, LedgerStatus, TeacherOutput
from tests.conftest import wait_until
from tests.teachers.teacher_support import label_project, openai_credential, reload, start

pytestmark = pytest.mark.slow

TICKET = re.compile(r"Ticket (\d+):")


def calls_per_ticket(server) -> Counter[int]:  # type: ignore[no-untyped-def]
    counts: Counter[int] = Counter()
    for request in server.requests("openai.chat"):
        if request.body is None:  # cut off mid-upload by the kill: never a call the provider ran
            continue
        counts[int(TICKET.search(request.body["messages"][-1]["content"]).group(1))] += 1
    return counts


def test_a_run_killed_mid_flight_is_finished_by_a_new_worker_without_repeat_calls(
    worker_factory, team, owner, fake_provider
):  # type: ignore[no-untyped-def]
    fake_provider.latency_s = 0.15  # slow enough that calls are in flight at the kill
    project = label_project(team, owner, n=300)
    tickets = {
        row.pk: int(TICKET.search(row.data["text"]).group(1)) for row in project.inputs.all()
    }
    first = worker_factory()
    run = start(project, owner, openai_credential(team, owner, fake_provider), concurrency=8)
    wait_until(
        lambda: (
            TeacherOutput.objects.filter(run=run).count() >= 60
            and LedgerEntry.objects.filter(run=run, status=LedgerStatus.SENT).exists()
        ),
        timeout=90,
        message="the first worker to store 60 answers with calls in flight",
    )
    first.kill()
    stored_at_kill = TeacherOutput.objects.filter(run=run).count()
    assert stored_at_kill < 300
    assert Job.objects.get(pk=run.job_id).status == JobStatus.RUNNING  # nobody told the database
    sent_at_kill = {
        tickets[e.input_id] for e in LedgerEntry.objects.filter(run=run, status=LedgerStatus.SENT)
    }
    assert sent_at_kill, "no call was in flight at the kill: the test did not test anything"

    # The dead worker's heartbeat goes stale; the reaper re-queues the job for a new worker.
    Job.objects.filter(pk=run.job_id).update(
        heartbeat_at=timezone.now() - timezone.timedelta(hours=1)
    )
    cache.delete(job_services.live_progress_key(run.job_id))
    second = worker_factory()
    assert job_services.jobs_reap_stale(stale_after_s=60, max_attempts=3) == {
        "requeued": 1,
        "failed": 0,
        "sent": 0,
    }
    wait_until(
        lambda: Job.objects.get(pk=run.job_id).status in {JobStatus.SUCCEEDED, JobStatus.FAILED},
        timeout=120,
        message="the second worker to finish the run",
    )
    run = reload(run)
    assert run.job.status == JobStatus.SUCCEEDED, run.job.error + "".join(second.log[-30:])
    assert run.job.attempts == 2

    # Every input has exactly one stored answer.
    per_input = Counter(TeacherOutput.objects.filter(run=run).values_list("input_id", flat=True))
    assert len(per_input) == 300 and set(per_input.values()) == {1}

    # Upstream, no input was called twice except those in flight at the kill, and every one of
    # those is in the ledger as "lost" (a call that may have been paid for, with no answer),
    # charged at its worst case; none is left "sent".
    counts = calls_per_ticket(fake_provider)
    assert set(counts) == set(range(300))
    twice = {ticket for ticket, n in counts.items() if n > 1}
    assert max(counts.values()) <= 2
    assert twice <= sent_at_kill
    lost = list(LedgerEntry.objects.filter(run=run, status=LedgerStatus.LOST))
    assert {tickets[e.input_id] for e in lost} == sent_at_kill  # the crash's trace stays
    assert all(e.cost_usd > 0 for e in lost)
    assert not LedgerEntry.objects.filter(run=run, status=LedgerStatus.SENT).exists()
    # Every call that reached the provider has a ledger row (rows ≥ calls, per input).
    rows = Counter(
        tickets[input_id]
        for input_id in LedgerEntry.objects.filter(run=run).values_list("input_id", flat=True)
    )
    assert all(rows[ticket] >= n for ticket, n in counts.items())

    # The page's cost is the ledger's sum.
    ledger = sum((e.cost_usd for e in LedgerEntry.objects.filter(run=run)), Decimal(0))
    assert run.cost_usd == ledger > 0
