"""Synthetic inputs: a teacher writes new inputs in the style of seed rows a user picks (optionally
about given topics, or for labels that are short), when real inputs run out.

A synthesis is a TeacherRun in mode "synthetic" with its own job (kind "synthesize_inputs"):
its calls go through teachers.calls (the one call path), each is in the ledger before it is
sent and completed with its tokens and cost, and the run's totals are the ledger's sums; it is
estimated before it starts and stops at its budget cap. The answers are parsed and deduplicated
against the project's inputs (exact and near duplicates) by worker.synthetic_inputs, and the new
rows are written in ONE transaction at the end, marked ``synthetic``: a cancelled job or one
whose answers hold no input writes nothing. They are then labelled and reviewed like any input;
a freeze keeps them in train only, up to its ``max_synthetic_train_share``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from jobs import services as job_services
from jobs.models import Job, JobKind
from projects.models import InputRow, Project
from teachers.models import LedgerEntry, LedgerStatus, TeacherRun, TeacherRunMode
from teachers.prices import price_for_model, price_to_json, run_price, usd
from teams.models import ProviderCredential
from worker import pricing
from worker.synthetic_inputs import (
    MAX_SEEDS_PER_PROMPT,
    GenerationParseError,
    build_generation_messages,
    deduplicate,
    normalised_text,
    parse_generated_inputs,
)
from worker.taskspec import SpecError, TaskSpec, TemplateError
from worker.teacher_runner import StopReason, worst_case_cost
from worker.teachers.base import TeacherRequest, TeacherResponse

MAX_COUNT = 5000
MAX_PER_CALL = 50
MAX_TOPICS = 50


@dataclass
class SynthesisSettings:
    """What the "new synthetic inputs" form asks."""

    credential: ProviderCredential | None
    model: str
    seed_input_ids: list[int]
    count: int = 50
    per_call: int = 10
    topics: list[str] = field(default_factory=list)
    label_targets: list[str] = field(default_factory=list)
    temperature: float = 1.0
    max_tokens: int = 2000
    concurrency: int = 4
    budget_usd: Decimal | None = None


def _validate(*, project: Project, s: SynthesisSettings) -> tuple[TaskSpec, list[dict[str, Any]]]:
    """The task spec and the seed rows' data. Raises ValidationError by form field."""
    if not project.has_task:
        raise ValidationError("define the project's task before asking a teacher for inputs")
    spec = project.task_spec()
    try:
        spec.validate()
    except (SpecError, TemplateError) as exc:
        raise ValidationError(f"the task is not valid: {exc}") from None
    if not s.seed_input_ids:
        raise ValidationError(
            {"seed_inputs": "pick at least one seed row: the teacher writes inputs in their style"}
        )
    seeds = list(
        InputRow.objects.filter(project=project, pk__in=s.seed_input_ids)
        .order_by("pk")
        .values_list("data", flat=True)
    )
    if len(seeds) != len(set(s.seed_input_ids)):
        raise ValidationError({"seed_inputs": "some seed rows are not inputs of this project"})
    if s.credential is None:
        raise ValidationError({"credential": "choose the credential of the teacher to ask"})
    if s.credential.team_id != project.team_id:
        raise ValidationError({"credential": "choose one of this team's credentials"})
    if not s.model.strip():
        raise ValidationError({"model": "name the model, e.g. gpt-4o-mini"})
    checks = [
        ("count", 1 <= s.count <= MAX_COUNT, f"ask for between 1 and {MAX_COUNT:,} inputs"),
        ("per_call", 1 <= s.per_call <= MAX_PER_CALL, f"between 1 and {MAX_PER_CALL} per call"),
        ("temperature", 0 <= s.temperature <= 2, "temperature is between 0 and 2"),
        ("max_tokens", 1 <= s.max_tokens <= 100_000, "max tokens is between 1 and 100,000"),
        ("concurrency", 1 <= s.concurrency <= 64, "concurrency is between 1 and 64"),
        ("topics", len(s.topics) <= MAX_TOPICS, f"at most {MAX_TOPICS} topics"),
    ]
    for name, ok, message in checks:
        if not ok:
            raise ValidationError({name: message})
    if s.budget_usd is not None and s.budget_usd <= 0:
        raise ValidationError({"budget_usd": "a budget cap must be more than $0"})
    if s.label_targets:
        if project.output_kind != "label":
            raise ValidationError({"label_targets": "label targets are for label tasks only"})
        unknown = [label for label in s.label_targets if label not in spec.label_set]
        if unknown:
            raise ValidationError(
                {"label_targets": f"not in the task's label set: {', '.join(unknown)}"}
            )
    if price_for_model(team=project.team, model=s.model, provider=s.credential.provider) is None:
        raise ValidationError(
            {
                "model": f"no price for model {s.model!r}: add it to the team's price table "
                "(use 0 for a self-hosted endpoint) so the calls can be metered"
            }
        )
    return spec, seeds


