"""Teacher runs against the loopback provider server, through the real openai/anthropic SDKs.

The run's task body runs in this process (claim → execute → finish), exactly as a worker runs it;
the tests that need a real worker process are in test_teacher_crash.py and test_teacher_batch.py.
"""

from __future__ import annotations

import json
from decimal import ROUND_HALF_UP, Decimal

import pytest
from django.db import connection

from jobs.models import JobStatus
from teachers.models import LedgerEntry, LedgerStatus, OutputFlag, TeacherOutput
from tests.factories import ProjectFactory
from tests.fakes.provider_server import FakeAnswer, FakeRequest
from tests.teachers.teacher_support import (
    LABELS,
    add_inputs,
    anthropic_credential,
    execute,
    label_project,
    openai_credential,
    start,
)
from worker.pricing import DEFAULT_PRICES

pytestmark = pytest.mark.django_db(transaction=True)

MINI = DEFAULT_PRICES["gpt-4o-mini"]


def ledger_sum(run):  # type: ignore[no-untyped-def]
    return sum((e.cost_usd for e in LedgerEntry.objects.filter(run=run)), Decimal(0))


def test_a_label_run_stores_parsed_outputs_and_costs_tokens_times_prices(
    team, owner, fake_provider
):  # type: ignore[no-untyped-def]
    project = label_project(team, owner, n=6)
    run = execute(start(project, owner, openai_credential(team, owner, fake_provider)))

    assert run.job.status == JobStatus.SUCCEEDED, run.job.error
    outputs = list(TeacherOutput.objects.filter(run=run))
    assert len(outputs) == 6
    for output in outputs:
        assert output.parsed == LABELS[0] and output.parse_error == ""
        assert output.finish_reason == "stop" and output.latency_ms is not None
        expected = MINI.cost(output.input_tokens, output.output_tokens)
        assert output.cost_usd == expected.quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)
        assert output.input_tokens > 0 and output.output_tokens > 0
    # One ledger row per call, completed; the run's totals are the ledger's sums.
    assert LedgerEntry.objects.filter(run=run, status=LedgerStatus.COMPLETED).count() == 6
    assert run.calls_made == 6 and run.cache_hits == 0 and run.failures == 0
    assert run.cost_usd == ledger_sum(run) == sum(o.cost_usd for o in outputs)
    assert run.input_tokens == sum(o.input_tokens for o in outputs)
    assert fake_provider.count("openai.chat") == 6
    assert run.job.progress_done == run.job.progress_total == 6


def test_label_confidence_comes_from_the_top_logprobs(team, owner, fake_provider):  # type: ignore[no-untyped-def]
    fake_provider.responder = lambda req: FakeAnswer(
        text="card_arrival",
        token_alternatives=[{"card": 0.8, "lost": 0.2}],
    )
    project = label_project(team, owner, n=1)
    run = execute(start(project, owner, openai_credential(team, owner, fake_provider)))
    output = TeacherOutput.objects.get(run=run)
    assert output.confidence == pytest.approx(0.8)
    assert output.top_logprobs and output.top_logprobs[0]["token"] == "card"
    body = fake_provider.requests("openai.chat")[0].body
    assert body["logprobs"] is True and body["top_logprobs"] > 0


def test_an_answer_outside_the_label_set_is_stored_with_its_parse_error_and_flagged(
    team, owner, fake_provider
):  # type: ignore[no-untyped-def]
    fake_provider.responder = lambda req: "I think it's about a refund"
    project = label_project(team, owner, n=2)
    run = execute(start(project, owner, openai_credential(team, owner, fake_provider)))
    output = TeacherOutput.objects.filter(run=run).first()
    assert output.parsed is None
    assert "not in the label set" in output.parse_error
    assert output.flag_codes and set(output.flag_codes) == set(
        OutputFlag.objects.filter(output=output).values_list("code", flat=True)
    )


