"""Teacher runs before and around execution: choosing inputs, settings, estimate, start,
pause, resume, cancel."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q

from jobs import services as job_services
from jobs.models import JobKind, JobStatus
from projects.models import InputRow, Project
from teachers.models import TeacherRun, TeacherRunMode
from teachers.prices import LOCAL_PROVIDER, price_for_model, price_to_json, usd
from teams.models import ProviderCredential, Team
from teams.paths import resolve_team_model_folder
from worker import pricing
from worker.taskspec import SpecError, TaskSpec, TemplateError, build_messages

ESTIMATE_COUNT_LIMIT = 1000  # prompts counted exactly for an estimate; the rest extrapolated

BATCH_PROVIDERS = ("openai", "anthropic")

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
    roots: list[str | Path] = list(settings.TEACHER_LOCAL_MODEL_ROOTS) or [settings.DATA_DIR]
    return [Path(root).resolve() for root in roots]


def resolve_local_model_path(path: str, *, team: Team) -> Path:
    """The local teacher's folder a user typed, only inside that team's area (the shared
    ``models/`` folder, its own ``…/team-<id>/…`` folders, or a TEACHER_LOCAL_MODEL_ROOTS folder
    outside the data directory), with a refusal that reads the same whether the folder is
    missing or another team's."""
    return resolve_team_model_folder(
        path, team_id=team.pk, roots=local_model_roots(), field="local_model_path"
    )


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
        resolve_local_model_path(s.local_model_path, team=project.team)
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
        expected_usd = usd(price.cost(prompt_tokens_total, calls * per_call, batch=batch))
        worst_usd = usd(
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
    user: User,
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
