"""Teacher runs: choose inputs, estimate, start, execute (live or batch), pause, resume, cancel.

This is the adapter between the database and the teacher engine (worker.teacher_runner,
worker.teachers): it turns rows into TeacherRequests and a ProviderConfig, and turns the engine's
callbacks back into rows:

- ``cache_lookup``/``cache_store`` → CachedResponse (per team): nothing is paid twice;
- ``on_sent`` → a LedgerEntry (status "sent") committed BEFORE the call, so a crash leaves a trace;
- ``on_result`` → in ONE transaction: the ledger row completed, the cache row, the TeacherOutput
  (parsed by the task spec, with per-output check flags) and the run's totals. The run's totals
  therefore always equal the ledger's sums;
- ``should_stop`` → heartbeat + progress, and the user's pause / cancel.

A resumed run (after a pause, a failure, or a worker crash re-queued by the reaper) builds only
the (input, sample) pairs that have no stored output yet; answers that were paid for but not
stored before a crash are found in the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connections, transaction
from django.db.models import F, Q, Sum
from django.utils import timezone

from jobs import services as job_services
from jobs.models import Job, JobKind, JobStatus
from projects.models import InputRow, Project
from teachers.models import (
    CachedResponse,
    LedgerEntry,
    LedgerStatus,
    OutputFlag,
    PriceEntry,
    TeacherOutput,
    TeacherRun,
    TeacherRunMode,
)
from teams.models import ProviderCredential
from worker import pricing
from worker.pricing import FREE, ModelPrice
from worker.taskspec import SpecError, TaskSpec, TemplateError, build_messages, parse_output
from worker.teacher_cache import cache_key
from worker.teachers.base import ProviderConfig, TeacherRequest, TeacherResponse

logger = logging.getLogger(__name__)

CENT_MICROS = Decimal("0.000001")  # costs are stored with 6 decimals (a millionth of a dollar)
ESTIMATE_COUNT_LIMIT = 1000  # prompts counted exactly for an estimate; the rest extrapolated
LOCAL_PROVIDER = "local_hf"
BATCH_PROVIDERS = ("openai", "anthropic")


def _usd(value: Decimal | int | float | str) -> Decimal:
    return Decimal(value).quantize(CENT_MICROS, rounding=ROUND_HALF_UP)


# Prices ----------------------------------------------------------------------------------------


def price_table_for_team(*, team: Any) -> dict[str, ModelPrice]:
    """worker.pricing's shipped table with the team's overrides on top (same lookup rules)."""
    table = dict(pricing.DEFAULT_PRICES)
    for entry in PriceEntry.objects.filter(team=team):
        table[entry.model.strip().split("/")[-1].lower()] = _entry_price(entry)
    return table


def _entry_price(entry: PriceEntry) -> ModelPrice:
    return ModelPrice(
        input_per_1m=Decimal(entry.input_usd_per_mtok),
        output_per_1m=Decimal(entry.output_usd_per_mtok),
        batch_discount=Decimal(1) - Decimal(entry.batch_multiplier),
        provider="team",
    )


def price_for_model(*, team: Any, model: str, provider: str) -> ModelPrice | None:
    if provider == LOCAL_PROVIDER:
        return FREE
    return pricing.price_for(model, price_table_for_team(team=team))


def price_to_json(price: ModelPrice) -> dict[str, str]:
    return {
        "input_per_1m": str(price.input_per_1m),
        "output_per_1m": str(price.output_per_1m),
        "batch_discount": str(price.batch_discount),
        "source": price.provider,
    }


def price_from_json(data: dict[str, Any]) -> ModelPrice:
    return ModelPrice(
        input_per_1m=Decimal(data["input_per_1m"]),
        output_per_1m=Decimal(data["output_per_1m"]),
        batch_discount=Decimal(data.get("batch_discount", "0")),
        provider=str(data.get("source", "")),
    )


def price_entry_save(
    *,
    team: Any,
    user: Any,
    model: str,
    input_usd_per_mtok: Decimal,
    output_usd_per_mtok: Decimal,
    batch_multiplier: Decimal = Decimal("0.5"),
) -> PriceEntry:
    """Create or replace the team's price for a model (owners)."""
    model = model.strip()
    if not model:
        raise ValidationError({"model": "name the model, e.g. gpt-4o-mini"})
    for name, value in (
        ("input_usd_per_mtok", input_usd_per_mtok),
        ("output_usd_per_mtok", output_usd_per_mtok),
    ):
        if value < 0:
            raise ValidationError({name: "a price cannot be negative"})
    if not Decimal(0) <= batch_multiplier <= Decimal(1):
        raise ValidationError(
            {"batch_multiplier": "the batch multiplier is a fraction between 0 and 1 (0.5 = half)"}
        )
    entry, _ = PriceEntry.objects.update_or_create(
        team=team,
        model=model,
        defaults={
            "input_usd_per_mtok": input_usd_per_mtok,
            "output_usd_per_mtok": output_usd_per_mtok,
            "batch_multiplier": batch_multiplier,
            "updated_by": user,
        },
    )
    return entry