def test_a_json_task_through_anthropic_tool_use_is_parsed_against_the_schema(
    team, owner, fake_provider
):  # type: ignore[no-untyped-def]
    schema = {
        "type": "object",
        "properties": {"total": {"type": "number"}, "vendor": {"type": "string"}},
        "required": ["total", "vendor"],
    }
    project = ProjectFactory(
        team=team,
        created_by=owner,
        output_kind="json",
        label_set=[],
        json_schema=schema,
        instruction_template="Extract the receipt fields: {{ text }}",
    )
    add_inputs(project, ["ACME STORE total 12.50", "BOLT CAFE total 3"])

    def responder(request: FakeRequest) -> str:
        vendor = request.last_user_text.split(":", 1)[1].split()[0]
        total = 3 if vendor == "BOLT" else "twelve"  # the second one breaks the schema
        return json.dumps({"total": total, "vendor": vendor})

    fake_provider.responder = responder
    run = execute(
        start(
            project,
            owner,
            anthropic_credential(team, owner, fake_provider),
            model="claude-haiku-4-5",
        )
    )
    assert run.job.status == JobStatus.SUCCEEDED, run.job.error
    by_vendor = {o.parsed["vendor"]: o for o in TeacherOutput.objects.filter(run=run)}
    assert by_vendor["BOLT"].parsed == {"total": 3, "vendor": "BOLT"}
    assert by_vendor["BOLT"].parse_error == ""
    assert "does not match the schema at total" in by_vendor["ACME"].parse_error
    body = fake_provider.requests("anthropic.messages")[0].body
    assert body["tool_choice"]["type"] == "tool" and body["tools"][0]["input_schema"] == schema
    price = DEFAULT_PRICES["claude-haiku-4-5"]
    out = by_vendor["BOLT"]
    assert out.cost_usd == price.cost(out.input_tokens, out.output_tokens).quantize(
        Decimal("0.000001"), rounding=ROUND_HALF_UP
    )


def test_a_text_task_stores_the_text(team, owner, fake_provider):  # type: ignore[no-untyped-def]
    project = ProjectFactory(
        team=team,
        created_by=owner,
        output_kind="text",
        label_set=[],
        instruction_template="Summarise: {{ text }}",
    )
    add_inputs(project, ["A long dialogue about a late train."])
    fake_provider.responder = lambda req: "  The train was late.  "
    run = execute(start(project, owner, openai_credential(team, owner, fake_provider)))
    output = TeacherOutput.objects.get(run=run)
    assert output.parsed == "The train was late." and output.raw_text == "  The train was late.  "


def test_a_finished_run_flags_repeated_outputs_without_a_separate_checks_job(
    team, owner, fake_provider
):  # type: ignore[no-untyped-def]
    project = ProjectFactory(
        team=team,
        created_by=owner,
        output_kind="text",
        label_set=[],
        instruction_template="Summarise: {{ text }}",
    )
    add_inputs(project, [f"Dialogue {i} about a parcel that did not arrive." for i in range(5)])
    # Three different dialogues get the same canned answer; the other two get their own.
    fake_provider.responder = lambda req: (
        "I cannot help with that."
        if any(f"Dialogue {i} " in req.last_user_text for i in (0, 1, 2))
        else f"Summary of {req.last_user_text[-40:]}"
    )
    run = execute(start(project, owner, openai_credential(team, owner, fake_provider)))
    assert run.job.status == JobStatus.SUCCEEDED, run.job.error
    flagged = OutputFlag.objects.filter(output__run=run, code="repeated_output")
    assert sorted(f.output.raw_text for f in flagged) == ["I cannot help with that."] * 3
    assert "3 different inputs" in flagged.first().message
    assert run.job.result["flagged_repeated_output"] == 3


# Retries, errors and the cache ----------------------------------------------------------------


def test_server_errors_are_retried_and_recorded_as_one_call(team, owner, fake_provider):  # type: ignore[no-untyped-def]
    project = label_project(team, owner, n=1)
    fake_provider.fail_next(500, 2)
    run = execute(start(project, owner, openai_credential(team, owner, fake_provider)))
    assert run.job.status == JobStatus.SUCCEEDED, run.job.error
    assert fake_provider.count("openai.chat") == 3  # two 500s, then the answer
    entry = LedgerEntry.objects.get(run=run)
    assert entry.status == LedgerStatus.COMPLETED and entry.attempt == 3
    assert run.calls_made == 1 and TeacherOutput.objects.filter(run=run).count() == 1


def test_429_waits_for_retry_after(team, owner, fake_provider):  # type: ignore[no-untyped-def]
    project = label_project(team, owner, n=1)
    fake_provider.fail_next(429, 1, retry_after=0.4)
    run = execute(start(project, owner, openai_credential(team, owner, fake_provider)))
    assert run.job.status == JobStatus.SUCCEEDED, run.job.error
    first, second = fake_provider.requests("openai.chat")
    assert first.status == 429 and second.status == 200
    assert second.at - first.at >= 0.4


