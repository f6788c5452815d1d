"""The teacher-run pages as a user meets them: estimate before starting, the run page's figures
(its cost is the ledger's sum), pause/resume/cancel buttons, the price table, roles."""

from __future__ import annotations

import html
import re
from decimal import ROUND_HALF_UP, Decimal

import pytest
from django.urls import reverse

from jobs.models import JobStatus
from teachers import services as teacher_services
from teachers.models import LedgerEntry, PriceEntry, TeacherOutput, TeacherRun
from teams.models import Role
from tests.teachers.teacher_support import execute, label_project, openai_credential, reload, start
from worker.pricing import DEFAULT_PRICES, count_message_tokens
from worker.taskspec import build_messages

pytestmark = pytest.mark.django_db(transaction=True)


def form_data(credential, **overrides):  # type: ignore[no-untyped-def]
    data = {
        "teacher": str(credential.pk),
        "model": "gpt-4o-mini",
        "mode": "live",
        "selection": "all",
        "seed": "0",
        "temperature": "0",
        "max_tokens": "16",
        "samples_per_input": "1",
        "concurrency": "4",
        "budget_usd": "",
        "action": "estimate",
    }
    data.update(overrides)
    return data


def test_the_estimate_is_shown_before_a_run_can_start(
    team, owner, teammate, client_for, fake_provider
):  # type: ignore[no-untyped-def]
    project = label_project(team, owner, n=12)
    credential = openai_credential(team, owner, fake_provider)
    client = client_for(teammate)  # an engineer
    url = reverse("teachers:teacher_run_new", args=[project.pk])
    page = client.get(url)
    assert page.status_code == 200 and b"start-run" not in page.content

    page = client.post(url, form_data(credential, samples_per_input="2"))
    assert page.status_code == 200
    estimate = page.context["estimate"]
    spec = project.task_spec()
    prompts = [
        count_message_tokens(build_messages(spec, row.data), "gpt-4o-mini").tokens
        for row in project.inputs.all()
    ]
    assert estimate["calls"] == 24
    assert estimate["prompt_tokens"] == 2 * sum(prompts)
    assert estimate["token_method"] == "tiktoken o200k_base"
    price = DEFAULT_PRICES["gpt-4o-mini"]
    expected = price.cost(estimate["prompt_tokens"], estimate["expected_output_tokens"])
    assert Decimal(estimate["usd"]) == expected.quantize(
        Decimal("0.000001"), rounding=ROUND_HALF_UP
    )
    text = page.content.decode()
    assert "tiktoken o200k_base" in text and 'data-testid="start-run"' in text
    assert not TeacherRun.objects.exists()  # estimating starts nothing

    # Batch mode: the batch discount is applied.
    batch = client.post(url, form_data(credential, mode="batch")).context["estimate"]
    single = client.post(url, form_data(credential)).context["estimate"]
    assert Decimal(batch["usd"]) == pytest.approx(Decimal(single["usd"]) / 2, abs=Decimal("1e-6"))

    response = client.post(url, form_data(credential, action="start", budget_usd="5"))
    run = TeacherRun.objects.get()
    assert response.status_code == 302 and response["Location"] == f"/teacher-runs/{run.pk}/"
    assert run.budget_usd == Decimal("5") and run.job.created_by == teammate
    assert run.estimate["calls"] == 12 and run.job.status == JobStatus.QUEUED


def test_a_team_price_overrides_the_default_in_the_estimate(team, owner, client_for, fake_provider):  # type: ignore[no-untyped-def]
    project = label_project(team, owner, n=3)
    credential = openai_credential(team, owner, fake_provider)
    client = client_for(owner)
    response = client.post(
        reverse("teachers:prices", args=[team.pk]),
        {
            "model": "gpt-4o-mini",
            "input_usd_per_mtok": "1",
            "output_usd_per_mtok": "2",
            "batch_multiplier": "0.5",
        },
    )
    assert response.status_code == 302
    page = client.get(reverse("teachers:prices", args=[team.pk]))
    assert b"team price" in page.content
    estimate = client.post(
        reverse("teachers:teacher_run_new", args=[project.pk]), form_data(credential)
    ).context["estimate"]
    assert estimate["price"]["input_per_1m"] == "1.000000" and estimate["price"]["source"] == "team"
    expected = (
        Decimal(estimate["prompt_tokens"]) * 1 + Decimal(estimate["expected_output_tokens"]) * 2
    ) / Decimal(1_000_000)
    assert Decimal(estimate["usd"]) == expected.quantize(
        Decimal("0.000001"), rounding=ROUND_HALF_UP
    )

    # The run is metered with the team's price too.
    run = execute(start(project, owner, credential))
    output = TeacherOutput.objects.filter(run=run).first()
    assert output.cost_usd == (
        (Decimal(output.input_tokens) + 2 * Decimal(output.output_tokens)) / Decimal(1_000_000)
    ).quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)