def price_entry_delete(*, entry: PriceEntry) -> None:
    entry.delete()


# Choosing inputs -------------------------------------------------------------------------------


def select_input_ids(*, project: Project, selection: dict[str, Any]) -> list[int]:
    """The input ids a selection means, in id order. Stored on the run, so a resume or a repeat
    covers exactly the same inputs even if more are uploaded later."""
    kind = selection.get("kind", "all")
    rows = InputRow.objects.filter(project=project)
    if kind == "filter":
        needle = str(selection.get("q", "")).strip().lower()
        if not needle:
            raise ValidationError({"filter_text": "type the text the inputs must contain"})
        rows = rows.filter(Q(search_text__contains=needle) | Q(reference_output__icontains=needle))
    ids = list(rows.order_by("id").values_list("id", flat=True))
    if kind == "sample":
        n = int(selection.get("n") or 0)
        if n < 1:
            raise ValidationError({"sample_size": "sample at least one input"})
        seed = int(selection.get("seed") or 0)
        if n < len(ids):
            ids = sorted(random.Random(seed).sample(ids, n))
    elif kind not in ("all", "filter"):
        raise ValidationError({"selection": f"unknown input selection {kind!r}"})
    return ids


# Settings, estimate and start ------------------------------------------------------------------


@dataclass
class RunSettings:
    """What a user chooses on the "new teacher run" form."""

    model: str
    credential: ProviderCredential | None = None
    local_model_path: str = ""
    temperature: float = 0.0
    max_tokens: int = 256
    samples_per_input: int = 1
    concurrency: int = 8
    budget_usd: Decimal | None = None
    mode: str = TeacherRunMode.LIVE
    selection: dict[str, Any] = field(default_factory=lambda: {"kind": "all"})

    @property
    def provider(self) -> str:
        if self.credential is not None:
            return str(self.credential.provider)
        return LOCAL_PROVIDER


def local_model_roots() -> list[Path]:
    """Where local teacher models may be loaded from (a worker reads them from disk)."""
    roots = settings.TEACHER_LOCAL_MODEL_ROOTS or [settings.DATA_DIR]
    return [Path(root).resolve() for root in roots]


def resolve_local_model_path(path: str) -> Path:
    text = path.strip()
    if not text:
        raise ValidationError({"local_model_path": "give the model's directory"})
    candidate = Path(text)
    if not candidate.is_absolute():
        candidate = Path(settings.DATA_DIR) / candidate
    resolved = candidate.resolve()
    roots = local_model_roots()
    if not any(resolved == root or root in resolved.parents for root in roots):
        raise ValidationError(
            {
                "local_model_path": "the model must be inside "
                + " or ".join(str(r) for r in roots)
                + " (the data directory the workers share)"
            }
        )
    if not (resolved / "config.json").exists():
        raise ValidationError(
            {"local_model_path": f"{text}: no Hugging Face model here (config.json is missing)"}
        )
    return resolved


def _validate_settings(*, project: Project, run_settings: RunSettings) -> TaskSpec:
    if not project.has_task:
        raise ValidationError("define the project's task before running a teacher")
    spec = project.task_spec()
    try:
        spec.validate()
    except (SpecError, TemplateError) as exc:
        raise ValidationError(f"the task is not valid: {exc}") from None
    s = run_settings
    if s.credential is None and not s.local_model_path.strip():
        raise ValidationError({"credential": "choose a credential or a local model"})
    if s.credential is not None and s.credential.team_id != project.team_id:
        raise ValidationError({"credential": "choose one of this team's credentials"})
    if s.credential is None:
        resolve_local_model_path(s.local_model_path)
    if not s.model.strip() and s.credential is not None:
        raise ValidationError({"model": "name the model, e.g. gpt-4o-mini"})
    if not 0 <= s.temperature <= 2:
        raise ValidationError({"temperature": "temperature is between 0 and 2"})
    if not 1 <= s.max_tokens <= 100_000:
        raise ValidationError({"max_tokens": "max tokens is between 1 and 100,000"})
    if not 1 <= s.samples_per_input <= 20:
        raise ValidationError({"samples_per_input": "between 1 and 20 samples per input"})
    if not 1 <= s.concurrency <= 256:
        raise ValidationError({"concurrency": "concurrency is between 1 and 256"})
    if s.budget_usd is not None and s.budget_usd <= 0:
        raise ValidationError({"budget_usd": "a budget cap must be more than $0"})
    if s.mode not in (TeacherRunMode.LIVE, TeacherRunMode.BATCH):
        raise ValidationError({"mode": "choose live calls or batch mode"})
    if s.mode == TeacherRunMode.BATCH and s.provider not in BATCH_PROVIDERS:
        raise ValidationError(
            {"mode": "batch mode is available for OpenAI and Anthropic credentials only"}
        )
    if (
        s.provider != LOCAL_PROVIDER
        and price_for_model(team=project.team, model=s.model, provider=s.provider) is None
    ):
        raise ValidationError(
            {
                "model": f"no price for model {s.model!r}: add it to the team's price table "
                "(use 0 for a self-hosted endpoint) so the run can be metered"
            }
        )
    return spec