def test_a_bad_request_is_not_retried_and_resume_calls_only_what_is_missing(
    team, owner, fake_provider
):  # type: ignore[no-untyped-def]
    project = label_project(team, owner, n=3)
    fake_provider.fail_next(400, 1, message="prompt too long")
    run = execute(
        start(project, owner, openai_credential(team, owner, fake_provider), concurrency=1)
    )
    assert run.job.status == JobStatus.FAILED
    assert "1 of 3 answers are missing" in run.job.error and "prompt too long" in run.job.error
    assert fake_provider.count("openai.chat") == 3  # the 400 was not retried
    failed = LedgerEntry.objects.get(run=run, status=LedgerStatus.FAILED)
    assert failed.http_status == 400 and failed.cost_usd == 0

    from teachers.services import teacher_run_resume

    teacher_run_resume(run=run)
    run = execute(run)
    assert run.job.status == JobStatus.SUCCEEDED, run.job.error
    assert fake_provider.count("openai.chat") == 4  # only the missing one
    assert TeacherOutput.objects.filter(run=run).count() == 3
    assert run.cost_usd == ledger_sum(run) and run.failures == 1


def test_an_invalid_key_stops_the_run_with_the_credential_named(team, owner, fake_provider):  # type: ignore[no-untyped-def]
    fake_provider.api_keys = {"sk-the-real-key-0000"}
    project = label_project(team, owner, n=4)
    run = execute(
        start(project, owner, openai_credential(team, owner, fake_provider), concurrency=1)
    )
    assert run.job.status == JobStatus.FAILED
    assert "invalid API key for credential 'prod-openai'" in run.job.error
    assert fake_provider.count("openai.chat") == 1  # not retried, nothing else sent
    assert TeacherOutput.objects.filter(run=run).count() == 0
    assert run.cost_usd == 0 == ledger_sum(run)


def test_a_second_identical_run_calls_nothing(team, owner, fake_provider):  # type: ignore[no-untyped-def]
    project = label_project(team, owner, n=5)
    credential = openai_credential(team, owner, fake_provider)
    first = execute(start(project, owner, credential))
    calls = fake_provider.count("openai.chat")
    assert calls == 5 and first.cost_usd > 0
    second = execute(start(project, owner, credential))
    assert second.job.status == JobStatus.SUCCEEDED
    assert fake_provider.count("openai.chat") == calls  # nothing new upstream
    assert second.calls_made == 0 and second.cache_hits == 5 and second.cost_usd == 0
    assert second.job.result["calls"] == 0 and second.job.result["cache_hits"] == 5
    assert not LedgerEntry.objects.filter(run=second).exists()
    outputs = TeacherOutput.objects.filter(run=second)
    assert outputs.count() == 5 and all(o.from_cache and o.cost_usd == 0 for o in outputs)
    # A changed setting is a different request: it is called.
    third = execute(start(project, owner, credential, temperature=0.5))
    assert third.calls_made == 5 and fake_provider.count("openai.chat") == calls + 5


def test_the_budget_cap_stops_the_run_before_it_is_exceeded(team, owner, fake_provider):  # type: ignore[no-untyped-def]
    # Each answer is 5,000 output tokens ($0.003); the worst case of a call (10,000) is $0.006.
    fake_provider.responder = lambda req: FakeAnswer(text=LABELS[0], output_tokens=5000)
    project = label_project(team, owner, n=10)
    credential = openai_credential(team, owner, fake_provider)
    run = execute(
        start(project, owner, credential, max_tokens=10_000, budget_usd="0.01", concurrency=2)
    )
    assert run.job.status == JobStatus.PAUSED
    assert run.stopped_reason.startswith("budget")
    assert ledger_sum(run) == run.cost_usd <= Decimal("0.01")
    stored = TeacherOutput.objects.filter(run=run).count()
    assert 1 <= stored < 10 and fake_provider.count("openai.chat") == stored

    # Raising the cap and resuming carries on from there.
    type(run).objects.filter(pk=run.pk).update(budget_usd=Decimal("1"))
    from teachers.services import teacher_run_resume

    teacher_run_resume(run=run)
    run = execute(run)
    assert run.job.status == JobStatus.SUCCEEDED, run.job.error
    assert fake_provider.count("openai.chat") == 10
    assert run.cost_usd == ledger_sum(run) <= Decimal("1")


def test_pause_stops_the_run_and_resume_finishes_it_without_calling_anything_twice(
    team, owner, fake_provider
):  # type: ignore[no-untyped-def]
    from teachers.services import teacher_run_pause, teacher_run_resume

    project = label_project(team, owner, n=40)
    run = start(project, owner, openai_credential(team, owner, fake_provider), concurrency=2)
    fake_provider.latency_s = 0.1  # the run takes ~2 s; stop checks come every second

    pressed = []

    def responder(request: FakeRequest) -> str:
        if fake_provider.count("openai.chat") >= 3 and not pressed:
            pressed.append(True)
            teacher_run_pause(run=run)  # a user presses "Pause" while the run is going
            connection.close()  # this runs in one of the server's threads
        return LABELS[1]

    fake_provider.responder = responder
    run = execute(run)
    assert run.job.status == JobStatus.PAUSED and run.stopped_reason == "paused by a user"
    paused_at = TeacherOutput.objects.filter(run=run).count()
    assert 3 <= paused_at < 40

    teacher_run_resume(run=run)
    run = execute(run)
    assert run.job.status == JobStatus.SUCCEEDED, run.job.error
    assert TeacherOutput.objects.filter(run=run).count() == 40
    bodies = [r.body["messages"][-1]["content"] for r in fake_provider.requests("openai.chat")]
    assert len(bodies) == len(set(bodies)) == 40  # every input called exactly once


