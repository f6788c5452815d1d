"""Batch mode (OpenAI Batch API, Anthropic Message Batches) against the loopback server.

Most tests drive the two task bodies in this process (submit, then each poll); the last one uses
real worker processes to show that polling survives a worker being killed.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

import pytest
from django.core.cache import cache
from django.urls import reverse
from django.utils import timezone

from jobs import services as job_services
from jobs.models import Job, JobStatus
from teachers.models import LedgerEntry, LedgerStatus, TeacherOutput
from teachers.services import teacher_batch_poll_step
from tests.conftest import wait_until
from tests.teachers.teacher_support import (
    LABELS,
    anthropic_credential,
    execute,
    label_project,
    openai_credential,
    reload,
    start,
)
from worker.pricing import DEFAULT_PRICES

pytestmark = pytest.mark.django_db(transaction=True)


def poll(run):  # type: ignore[no-untyped-def]
    teacher_batch_poll_step(job_id=run.job_id, chain=reload(run).batch_state["chain"])
    return reload(run)


@pytest.mark.parametrize(
    ("provider", "model", "create_kind"),
    [
        ("openai", "gpt-4o-mini", "openai.batches.create"),
        ("anthropic", "claude-haiku-4-5", "anthropic.batches.create"),
    ],
)
def test_a_batch_run_is_submitted_polled_and_collected_at_the_batch_price(
    team, owner, client_for, fake_provider, provider, model, create_kind
):  # type: ignore[no-untyped-def]
    fake_provider.batch_polls_before_done = 1
    credential = (openai_credential if provider == "openai" else anthropic_credential)(
        team, owner, fake_provider
    )
    project = label_project(team, owner, n=5)
    run = execute(start(project, owner, credential, model=model, mode="batch"))
    # Submitted: the job is still running (polling goes on in its own task), ledger rows exist.
    assert run.job.status == JobStatus.RUNNING
    assert fake_provider.count(create_kind) == 1
    state = run.batch_state
    assert state["batch_id"] and state["request_count"] == 5 and state["state"] == "submitted"
    sent = LedgerEntry.objects.filter(run=run, status=LedgerStatus.SENT)
    assert sent.count() == 5
    assert {e.provider_request_id for e in sent} == {f"batch:{state['batch_id']}"}
    page = client_for(owner).get(reverse("teachers:teacher_run", args=[run.pk]))
    assert state["batch_id"].encode() in page.content and b"batch-state" in page.content

    run = poll(run)  # the provider is still working on it
    assert run.job.status == JobStatus.RUNNING and run.batch_state["state"] == "in_progress"
    assert not TeacherOutput.objects.filter(run=run).exists()
    run = poll(run)  # done: collected
    assert run.job.status == JobStatus.SUCCEEDED, run.job.error
    assert run.batch_state["collected"] is True and run.batch_state["state"] == "completed"

    outputs = list(TeacherOutput.objects.filter(run=run))
    assert len(outputs) == 5 and {o.parsed for o in outputs} == {LABELS[0]}
    price = DEFAULT_PRICES[model]
    for output in outputs:
        half = price.cost(output.input_tokens, output.output_tokens, batch=True)
        assert half == price.cost(output.input_tokens, output.output_tokens) / 2
        assert output.cost_usd == half.quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)
    assert LedgerEntry.objects.filter(run=run, status=LedgerStatus.COMPLETED).count() == 5
    ledger = sum((e.cost_usd for e in LedgerEntry.objects.filter(run=run)), Decimal(0))
    assert run.cost_usd == ledger > 0
    assert fake_provider.count("openai.chat") + fake_provider.count("anthropic.messages") == 0
    page = client_for(owner).get(reverse("teachers:teacher_run", args=[run.pk]))
    assert b"completed" in page.content


def test_cached_answers_are_not_sent_in_the_batch(team, owner, fake_provider):  # type: ignore[no-untyped-def]
    fake_provider.batch_polls_before_done = 0
    credential = openai_credential(team, owner, fake_provider)
    project = label_project(team, owner, n=4)
    first = poll(execute(start(project, owner, credential, mode="batch")))
    assert first.job.status == JobStatus.SUCCEEDED
    second = execute(start(project, owner, credential, mode="batch"))
    assert second.job.status == JobStatus.SUCCEEDED  # everything came from the cache
    assert fake_provider.count("openai.batches.create") == 1
    assert second.cache_hits == 4 and second.cost_usd == 0


def test_cancelling_a_batch_cancels_it_at_the_provider(team, owner, fake_provider):  # type: ignore[no-untyped-def]
    from teachers.services import teacher_run_cancel

    fake_provider.batch_polls_before_done = 100
    project = label_project(team, owner, n=3)
    run = execute(
        start(project, owner, openai_credential(team, owner, fake_provider), mode="batch")
    )
    teacher_run_cancel(run=run)
    run = poll(run)
    assert run.job.status == JobStatus.CANCELLED
    assert fake_provider.count("openai.batches.cancel") == 1
    rows = LedgerEntry.objects.filter(run=run)
    assert {r.status for r in rows} == {LedgerStatus.FAILED}
    assert all("cancelled" in r.error and r.cost_usd == 0 for r in rows)


def test_a_batch_that_could_exceed_the_budget_is_not_submitted(team, owner, fake_provider):  # type: ignore[no-untyped-def]
    project = label_project(team, owner, n=50)
    run = execute(
        start(
            project,
            owner,
            openai_credential(team, owner, fake_provider),
            mode="batch",
            max_tokens=10_000,
            budget_usd="0.01",
        )
    )
    assert run.job.status == JobStatus.PAUSED and run.stopped_reason.startswith("budget")
    assert fake_provider.count("openai.batches.create") == 0
    assert not LedgerEntry.objects.filter(run=run).exists()


@pytest.mark.slow
def test_polling_survives_a_killed_worker_without_submitting_again(
    worker_factory, team, owner, fake_provider
):  # type: ignore[no-untyped-def]
    fake_provider.batch_polls_before_done = 10_000  # the provider takes "hours"
    project = label_project(team, owner, n=6)
    first = worker_factory()
    run = start(
        project,
        owner,
        openai_credential(team, owner, fake_provider),
        mode="batch",
        batch_poll_s=0.2,
    )
    wait_until(
        lambda: fake_provider.count("openai.batches.retrieve") >= 2,
        timeout=60,
        message="the worker to submit and poll the batch",
    )
    first.kill()
    batch_id = reload(run).batch_state["batch_id"]
    Job.objects.filter(pk=run.job_id).update(
        heartbeat_at=timezone.now() - timezone.timedelta(hours=1)
    )
    cache.delete(job_services.live_progress_key(run.job_id))
    worker_factory()
    assert job_services.jobs_reap_stale(stale_after_s=60, max_attempts=3)["requeued"] == 1
    fake_provider.batch_polls_before_done = 0  # the provider finishes
    wait_until(
        lambda: Job.objects.get(pk=run.job_id).status in {JobStatus.SUCCEEDED, JobStatus.FAILED},
        timeout=60,
        message="the new worker to collect the batch",
    )
    run = reload(run)
    assert run.job.status == JobStatus.SUCCEEDED, run.job.error
    assert run.batch_state["batch_id"] == batch_id
    assert fake_provider.count("openai.batches.create") == 1  # never submitted twice
    assert TeacherOutput.objects.filter(run=run).count() == 6