def _output_schema(spec: TaskSpec) -> dict[str, Any]:
    row = {
        "type": "object",
        "properties": {name: {"type": "string"} for name in spec.input_fields},
        "required": list(spec.input_fields),
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {"inputs": {"type": "array", "items": row}},
        "required": ["inputs"],
        "additionalProperties": False,
    }


def synthesis_requests(
    spec: TaskSpec,
    seeds: list[dict[str, Any]],
    *,
    model: str,
    count: int,
    per_call: int,
    topics: list[str],
    label_targets: list[str],
    temperature: float,
    max_tokens: int,
) -> list[TeacherRequest]:
    """One request per ``per_call`` inputs; the k-th shows the next seeds in turn and the k-th
    topic / label target (round robin), so calls differ and cover the seeds and targets."""
    requests = []
    schema = _output_schema(spec)
    for k in range(math.ceil(count / per_call)):
        start = (k * MAX_SEEDS_PER_PROMPT) % len(seeds)
        shown = (seeds[start:] + seeds[:start])[:MAX_SEEDS_PER_PROMPT]
        requests.append(
            TeacherRequest(
                custom_id=f"syn-{k}",
                messages=build_generation_messages(
                    spec,
                    seeds=shown,
                    count=min(per_call, count - k * per_call),
                    topic=topics[k % len(topics)] if topics else "",
                    label=label_targets[k % len(label_targets)] if label_targets else "",
                    batch_number=k + 1,
                ),
                model=model,
                temperature=temperature,
                max_tokens=max_tokens,
                output_kind="json",
                json_schema=schema,
            )
        )
    return requests


def synthesis_estimate(*, project: Project, settings: SynthesisSettings) -> dict[str, Any]:
    """Calls, prompt tokens (every request counted), expected output tokens (the seeds' own
    length per new input) and USD, expected and worst case (every call writes max_tokens)."""
    s = settings
    spec, seeds = _validate(project=project, s=s)
    model = s.model.strip()
    requests = synthesis_requests(
        spec,
        seeds,
        model=model,
        count=s.count,
        per_call=s.per_call,
        topics=s.topics,
        label_targets=s.label_targets,
        temperature=s.temperature,
        max_tokens=s.max_tokens,
    )
    prompt_tokens, method = 0, ""
    for request in requests:
        counted = pricing.count_message_tokens(request.messages, model)
        prompt_tokens += counted.tokens
        method = counted.method
    seed_tokens = [
        pricing.count_text_tokens(json.dumps(seed, ensure_ascii=False), model).tokens
        for seed in seeds[:200]
    ]
    per_input = max(1, round(sum(seed_tokens) / len(seed_tokens))) + 2
    per_call = [min(s.max_tokens, per_input * s.per_call + 10) for _ in requests]
    expected_output = sum(per_call)
    price = price_for_model(team=project.team, model=model, provider=s.credential.provider)  # type: ignore[union-attr]
    assert price is not None  # _validate refused a model without a price
    return {
        "inputs": s.count,
        "calls": len(requests),
        "prompt_tokens": prompt_tokens,
        "token_method": method,
        "expected_output_tokens": expected_output,
        "output_tokens_basis": "the seed rows' average length per new input",
        "usd": str(usd(price.cost(prompt_tokens, expected_output))),
        "worst_case_usd": str(usd(price.cost(prompt_tokens, len(requests) * s.max_tokens))),
        "price": price_to_json(price),
        "model": model,
        "seeds": len(seeds),
    }