def test_cancel_stops_a_running_run(team, owner, fake_provider):  # type: ignore[no-untyped-def]
    from teachers.services import teacher_run_cancel

    project = label_project(team, owner, n=30)
    run = start(project, owner, openai_credential(team, owner, fake_provider), concurrency=1)
    fake_provider.latency_s = 0.1  # the run takes ~3 s; stop checks come every second

    pressed = []

    def responder(request: FakeRequest) -> str:
        if fake_provider.count("openai.chat") >= 2 and not pressed:
            pressed.append(True)
            teacher_run_cancel(run=run)
            connection.close()  # this runs in one of the server's threads
        return LABELS[0]

    fake_provider.responder = responder
    run = execute(run)
    assert run.job.status == JobStatus.CANCELLED
    assert TeacherOutput.objects.filter(run=run).count() < 30
    assert run.cost_usd == ledger_sum(run)


def test_samples_that_disagree_are_all_flagged(team, owner, fake_provider):  # type: ignore[no-untyped-def]
    answers = iter(LABELS * 3)
    fake_provider.responder = lambda req: next(answers)
    project = label_project(team, owner, n=1)
    run = execute(
        start(
            project,
            owner,
            openai_credential(team, owner, fake_provider),
            samples_per_input=3,
            temperature=0.9,
            concurrency=1,
        )
    )
    outputs = list(TeacherOutput.objects.filter(run=run).order_by("sample_index"))
    assert [o.sample_index for o in outputs] == [0, 1, 2]
    assert {o.parsed for o in outputs} == set(LABELS)
    for output in outputs:
        assert "self_inconsistent" in output.flag_codes
        assert OutputFlag.objects.filter(output=output, code="self_inconsistent").exists()


# A local Hugging Face teacher ------------------------------------------------------------------


def test_a_local_model_under_an_allowed_root_is_a_free_teacher(
    team, owner, settings, tiny_model_dir
):  # type: ignore[no-untyped-def]
    from django.core.exceptions import ValidationError

    settings.TEACHER_LOCAL_MODEL_ROOTS = [str(tiny_model_dir.parent)]
    project = label_project(team, owner, n=3)
    with pytest.raises(ValidationError, match="no model folder of this team there"):
        start(project, owner, None, model="", local_model_path="/etc")
    run = execute(
        start(project, owner, None, model="", local_model_path=str(tiny_model_dir), max_tokens=4)
    )
    assert run.job.status == JobStatus.SUCCEEDED, run.job.error
    assert run.provider == "local_hf" and run.model == tiny_model_dir.name
    assert run.calls_made == 3 and run.cost_usd == 0 == ledger_sum(run)
    outputs = list(TeacherOutput.objects.filter(run=run))
    assert len(outputs) == 3
    assert all(o.output_tokens > 0 and (o.parsed is not None or o.parse_error) for o in outputs)


# Choosing inputs -------------------------------------------------------------------------------


def test_a_seeded_sample_and_a_text_filter_choose_the_run_inputs(team, owner, fake_provider):  # type: ignore[no-untyped-def]
    from teachers.services import select_input_ids

    project = label_project(team, owner, n=40)
    add_inputs(project, ["Refund please", "My REFUND is missing"])
    sample = select_input_ids(project=project, selection={"kind": "sample", "n": 10, "seed": 7})
    assert len(sample) == 10 == len(set(sample))
    assert sample == select_input_ids(
        project=project, selection={"kind": "sample", "n": 10, "seed": 7}
    )
    assert sample != select_input_ids(
        project=project, selection={"kind": "sample", "n": 10, "seed": 8}
    )
    refunds = select_input_ids(project=project, selection={"kind": "filter", "q": "refund"})
    assert len(refunds) == 2

    credential = openai_credential(team, owner, fake_provider)
    run = execute(
        start(project, owner, credential, selection={"kind": "sample", "n": 10, "seed": 7})
    )
    assert (
        sorted(TeacherOutput.objects.filter(run=run).values_list("input_id", flat=True)) == sample
    )
    assert run.job.progress_total == 10
    add_inputs(project, ["A refund for a new upload"])
    run = execute(start(project, owner, credential, selection={"kind": "filter", "q": "refund"}))
    assert TeacherOutput.objects.filter(run=run).count() == 3
