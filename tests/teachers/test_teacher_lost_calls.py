"""Calls a dead worker left in flight: when the run starts again they are settled in the ledger as
"lost" (possibly paid), charged at their worst-case price, and counted in the run's cost; each
input is sent again under a new ledger row. No process is killed here: the dead attempt is its
claim and its "sent" rows, written through the same Recorder a worker uses."""

from __future__ import annotations

from collections import Counter
from decimal import ROUND_HALF_UP, Decimal

import pytest
from django.core.cache import cache
from django.urls import reverse
from django.utils import timezone

from jobs import services as job_services
from jobs.models import Job, JobStatus
from teachers.models import LedgerEntry, LedgerStatus, TeacherOutput, TeacherRun
from teachers.recording import Recorder
from teachers.run_requests import build_requests, missing_pairs, provider_config_for_run
from teachers.selectors import run_progress
from tests.teachers.teacher_support import execute, label_project, openai_credential, reload, start
from worker import pricing
from worker.pricing import DEFAULT_PRICES
from worker.teacher_cache import cache_key

pytestmark = pytest.mark.django_db(transaction=True)

MINI = DEFAULT_PRICES["gpt-4o-mini"]


def worst_case(run: TeacherRun, request, *, batch: bool = False) -> Decimal:  # type: ignore[no-untyped-def]
    """Prompt tokens (tiktoken: exact for gpt-4o-mini) + max_tokens, at the model's price."""
    tokens = pricing.count_message_tokens(request.messages, request.model)
    assert tokens.exact
    cost = MINI.cost(tokens.tokens, run.max_tokens, batch=batch)
    return cost.quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)


def die_with_calls_in_flight(run: TeacherRun, n: int, *, batch: bool = False) -> dict[int, Decimal]:
    """An attempt claims the job, writes "sent" rows for ``n`` calls and dies; the reaper
    re-queues the job. Returns the worst case of each call, by input id."""
    assert job_services.job_claim(job_id=run.job_id) is not None
    run = reload(run)
    spec = run.project.task_spec()
    requests, _ = build_requests(run, spec, missing_pairs(run)[:n])
    config = provider_config_for_run(run)
    Recorder(run, spec, batch=batch).sent_many(requests, [cache_key(config, r) for r in requests])
    Job.objects.filter(pk=run.job_id).update(
        heartbeat_at=timezone.now() - timezone.timedelta(hours=1)
    )
    cache.delete(job_services.live_progress_key(run.job_id))
    assert job_services.jobs_reap_stale(stale_after_s=60, max_attempts=10)["requeued"] == 1
    return {int(r.custom_id.split("-")[0]): worst_case(run, r, batch=batch) for r in requests}


def ledger_sum(run: TeacherRun) -> Decimal:
    return sum((e.cost_usd for e in LedgerEntry.objects.filter(run=run)), Decimal(0))


def test_calls_left_sent_by_a_dead_attempt_are_settled_as_lost_at_their_worst_case(
    team, owner, client_for, fake_provider
):  # type: ignore[no-untyped-def]
    project = label_project(team, owner, n=6)
    run = start(project, owner, openai_credential(team, owner, fake_provider), concurrency=2)
    worst = die_with_calls_in_flight(run, 3)

    run = execute(run)

    assert run.job.status == JobStatus.SUCCEEDED, run.job.error
    assert TeacherOutput.objects.filter(run=run).count() == 6
    lost = list(LedgerEntry.objects.filter(run=run, status=LedgerStatus.LOST))
    assert {e.input_id: e.cost_usd for e in lost} == worst
    assert all(e.cost_usd > 0 and e.completed_at for e in lost)
    assert not LedgerEntry.objects.filter(run=run, status=LedgerStatus.SENT).exists()
    # Each lost input was sent again under its own row: 6 completed rows + 3 lost ones.
    per_input = Counter(LedgerEntry.objects.filter(run=run).values_list("input_id", flat=True))
    assert sorted(per_input.values()) == [1, 1, 1, 2, 2, 2]
    assert LedgerEntry.objects.filter(run=run, status=LedgerStatus.COMPLETED).count() == 6
    assert fake_provider.count("openai.chat") == 6
    # The run's figures include the lost calls: its cost is the ledger's sum.
    lost_cost = sum(worst.values(), Decimal(0))
    assert run.calls_made == 9
    assert run.cost_usd == ledger_sum(run) > lost_cost
    assert Decimal(run.job.result["cost_usd"]) == run.cost_usd
    assert run.job.result["possibly_paid_twice"] == f"3 calls, ~${lost_cost:.4f}"
    progress = run_progress(run=run)
    assert progress.lost.count == 3 and progress.lost.cost_usd == lost_cost
    assert progress.cost_usd == run.cost_usd
    page = client_for(owner).get(reverse("teachers:teacher_run_progress", args=[run.pk]))
    assert f"possibly paid twice: 3 calls, ~${lost_cost:.4f}" in page.content.decode()