def _model_name(run_settings: RunSettings) -> str:
    if run_settings.model.strip():
        return run_settings.model.strip()
    return Path(run_settings.local_model_path.strip().rstrip("/")).name or "local-model"


def _spread(ids: list[int], limit: int) -> list[int]:
    if len(ids) <= limit:
        return ids
    step = len(ids) / limit
    return [ids[int(i * step)] for i in range(limit)]


def teacher_run_estimate(
    *, project: Project, run_settings: RunSettings, input_ids: list[int] | None = None
) -> dict[str, Any]:
    """What a run will cost before it starts: calls, prompt tokens (with the counting method),
    expected output tokens, USD (expected and worst case) from the team's price table."""
    spec = _validate_settings(project=project, run_settings=run_settings)
    if input_ids is None:
        input_ids = select_input_ids(project=project, selection=run_settings.selection)
    if not input_ids:
        raise ValidationError("no inputs match this selection")
    model = _model_name(run_settings)
    samples = run_settings.samples_per_input
    batch = run_settings.mode == TeacherRunMode.BATCH
    counted_ids = _spread(input_ids, ESTIMATE_COUNT_LIMIT)
    rows = InputRow.objects.filter(pk__in=counted_ids).values_list("data", "reference_output")
    prompt_tokens = 0
    references: list[str] = []
    method = ""
    for data, reference in rows:
        try:
            messages = build_messages(spec, data)
        except TemplateError:
            continue
        counted = pricing.count_message_tokens(messages, model)
        prompt_tokens += counted.tokens
        method = counted.method
        if reference and len(references) < 200:
            references.append(reference)
    if not method:
        method = pricing.count_text_tokens("", model).method
    scale = len(input_ids) / max(1, len(counted_ids))
    prompt_tokens_total = round(prompt_tokens * scale) * samples

    if spec.output_kind == "label":
        lengths = [pricing.count_text_tokens(label, model).tokens for label in spec.label_set]
        per_call = max(1, round(sum(lengths) / len(lengths))) + 1
        output_basis = "average label length"
    elif references:
        lengths = [pricing.count_text_tokens(r, model).tokens for r in references]
        per_call = max(1, round(sum(lengths) / len(lengths)))
        output_basis = f"average of {len(references)} human reference outputs"
    else:
        per_call = run_settings.max_tokens
        output_basis = "max tokens (no reference outputs to judge by: worst case)"
    per_call = min(per_call, run_settings.max_tokens)
    calls = len(input_ids) * samples
    price = price_for_model(team=project.team, model=model, provider=run_settings.provider)
    expected_usd = worst_usd = None
    if price is not None:
        expected_usd = _usd(price.cost(prompt_tokens_total, calls * per_call, batch=batch))
        worst_usd = _usd(
            price.cost(prompt_tokens_total, calls * run_settings.max_tokens, batch=batch)
        )
    return {
        "inputs": len(input_ids),
        "calls": calls,
        "prompt_tokens": prompt_tokens_total,
        "token_method": method,
        "prompts_counted": len(counted_ids),
        "expected_output_tokens": calls * per_call,
        "output_tokens_basis": output_basis,
        "usd": None if expected_usd is None else str(expected_usd),
        "worst_case_usd": None if worst_usd is None else str(worst_usd),
        "batch": batch,
        "price": None if price is None else price_to_json(price),
        "model": model,
    }


def teacher_run_start(
    *,
    project: Project,
    user: Any,
    run_settings: RunSettings,
    batch_poll_s: float | None = None,
) -> TeacherRun:
    """Create the run and its job (queued after commit). Raises ValidationError by form field."""
    input_ids = select_input_ids(project=project, selection=run_settings.selection)
    estimate = teacher_run_estimate(project=project, run_settings=run_settings, input_ids=input_ids)
    s = run_settings
    batch_state: dict[str, Any] = {}
    if s.mode == TeacherRunMode.BATCH:
        batch_state["poll_s"] = float(batch_poll_s or settings.TEACHER_BATCH_POLL_S)
    with transaction.atomic():
        job = job_services.job_create(
            team=project.team,
            project=project,
            kind=JobKind.TEACHER_RUN,
            user=user,
            params={"teacher": True},
            total=estimate["calls"],
        )
        run = TeacherRun.objects.create(
            job=job,
            project=project,
            credential=s.credential,
            provider=s.provider,
            model=estimate["model"],
            mode=s.mode,
            temperature=s.temperature,
            max_tokens=s.max_tokens,
            samples_per_input=s.samples_per_input,
            concurrency=s.concurrency,
            budget_usd=s.budget_usd,
            selection=s.selection,
            input_ids=input_ids,
            estimate=estimate,
            local_model_path=s.local_model_path.strip(),
            batch_state=batch_state,
        )
        job.params = {"teacher_run_id": run.pk}
        job.save(update_fields=["params"])
    return run