def synthesis_start(*, project: Project, user: User, settings: SynthesisSettings) -> TeacherRun:
    """The run and its job (queued after commit). Raises ValidationError by form field."""
    s = settings
    estimate = synthesis_estimate(project=project, settings=s)
    with transaction.atomic():
        job = job_services.job_create(
            team=project.team,
            project=project,
            kind=JobKind.SYNTHESIZE_INPUTS,
            user=user,
            params={"teacher": True},
            total=estimate["calls"],
        )
        run = TeacherRun.objects.create(
            job=job,
            project=project,
            credential=s.credential,
            provider=s.credential.provider,  # type: ignore[union-attr]
            model=estimate["model"],
            mode=TeacherRunMode.SYNTHETIC,
            temperature=s.temperature,
            max_tokens=s.max_tokens,
            concurrency=s.concurrency,
            budget_usd=s.budget_usd,
            selection={
                "kind": "synthetic",
                "seed_input_ids": sorted(set(s.seed_input_ids)),
                "count": s.count,
                "per_call": s.per_call,
                "topics": s.topics,
                "label_targets": s.label_targets,
            },
            input_ids=[],
            estimate=estimate,
        )
        job.params = {"teacher_run_id": run.pk}
        job.save(update_fields=["params"])
    return run


# Execution ---------------------------------------------------------------------------------------


class _Meter:
    """The engine's callbacks: a ledger row before each call, completed (with the run's totals,
    in one transaction) when its answer comes; answers kept in memory until the end."""

    def __init__(self, job: Job, run: TeacherRun, total: int) -> None:
        self.job, self.run, self.total = job, run, total
        self.price = run_price(run)
        self.ledger_ids: dict[str, int] = {}
        self.answers: dict[str, TeacherResponse] = {}

    def sent(self, request: TeacherRequest, key: str) -> None:
        worst = worst_case_cost(request, self.price, batch=False)
        entry = LedgerEntry.objects.create(
            run=self.run, cache_key=key, estimated_cost_usd=usd(worst)
        )
        self.ledger_ids[request.custom_id] = entry.pk

    def result(
        self, request: TeacherRequest, key: str, response: TeacherResponse, cost: Decimal
    ) -> None:
        ledger_id = self.ledger_ids.pop(request.custom_id, None)
        cost = usd(cost)
        with transaction.atomic():
            if ledger_id is not None:
                LedgerEntry.objects.filter(pk=ledger_id).update(
                    status=LedgerStatus.COMPLETED if response.ok else LedgerStatus.FAILED,
                    input_tokens=response.input_tokens,
                    output_tokens=response.output_tokens,
                    cost_usd=cost,
                    attempt=max(1, response.attempts),
                    error=(response.error or "")[:5000],
                    provider_request_id=response.provider_request_id[:200],
                    completed_at=timezone.now(),
                )
            TeacherRun.objects.filter(pk=self.run.pk).update(
                calls_made=F("calls_made") + 1,
                failures=F("failures") + (0 if response.ok else 1),
                input_tokens=F("input_tokens") + response.input_tokens,
                output_tokens=F("output_tokens") + response.output_tokens,
                cost_usd=F("cost_usd") + cost,
            )
        if response.ok:
            self.answers[request.custom_id] = response

    def should_stop(self) -> StopReason | None:
        try:
            job_services.job_progress(job=self.job, done=len(self.answers), total=self.total)
        except job_services.JobCancelled:
            return StopReason.CANCELLED
        return None