def test_a_run_without_a_crash_shows_no_lost_calls(team, owner, client_for, fake_provider):  # type: ignore[no-untyped-def]
    project = label_project(team, owner, n=3)
    run = execute(start(project, owner, openai_credential(team, owner, fake_provider)))
    assert run.job.status == JobStatus.SUCCEEDED, run.job.error
    assert "possibly_paid_twice" not in run.job.result
    assert not run_progress(run=run).lost
    page = client_for(owner).get(reverse("teachers:teacher_run_progress", args=[run.pk]))
    assert "possibly paid twice" not in page.content.decode()


def test_a_batch_attempt_that_died_while_submitting_is_charged_and_submitted_again(
    team, owner, fake_provider
):  # type: ignore[no-untyped-def]
    """Killed after its ledger rows were committed and before the batch's id was stored, an
    attempt cannot tell whether the provider has the batch: its rows are charged as lost (at the
    batch price) and the new attempt submits the requests again under new rows."""
    project = label_project(team, owner, n=4)
    credential = openai_credential(team, owner, fake_provider)
    run = start(project, owner, credential, mode="batch")
    worst = die_with_calls_in_flight(run, 4, batch=True)

    run = execute(run)

    assert run.job.status == JobStatus.RUNNING, run.job.error  # submitted, polling
    lost = LedgerEntry.objects.filter(run=run, status=LedgerStatus.LOST)
    assert {e.input_id: e.cost_usd for e in lost} == worst
    resent = LedgerEntry.objects.filter(run=run, status=LedgerStatus.SENT)
    assert resent.count() == 4
    assert {e.provider_request_id for e in resent} == {f"batch:{run.batch_state['batch_id']}"}
    assert run.cost_usd == ledger_sum(run) == sum(worst.values(), Decimal(0))


def test_a_lost_call_answered_after_all_is_counted_once_at_its_real_price(
    team, owner, fake_provider
):  # type: ignore[no-untyped-def]
    """An attempt taken for dead that was only slow records its answer after the new attempt
    settled the call as lost: the real figures replace the estimate, the totals stay the ledger's."""
    from teachers.recording import CallResult, settle_lost_calls
    from worker.teachers.base import TeacherResponse

    project = label_project(team, owner, n=2)
    run = reload(start(project, owner, openai_credential(team, owner, fake_provider)))
    spec = run.project.task_spec()
    requests, _ = build_requests(run, spec, missing_pairs(run))
    config = provider_config_for_run(run)
    keys = [cache_key(config, r) for r in requests]
    recorder = Recorder(run, spec, batch=False)
    ids = recorder.sent_many(requests, keys)
    settled = settle_lost_calls(run)
    assert settled.count == 2 and settled.cost_usd > 0
    assert reload(run).cost_usd == ledger_sum(run) == settled.cost_usd

    answer = TeacherResponse(
        custom_id=requests[0].custom_id, raw_text="card_arrival", input_tokens=10, output_tokens=2
    )
    real = MINI.cost(10, 2).quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)
    recorder.results_many([CallResult(requests[0], keys[0], answer, real, ids[0])])

    run = reload(run)
    assert LedgerEntry.objects.get(pk=ids[0]).status == LedgerStatus.COMPLETED
    assert run.cost_usd == ledger_sum(run) == real + LedgerEntry.objects.get(pk=ids[1]).cost_usd
    assert run.calls_made == LedgerEntry.objects.filter(run=run).count() == 2
    assert settle_lost_calls(run).count == 0  # nothing left to settle