def test_a_model_without_a_price_cannot_start(team, owner, client_for, fake_provider):  # type: ignore[no-untyped-def]
    project = label_project(team, owner, n=2)
    credential = openai_credential(team, owner, fake_provider)
    page = client_for(owner).post(
        reverse("teachers:teacher_run_new", args=[project.pk]),
        form_data(credential, model="my-finetune-7b", action="start"),
    )
    assert page.status_code == 400
    assert "no price for model 'my-finetune-7b'" in html.unescape(page.content.decode())
    assert not TeacherRun.objects.exists()


def test_the_run_page_shows_progress_outputs_and_a_cost_equal_to_the_ledger(
    team, owner, client_for, fake_provider
):  # type: ignore[no-untyped-def]
    project = label_project(team, owner, n=4)
    run = execute(start(project, owner, openai_credential(team, owner, fake_provider)))
    client = client_for(owner)
    page = client.get(reverse("teachers:teacher_run", args=[run.pk]))
    ledger = sum((e.cost_usd for e in LedgerEntry.objects.filter(run=run)), Decimal(0))
    assert page.context["progress"].cost_usd == ledger > 0
    text = page.content.decode()
    shown = re.search(r'data-testid="run-cost">\$([0-9.]+)<', text).group(1)
    assert Decimal(shown) == ledger.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)
    assert 'data-testid="run-percent">100 %' in text
    assert text.count('data-testid="output-row"') == 4
    assert "card_arrival" in text and "Ticket 0: where is my new card?" in text
    assert "hx-trigger" not in text  # finished: the fragment stops polling

    # A second identical run says that it called nothing.
    second = execute(start(project, owner, openai_credential(team, owner, fake_provider, "b")))
    page = client.get(reverse("teachers:teacher_run", args=[second.pk]))
    assert b"no calls were made and nothing was paid" in page.content


def test_pause_resume_and_cancel_buttons(team, owner, client_for, fake_provider):  # type: ignore[no-untyped-def]
    project = label_project(team, owner, n=3)
    run = start(project, owner, openai_credential(team, owner, fake_provider))
    client = client_for(owner)
    fragment = client.get(reverse("teachers:teacher_run_progress", args=[run.pk]))
    assert b"hx-trigger" in fragment.content and b"run-pause" in fragment.content
    assert client.get(reverse("teachers:teacher_run_pause", args=[run.pk])).status_code == 405

    client.post(reverse("teachers:teacher_run_pause", args=[run.pk]))
    run = reload(run)
    assert run.job.status == JobStatus.PAUSED  # it was still queued: paused at once
    fragment = client.get(reverse("teachers:teacher_run_progress", args=[run.pk]))
    assert b"run-resume" in fragment.content and b"hx-trigger" not in fragment.content
    generic = client.get(reverse("jobs:job_status", args=[run.job_id]))
    assert b"Paused" in generic.content and b"hx-trigger" not in generic.content

    client.post(reverse("teachers:teacher_run_resume", args=[run.pk]))
    run = execute(reload(run))
    assert run.job.status == JobStatus.SUCCEEDED
    assert TeacherOutput.objects.filter(run=run).count() == 3

    other = start(project, owner, openai_credential(team, owner, fake_provider, "c"))
    client.post(reverse("teachers:teacher_run_cancel", args=[other.pk]))
    assert reload(other).job.status == JobStatus.CANCELLED


def test_outputs_are_paginated_and_problems_can_be_isolated(team, owner, client_for, fake_provider):  # type: ignore[no-untyped-def]
    answers = iter(["card_arrival"] * 29 + ["no idea"])
    fake_provider.responder = lambda req: next(answers)
    project = label_project(team, owner, n=30)
    run = execute(
        start(project, owner, openai_credential(team, owner, fake_provider), concurrency=1)
    )
    client = client_for(owner)
    first = client.get(reverse("teachers:teacher_run", args=[run.pk]))
    assert first.content.decode().count('data-testid="output-row"') == 25
    second = client.get(reverse("teachers:teacher_run", args=[run.pk]) + "?page=2")
    assert second.content.decode().count('data-testid="output-row"') == 5
    problems = client.get(reverse("teachers:teacher_run", args=[run.pk]) + "?problems=1")
    text = problems.content.decode()
    assert text.count('data-testid="output-row"') == 1 and "not in the label set" in text