# Pause, resume, cancel -------------------------------------------------------------------------


def teacher_run_pause(*, run: TeacherRun) -> TeacherRun:
    """A running live run stops at its next check (within about a second); a queued one at once."""
    if run.mode != TeacherRunMode.LIVE:
        raise ValidationError("only live runs can be paused (a provider batch runs on its own)")
    job = run.job
    TeacherRun.objects.filter(pk=run.pk).update(pause_requested=True)
    job_services.job_pause_queued(job=job)
    run.refresh_from_db()
    return run


def teacher_run_resume(*, run: TeacherRun) -> TeacherRun:
    """Re-queue a paused or failed run; the new claim calls only what is still missing."""
    with transaction.atomic():
        TeacherRun.objects.filter(pk=run.pk).update(pause_requested=False, stopped_reason="")
        if not job_services.job_resume(
            job=run.job, from_statuses=(JobStatus.PAUSED, JobStatus.FAILED)
        ):
            raise ValidationError("only a paused or failed run can be resumed")
    run.refresh_from_db()
    return run


def teacher_run_cancel(*, run: TeacherRun) -> TeacherRun:
    job_services.job_request_cancel(job=run.job)
    run.refresh_from_db()
    return run


# Building requests -----------------------------------------------------------------------------


def provider_config_for_run(run: TeacherRun) -> ProviderConfig:
    """The engine's configuration, with the decrypted key. Worker-side only; never log it."""
    if run.provider == LOCAL_PROVIDER:
        return ProviderConfig(
            kind="local_hf", local_model_path=str(resolve_local_model_path(run.local_model_path))
        )
    credential = run.credential
    if credential is None:
        raise ValueError("the run's credential was deleted; start a new run with another one")
    from teams.crypto import decrypt_secret_dangerously

    return ProviderConfig(
        kind=credential.provider,  # type: ignore[arg-type]
        credential_name=credential.name,
        api_key=decrypt_secret_dangerously(credential.encrypted_key),
        base_url=credential.base_url,
        allow_private_network=credential.allow_private_network,
    )


def custom_id_for(input_id: int, sample_index: int) -> str:
    return f"{input_id}-{sample_index}"


def _missing_pairs(run: TeacherRun) -> list[tuple[int, int]]:
    have = set(TeacherOutput.objects.filter(run=run).values_list("input_id", "sample_index"))
    return [
        (input_id, sample)
        for input_id in run.input_ids
        for sample in range(run.samples_per_input)
        if (input_id, sample) not in have
    ]


def _request_for(run: TeacherRun, spec: TaskSpec, input_id: int, sample: int, data: Any) -> Any:
    return TeacherRequest(
        custom_id=custom_id_for(input_id, sample),
        messages=build_messages(spec, data),
        model=run.model,
        temperature=run.temperature,
        max_tokens=run.max_tokens,
        sample_index=sample,
        output_kind=spec.output_kind,
        json_schema=spec.json_schema,
        label_set=tuple(spec.label_set),
        want_logprobs=spec.output_kind == "label"
        and run.provider in ("openai", "openai_compatible"),
    )


def _build_requests(
    run: TeacherRun, spec: TaskSpec, pairs: list[tuple[int, int]]
) -> tuple[list[TeacherRequest], list[str]]:
    """Requests for the pairs (inputs that cannot be rendered are reported, not sent)."""
    requests: list[TeacherRequest] = []
    errors: list[str] = []
    ids = sorted({input_id for input_id, _ in pairs})
    data: dict[int, Any] = {}
    for start in range(0, len(ids), 2000):
        chunk = ids[start : start + 2000]
        data.update(InputRow.objects.filter(pk__in=chunk).values_list("id", "data"))
    for input_id, sample in pairs:
        if input_id not in data:
            continue  # the input was deleted since the run started
        try:
            requests.append(_request_for(run, spec, input_id, sample, data[input_id]))
        except TemplateError as exc:
            if len(errors) < 20:
                errors.append(f"input #{input_id}: {exc}")
    return requests, errors


def _existing_cache_keys(team_id: int, keys: Iterable[str]) -> set[str]:
    found: set[str] = set()
    keys = list(keys)
    for start in range(0, len(keys), 2000):
        found.update(
            CachedResponse.objects.filter(
                team_id=team_id, key__in=keys[start : start + 2000]
            ).values_list("key", flat=True)
        )
    return found