def synthesis_execute(*, job: Job) -> dict[str, Any]:
    """The work of the ``jobs.synthesize_inputs`` task: ask, parse, deduplicate, then write the
    new inputs in one transaction. Raises JobCancelled (nothing written) or RuntimeError (no
    answer held an input: nothing written; the message says what came back)."""
    from asgiref.sync import sync_to_async

    from teachers.calls import teacher_calls_run
    from teachers.run_requests import provider_config_for_run
    from worker.teacher_cache import cache_key

    run = TeacherRun.objects.select_related("project__team", "credential").get(job=job)
    project, chosen = run.project, run.selection
    spec = project.task_spec()
    seeds = list(
        InputRow.objects.filter(project=project, pk__in=chosen.get("seed_input_ids", []))
        .order_by("pk")
        .values_list("data", flat=True)
    )
    if not seeds:
        raise RuntimeError("the seed rows were deleted; start again with other seed rows")
    requests = synthesis_requests(
        spec,
        seeds,
        model=run.model,
        count=int(chosen["count"]),
        per_call=int(chosen["per_call"]),
        topics=list(chosen.get("topics") or []),
        label_targets=list(chosen.get("label_targets") or []),
        temperature=run.temperature,
        max_tokens=run.max_tokens,
    )
    config = provider_config_for_run(run)
    meter = _Meter(job, run, len(requests))
    # No response cache: asking again is asking for new inputs, not for the same answer.
    summary = teacher_calls_run(
        requests,
        config,
        price=meter.price,
        concurrency=run.concurrency,
        budget_usd=run.budget_usd,
        keys={r.custom_id: cache_key(config, r) for r in requests},
        on_sent=sync_to_async(meter.sent, thread_sensitive=True),
        on_result=sync_to_async(meter.result, thread_sensitive=True),
        should_stop=sync_to_async(meter.should_stop, thread_sensitive=True),
    )
    if summary.stopped is StopReason.CANCELLED:
        raise job_services.JobCancelled
    if summary.stopped is StopReason.BUDGET and not meter.answers:
        TeacherRun.objects.filter(pk=run.pk).update(stopped_reason="budget cap")
        raise RuntimeError(
            f"{summary.stopped_reason}: no answer came back, nothing was added. One call may "
            f"cost up to ${run.estimate.get('worst_case_usd')} / {len(requests)} calls at "
            "worst; raise the budget cap and start again."
        )
    outcome = _write_inputs(
        job,
        run,
        spec,
        [meter.answers[r.custom_id] for r in requests if r.custom_id in meter.answers],
    )
    run.refresh_from_db()
    outcome |= {
        "calls": run.calls_made,
        "failed_calls": summary.failed,
        "cost_usd": str(usd(run.cost_usd)),
    }
    if summary.stopped is not None:
        outcome["stopped"] = summary.stopped_reason or summary.stopped.value
        TeacherRun.objects.filter(pk=run.pk).update(stopped_reason=outcome["stopped"][:200])
    return outcome


def _write_inputs(
    job: Job, run: TeacherRun, spec: TaskSpec, answers: list[TeacherResponse]
) -> dict[str, Any]:
    """Parse the answers, drop duplicates of the project's inputs and of each other, and write
    the rest in one transaction. RuntimeError when no answer held an input."""
    from projects.services import content_hash

    fields = list(spec.input_fields)
    rows: list[dict[str, str]] = []
    problems: list[str] = []
    unreadable = 0
    for answer in answers:
        try:
            parsed = parse_generated_inputs(answer.raw_text, fields)
        except GenerationParseError as exc:
            unreadable += 1
            problems.append(f"{answer.custom_id}: {exc.message}")
            continue
        rows.extend(parsed.rows)
        problems.extend(f"{answer.custom_id}: {p}" for p in parsed.rejected)
    if not rows:
        first = problems[0] if problems else "the teacher answered no call"
        raise RuntimeError(
            f"no new input could be read from the teacher's {len(answers)} answer(s); nothing "
            f"was added. First problem: {first}"
        )
    existing = [
        normalised_text(data, fields)
        for data in InputRow.objects.filter(project=run.project).values_list("data", flat=True)
    ]
    result = deduplicate(rows, existing, fields)
    with transaction.atomic():
        created = InputRow.objects.bulk_create(
            [
                InputRow(
                    project=run.project,
                    data=data,
                    content_hash=content_hash(data),
                    search_text=" ".join(data.values()).lower(),
                    synthetic=True,
                    import_job=job,
                )
                for data in result.kept
            ],
            ignore_conflicts=True,  # an identical row uploaded meanwhile: keep that one
        )
    added = InputRow.objects.filter(import_job=job, synthetic=True).count()
    return {
        "requested": int(run.selection.get("count", 0)),
        "generated": len(rows),
        "exact_duplicates": result.exact_duplicates + (len(created) - added),
        "near_duplicates": result.near_duplicates,
        "added": added,
        "unreadable_answers": unreadable,
        "rejected_items": len(problems) - unreadable,
        "problems": problems[:20],
    }