# Roles --------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", [Role.VIEWER, Role.REVIEWER])
def test_viewers_and_reviewers_can_watch_but_not_start_or_control_runs(
    role, team, owner, member_with_role, client_for, fake_provider
):  # type: ignore[no-untyped-def]
    project = label_project(team, owner, n=2)
    credential = openai_credential(team, owner, fake_provider)
    run = start(project, owner, credential)
    client = client_for(member_with_role(role))
    assert client.get(reverse("teachers:teacher_run", args=[run.pk])).status_code == 200
    assert client.get(reverse("teachers:teacher_runs", args=[project.pk])).status_code == 200
    page = client.get(reverse("teachers:teacher_run_progress", args=[run.pk]))
    assert b"run-pause" not in page.content and b"run-cancel" not in page.content
    before = list(TeacherRun.objects.values_list("pk", "job__status", "pause_requested"))
    for name in ("teacher_run_new", "teacher_run_import"):
        url = reverse(f"teachers:{name}", args=[project.pk])
        assert client.get(url).status_code == 403
        assert client.post(url, form_data(credential, action="start")).status_code == 403
    for name in ("teacher_run_pause", "teacher_run_resume", "teacher_run_cancel"):
        assert client.post(reverse(f"teachers:{name}", args=[run.pk])).status_code == 403
    assert list(TeacherRun.objects.values_list("pk", "job__status", "pause_requested")) == before


def test_only_owners_edit_prices(team, owner, teammate, client_for):  # type: ignore[no-untyped-def]
    entry = teacher_services.price_entry_save(
        team=team,
        user=owner,
        model="gpt-4o",
        input_usd_per_mtok=Decimal("1"),
        output_usd_per_mtok=Decimal("2"),
    )
    client = client_for(teammate)  # an engineer
    url = reverse("teachers:prices", args=[team.pk])
    assert client.get(url).status_code == 200
    data = {"model": "x", "input_usd_per_mtok": "1", "output_usd_per_mtok": "1"}
    assert client.post(url, data).status_code == 403
    assert (
        client.post(reverse("teachers:price_delete", args=[team.pk, entry.pk])).status_code == 403
    )
    assert list(PriceEntry.objects.values_list("model", flat=True)) == ["gpt-4o"]
    owner_client = client_for(owner)
    owner_client.post(reverse("teachers:price_delete", args=[team.pk, entry.pk]))
    assert not PriceEntry.objects.exists()


def test_outsiders_get_404_on_every_teacher_url(team, owner, outsider, client_for, fake_provider):  # type: ignore[no-untyped-def]
    project = label_project(team, owner, n=1)
    run = start(project, owner, openai_credential(team, owner, fake_provider))
    entry = teacher_services.price_entry_save(
        team=team,
        user=owner,
        model="gpt-4o",
        input_usd_per_mtok=Decimal("1"),
        output_usd_per_mtok=Decimal("2"),
    )
    client = client_for(outsider)
    urls = [
        reverse("teachers:teacher_runs", args=[project.pk]),
        reverse("teachers:teacher_run_new", args=[project.pk]),
        reverse("teachers:teacher_run_import", args=[project.pk]),
        reverse("teachers:teacher_run", args=[run.pk]),
        reverse("teachers:teacher_run_progress", args=[run.pk]),
        reverse("teachers:teacher_run_pause", args=[run.pk]),
        reverse("teachers:teacher_run_resume", args=[run.pk]),
        reverse("teachers:teacher_run_cancel", args=[run.pk]),
        reverse("teachers:prices", args=[team.pk]),
        reverse("teachers:price_delete", args=[team.pk, entry.pk]),
    ]
    for url in urls:
        assert client.get(url).status_code == 404, url
        assert client.post(url, {"model": "x"}).status_code == 404, url
    assert reload(run).job.status == JobStatus.QUEUED and PriceEntry.objects.count() == 1


def test_the_generic_job_page_links_to_the_teacher_run(team, owner, client_for, fake_provider):  # type: ignore[no-untyped-def]
    run = start(
        label_project(team, owner, n=1), owner, openai_credential(team, owner, fake_provider)
    )
    page = client_for(owner).get(reverse("jobs:job_detail", args=[run.job_id]))
    assert f'href="/teacher-runs/{run.pk}/"'.encode() in page.content


def test_the_eta_comes_from_the_rate_since_the_run_started(team, owner, client_for, fake_provider):  # type: ignore[no-untyped-def]
    from django.utils import timezone

    from jobs import services as job_services
    from teachers.selectors import run_progress

    project = label_project(team, owner, n=4)
    run = start(project, owner, openai_credential(team, owner, fake_provider))
    job_services.job_claim(job_id=run.job_id)
    for row in project.inputs.order_by("id")[:2]:
        TeacherOutput.objects.create(project=project, run=run, input=row, raw_text="card_arrival")
    TeacherRun.objects.filter(pk=run.pk).update(
        segment_started_at=timezone.now() - timezone.timedelta(seconds=20), segment_done_start=0
    )
    progress = run_progress(run=reload(run))
    assert progress.done == 2 and progress.total == 4 and progress.percent == 50
    assert progress.eta_s == pytest.approx(20, abs=2)  # 2 answers in 20 s, 2 to go
    page = client_for(owner).get(reverse("teachers:teacher_run_progress", args=[run.pk]))
    assert b'data-testid="run-eta">' in page.content and b"hx-trigger" in page.content