# Storing results -------------------------------------------------------------------------------


@dataclass
class _Result:
    request: TeacherRequest
    key: str
    response: TeacherResponse
    cost: Decimal
    ledger_id: int | None = None


class _Recorder:
    """Writes the engine's results to the database. Every method is synchronous ORM code; the
    async runner reaches them through _DbPipe (one thread, writes grouped into transactions)."""

    def __init__(self, run: TeacherRun, spec: TaskSpec, *, batch: bool) -> None:
        self.run = run
        self.spec = spec
        self.team_id = run.project.team_id
        self.batch = batch
        self.stored = 0
        self.references: dict[int, str | None] = {}
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
        """Ledger rows (status "sent") for calls about to be made; commit before calling."""
        entries = []
        for request, key in zip(requests, keys, strict=True):
            input_id, sample = _pair_of(request.custom_id)
            entries.append(
                LedgerEntry(run=self.run, input_id=input_id, sample_index=sample, cache_key=key)
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
        self.results_many([_Result(request, key, response, cost, ledger_id)])

    def results_many(self, items: list[_Result]) -> None:
        """In ONE transaction: complete the ledger rows, cache the answers, store the outputs
        (parsed, checked) and add to the run's totals, so the totals always equal the ledger."""
        now = timezone.now()
        ledger_rows: list[LedgerEntry] = []
        cache_rows: list[CachedResponse] = []
        outputs: list[tuple[TeacherOutput, list[Any]]] = []
        totals = dict.fromkeys(
            ("calls", "hits", "failures", "input_tokens", "output_tokens"), 0
        ) | {"cost": Decimal(0)}
        self.preload_references(_pair_of(i.request.custom_id)[0] for i in items)
        for item in items:
            response = item.response
            called = not response.from_cache
            cost = _usd(item.cost) if called else Decimal(0)
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
        with transaction.atomic(savepoint=False):  # inside _DbPipe's transaction: no savepoint
            if ledger_rows:
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

    def _output(self, item: _Result, cost: Decimal) -> tuple[TeacherOutput, list[Any]]:
        response = item.response
        input_id, sample = _pair_of(item.request.custom_id)
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
    columns = [meta.get_field(name) for name in _LEDGER_COMPLETION_FIELDS]
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


class _DbPipe:
    """Group commit for the runner's callbacks: concurrent callers' cache reads, "sent" rows and
    results wait together for ONE database round (one transaction, one WAL flush) instead of one
    each. A caller resumes only after its rows are committed, so a "sent" row still exists
    before its call and an answer is durable before the next request is taken."""

    def __init__(self, recorder: _Recorder) -> None:
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


def _pair_of(custom_id: str) -> tuple[int, int]:
    input_id, _, sample = custom_id.partition("-")
    return int(input_id), int(sample or 0)


def _http_status(error: str | None) -> int | None:
    if not error:
        return None
    import re

    match = re.search(r"HTTP (\d{3})", error)
    return int(match.group(1)) if match else None


# Executing a live run --------------------------------------------------------------------------


def _run_price(run: TeacherRun) -> ModelPrice:
    data = (run.estimate or {}).get("price")
    if data:
        return price_from_json(data)
    price = price_for_model(team=run.project.team, model=run.model, provider=run.provider)
    if price is None:
        raise ValueError(f"no price for model {run.model!r}; add it to the team's price table")
    return price


def _begin_segment(job: Job, run: TeacherRun) -> tuple[int, int]:
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


def teacher_run_execute(*, job: Job) -> dict[str, Any]:
    """The work of the ``jobs.teacher_run`` task (live or batch). Raises JobPaused, JobCancelled,
    JobHandedOff (batch: polling continues in ``jobs.teacher_batch_poll``) or an error."""
    run = TeacherRun.objects.select_related("project__team", "credential").get(job=job)
    spec = run.project.task_spec()
    if run.mode == TeacherRunMode.BATCH:
        return _batch_begin(job, run, spec)
    return _execute_live(job, run, spec)


def _execute_live(job: Job, run: TeacherRun, spec: TaskSpec) -> dict[str, Any]:
    from asgiref.sync import sync_to_async

    from worker.teacher_runner import run as run_requests
    from worker.teachers import make_provider

    if run.pause_requested:
        raise job_services.JobPaused("paused by a user")
    done_before, total = _begin_segment(job, run)
    pairs = _missing_pairs(run)
    requests, render_errors = _build_requests(run, spec, pairs)
    config = provider_config_for_run(run)
    keys = {r.custom_id: cache_key(config, r) for r in requests}
    cached_keys = _existing_cache_keys(run.project.team_id, keys.values())
    price = _run_price(run)
    spent = ledger_totals(run)["cost_usd"]
    budget = None if run.budget_usd is None else max(Decimal(0), run.budget_usd - spent)
    recorder = _Recorder(run, spec, batch=False)
    recorder.preload_references(input_id for input_id, _ in pairs)
    pipe = _DbPipe(recorder)
    ledger_ids: dict[str, int] = {}

    async def cache_lookup(key: str) -> TeacherResponse | None:
        if key not in cached_keys:
            return None  # most keys: no database round trip
        found: TeacherResponse | None = await pipe.submit("get", key)
        return found

    async def sent(request: TeacherRequest, key: str) -> None:
        ledger_ids[request.custom_id] = await pipe.submit("sent", (request, key))

    async def result(
        request: TeacherRequest, key: str, response: TeacherResponse, cost: Decimal
    ) -> None:
        ledger_id = ledger_ids.pop(request.custom_id, None)
        await pipe.submit("result", _Result(request, key, response, cost, ledger_id))

    def check_stop() -> str | None:
        run_flags = TeacherRun.objects.filter(pk=run.pk).values_list("pause_requested").first()
        try:
            job_services.job_progress(
                job=job,
                done=done_before + recorder.stored,
                total=total,
                figures=_live_figures(run.pk),
            )
        except job_services.JobCancelled:
            return "cancelled"
        if run_flags and run_flags[0]:
            return "paused"
        return None

    should_stop = sync_to_async(check_stop, thread_sensitive=True)

    async def main() -> Any:
        provider = make_provider(config)
        try:
            return await run_requests(
                requests,
                provider,
                concurrency=run.concurrency,
                budget_usd=budget,
                price=price,
                cache_lookup=cache_lookup,
                on_sent=sent,
                on_result=result,
                should_stop=should_stop,
                key_for=lambda r: keys[r.custom_id],
            )
        finally:
            await provider.aclose()
            # The callbacks' thread has its own connection: give it back.
            await sync_to_async(connections.close_all, thread_sensitive=True)()

    summary = asyncio.run(main())
    job_services.job_progress(job=job, done=done_before + recorder.stored, total=total)
    reason = summary.stopped_reason
    if reason == "cancelled":
        raise job_services.JobCancelled
    if reason == "paused" or (reason or "").startswith("budget"):
        message = "paused by a user" if reason == "paused" else str(reason)
        if reason != "paused":
            message += ". Raise the budget cap and resume to continue."
        TeacherRun.objects.filter(pk=run.pk).update(stopped_reason=message[:200])
        raise job_services.JobPaused(message)
    if reason:
        TeacherRun.objects.filter(pk=run.pk).update(stopped_reason=reason[:200])
        raise RuntimeError(reason)
    missing = len(_missing_pairs(run))
    result_summary = {
        **_population_checks(run),
        "outputs": total - missing,
        "calls": summary.calls,
        "cache_hits": summary.cache_hits,
        "retries": summary.retries,
        "failed": summary.failed,
        "cost_usd": str(_usd(summary.cost_usd)),
    }
    if missing:
        first = summary.failures[0][1] if summary.failures else (render_errors or [""])[0]
        message = (
            f"{missing} of {total} answers are missing ({summary.failed} calls failed"
            + (f", {len(render_errors)} inputs could not be rendered" if render_errors else "")
            + f"). First error: {first}. Resume the run to retry them."
        )
        TeacherRun.objects.filter(pk=run.pk).update(stopped_reason=message[:200])
        raise RuntimeError(message)
    return result_summary


def _population_checks(run: TeacherRun) -> dict[str, int]:
    """Length outliers and repeated outputs need every output of the project: they run once a
    run's answers are stored (also when some are missing), replacing the previous ones."""
    from teachers.checks import population_checks_run

    found = population_checks_run(project=run.project)
    return {f"flagged_{code}": n for code, n in found.items() if code != "outputs_checked"}


def _live_figures(run_id: int) -> dict[str, Any]:
    row = (
        TeacherRun.objects.filter(pk=run_id)
        .values("cost_usd", "failures", "calls_made", "cache_hits")
        .first()
    ) or {}
    return {
        "cost so far": f"${row.get('cost_usd', 0):.4f}",
        "calls": row.get("calls_made", 0),
        "cache hits": row.get("cache_hits", 0),
        "failures": row.get("failures", 0),
    }


# Batch mode ------------------------------------------------------------------------------------


def _batch_requests_for(
    run: TeacherRun, spec: TaskSpec, ledger_rows: list[LedgerEntry]
) -> list[TeacherRequest]:
    pairs = [(row.input_id, row.sample_index) for row in ledger_rows if row.input_id is not None]
    requests, _ = _build_requests(run, spec, pairs)
    return requests


def _schedule_poll(job: Job, run: TeacherRun, *, chain: str, delay_s: float) -> None:
    from distillery.celery import app

    app.send_task(
        "jobs.teacher_batch_poll", args=[job.pk, chain], countdown=delay_s, queue="default"
    )


def _new_chain(run: TeacherRun) -> str:
    chain = uuid.uuid4().hex
    state = {**run.batch_state, "chain": chain}
    TeacherRun.objects.filter(pk=run.pk).update(batch_state=state)
    run.batch_state = state
    return chain


def _batch_begin(job: Job, run: TeacherRun, spec: TaskSpec) -> dict[str, Any]:
    """Store cached answers, submit the rest as one provider batch (ledger rows first), and hand
    the job to the poll task. A re-claimed job with a batch in flight only resumes polling."""
    from worker.teachers import batch as batch_api

    done_before, total = _begin_segment(job, run)
    state = run.batch_state or {}
    poll_s = float(state.get("poll_s") or settings.TEACHER_BATCH_POLL_S)
    if state.get("batch_id") and not state.get("collected"):
        chain = _new_chain(run)
        _schedule_poll(job, run, chain=chain, delay_s=0)
        raise job_services.JobHandedOff

    pairs = _missing_pairs(run)
    requests, render_errors = _build_requests(run, spec, pairs)
    config = provider_config_for_run(run)
    recorder = _Recorder(run, spec, batch=True)
    keys = [cache_key(config, r) for r in requests]
    cached = _existing_cache_keys(run.project.team_id, keys)
    to_send: list[TeacherRequest] = []
    send_keys: list[str] = []
    hits: list[_Result] = []
    found = recorder.cache_get_many([k for k in keys if k in cached]) if cached else {}
    for request, key in zip(requests, keys, strict=True):
        response = found.get(key)
        if response is not None:
            response = TeacherResponse.from_json(response.to_json())  # one per request
            response.custom_id = request.custom_id
            response.from_cache = True
            response.attempts = 0
            hits.append(_Result(request, key, response, Decimal(0)))
            continue
        to_send.append(request)
        send_keys.append(key)
    for start in range(0, len(hits), 500):
        recorder.results_many(hits[start : start + 500])
    if not to_send:
        job_services.job_progress(job=job, done=done_before + recorder.stored, total=total)
        if render_errors:
            raise RuntimeError(
                f"{len(render_errors)} inputs could not be rendered: {render_errors[0]}"
            )
        return {"outputs": done_before + recorder.stored, "calls": 0, "cache_hits": recorder.stored}

    price = _run_price(run)
    if run.budget_usd is not None:
        worst = Decimal(0)
        for request in to_send:
            counted = pricing.count_message_tokens(request.messages, request.model)
            tokens = counted.tokens if counted.exact else int(counted.tokens * 1.5) + 1
            worst += price.cost(tokens, request.max_tokens, batch=True)
        spent = ledger_totals(run)["cost_usd"]
        if spent + worst > run.budget_usd:
            message = (
                f"budget: the cap of ${run.budget_usd} could be exceeded by this batch "
                f"(spent ${_usd(spent)}; the batch could cost up to ${_usd(worst)}). "
                "Raise the budget cap and resume to continue."
            )
            TeacherRun.objects.filter(pk=run.pk).update(stopped_reason=message[:200])
            raise job_services.JobPaused(message)

    ledger_ids = recorder.sent_many(to_send, send_keys)  # committed before the submission
    submission = batch_api.submit(config, to_send)
    now = timezone.now()
    history = list(state.get("history") or [])
    new_state = {
        "poll_s": poll_s,
        "batch_id": submission.batch_id,
        "input_file_id": submission.input_file_id,
        "provider": run.provider,
        "request_count": submission.request_count,
        "state": "submitted",
        "submitted_at": now.isoformat(),
        "ledger_ids": [min(ledger_ids), max(ledger_ids)],
        "history": history,
        "collected": False,
    }
    with transaction.atomic():
        TeacherRun.objects.filter(pk=run.pk).update(batch_state=new_state)
        LedgerEntry.objects.filter(pk__in=ledger_ids).update(
            provider_request_id=f"batch:{submission.batch_id}"[:200]
        )
    run.batch_state = new_state
    chain = _new_chain(run)
    job_services.job_progress(
        job=job, done=done_before + recorder.stored, total=total, figures={"batch": "submitted"}
    )
    _schedule_poll(job, run, chain=chain, delay_s=poll_s)
    raise job_services.JobHandedOff


def teacher_batch_poll_step(*, job_id: int, chain: str) -> None:
    """One poll of a run's provider batch: heartbeat, then collect when it is done or schedule
    the next poll. Superseded chains (after a re-claim) stop quietly."""
    job = Job.objects.filter(pk=job_id, status=JobStatus.RUNNING).first()
    if job is None:
        return
    run = TeacherRun.objects.select_related("project__team", "credential").get(job=job)
    if (run.batch_state or {}).get("chain") != chain:
        return
    try:
        outcome = _batch_poll(job, run)
    except job_services.JobCancelled:
        job_services.job_mark_cancelled(job=job)
        return
    except Exception as exc:
        logger.exception("job %s: batch poll failed", job_id)
        job_services.job_fail(job=job, error=str(exc) or exc.__class__.__name__)
        return
    if outcome is None:
        _schedule_poll(
            job,
            run,
            chain=chain,
            delay_s=float(run.batch_state.get("poll_s") or settings.TEACHER_BATCH_POLL_S),
        )
        return
    if outcome.get("missing"):
        why = f" The provider said: {outcome['error']}." if outcome.get("error") else ""
        job_services.job_fail(
            job=job,
            error=(
                f"{outcome['missing']} answers are missing after the batch "
                f"({outcome['failed']} requests failed or were not processed).{why} "
                "Resume the run to send them again."
            ),
        )
        return
    job_services.job_succeed(job=job, result=outcome)


def _batch_poll(job: Job, run: TeacherRun) -> dict[str, Any] | None:
    """None while the batch runs; its outcome once collected. Raises JobCancelled once a
    cancelled batch has ended (what it finished before the cancel is stored and paid for)."""
    from worker.teachers import batch as batch_api

    state = dict(run.batch_state)
    config = provider_config_for_run(run)
    batch_id = state["batch_id"]
    total = len(run.input_ids) * run.samples_per_input
    cancel = Job.objects.filter(pk=job.pk, cancel_requested=True).exists()
    if cancel and not state.get("cancel_sent"):
        status = batch_api.cancel(config, batch_id)
        state["cancel_sent"] = True
    else:
        status = batch_api.poll(config, batch_id)
    state.update(
        state=status.state,
        provider_status=status.provider_status,
        total=status.total,
        completed=status.completed,
        failed=status.failed,
        error=status.error,
        polled_at=timezone.now().isoformat(),
    )
    TeacherRun.objects.filter(pk=run.pk).update(batch_state=state)
    run.batch_state = state
    done = TeacherOutput.objects.filter(run=run).count()
    # A cancel is handled above, at the provider, on this poll or the next.
    with contextlib.suppress(job_services.JobCancelled):
        job_services.job_progress(
            job=job,
            done=done,
            total=total,
            figures={"batch": f"{status.state} ({status.completed}/{status.total})"},
        )
    if not status.done:
        return None
    outcome = _collect(run, config, batch_id, cancelled=cancel)
    if cancel:
        raise job_services.JobCancelled
    if status.error:
        outcome["error"] = status.error
    return outcome


def _collect(
    run: TeacherRun, config: ProviderConfig, batch_id: str, *, cancelled: bool
) -> dict[str, Any]:
    """Store every answer the batch has, complete its ledger rows at the batch price, and close
    the rows of requests it never processed (not billed)."""
    from worker.teachers import batch as batch_api

    spec = run.project.task_spec()
    rows = list(
        LedgerEntry.objects.filter(
            run=run, status=LedgerStatus.SENT, provider_request_id=f"batch:{batch_id}"[:200]
        )
    )
    requests = _batch_requests_for(run, spec, rows)
    by_id = {r.custom_id: r for r in requests}
    responses = batch_api.collect(config, batch_id, requests)
    price = _run_price(run)
    recorder = _Recorder(run, spec, batch=True)
    failed = 0
    items: list[_Result] = []
    for row in rows:
        custom_id = custom_id_for(row.input_id or 0, row.sample_index)
        request = by_id.get(custom_id)
        response = responses.get(custom_id)
        if request is None:
            LedgerEntry.objects.filter(pk=row.pk).update(
                status=LedgerStatus.FAILED,
                error="the input was deleted",
                completed_at=timezone.now(),
            )
            failed += 1
            continue
        if response is None:
            response = TeacherResponse(
                custom_id=custom_id,
                raw_text="",
                error="not processed: the batch "
                + ("was cancelled" if cancelled else "ended without this request"),
            )
        cost = Decimal(0)
        if response.ok:
            cost = price.cost(response.input_tokens, response.output_tokens, batch=True)
        else:
            failed += 1
        response.attempts = 1
        items.append(_Result(request, row.cache_key, response, cost, ledger_id=row.pk))
    for start in range(0, len(items), 500):
        recorder.results_many(items[start : start + 500])
    state = {**run.batch_state, "collected": True, "collected_at": timezone.now().isoformat()}
    state["history"] = [*(state.get("history") or []), batch_id]
    TeacherRun.objects.filter(pk=run.pk).update(batch_state=state)
    run.batch_state = state
    missing = len(_missing_pairs(run))
    run.refresh_from_db(fields=["cost_usd", "calls_made", "cache_hits"])
    return {
        **_population_checks(run),
        "outputs": len(run.input_ids) * run.samples_per_input - missing,
        "batch_id": batch_id,
        "failed": failed,
        "missing": missing,
        "cost_usd": str(run.cost_usd),
    }
