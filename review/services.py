"""Writes for review. Decisions, bulk actions, rules and assignment live in their own modules
(review/decisions.py, bulk.py, rules.py, assignment.py, audit.py) and are re-exported here, so
views and other apps write through `review.services`; the LLM judge and the checks job are
here. Every write records an AuditEvent in the same transaction as the change it records."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet

from jobs.models import Job
from projects.models import Project
from review.assignment import assignments_create
from review.audit import audit_record
from review.bulk import bulk_count, bulk_decide, correction_apply_to_identical, identical_count
from review.decisions import (
    ACTIONS,
    DecisionConflict,
    comment_add,
    conflict_resolve,
    decision_undo_last,
    edit_value_parse,
    output_decide,
    rationale_edit,
)
from review.models import AuditAction, ReviewSettings
from review.rules import rule_create, rule_delete, rule_title, rules_apply
from teachers.checks import JUDGE_CODES, flags_replace, population_checks_run
from teachers.models import ReviewStatus, TeacherOutput
from teams.models import ProviderCredential
from worker import checks

if TYPE_CHECKING:
    from worker.pricing import ModelPrice
    from worker.taskspec import TaskSpec
    from worker.teacher_runner import RunSummary
    from worker.teachers import ProviderConfig, TeacherRequest, TeacherResponse

__all__ = [
    "ACTIONS",
    "DecisionConflict",
    "JudgeSetup",
    "assignments_create",
    "audit_record",
    "bulk_count",
    "bulk_decide",
    "checks_job_run",
    "checks_start",
    "comment_add",
    "conflict_resolve",
    "correction_apply_to_identical",
    "decision_undo_last",
    "edit_value_parse",
    "identical_count",
    "judge_run",
    "judge_settings_update",
    "output_decide",
    "rationale_edit",
    "review_settings_for",
    "rule_create",
    "rule_delete",
    "rule_title",
    "rules_apply",
]


# LLM judge --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JudgeSetup:
    rubric: checks.JudgeRubric
    credential_id: int
    model: str


def review_settings_for(*, project: Project) -> ReviewSettings:
    settings_row, _ = ReviewSettings.objects.get_or_create(project=project)
    return settings_row


def judge_settings_update(
    *,
    project: Project,
    user: User,
    rubric: str,
    scale: str,
    pass_score: float | None,
    credential: ProviderCredential | None,
    model: str,
) -> ReviewSettings:
    if credential is not None and credential.team_id != project.team_id:
        raise ValidationError({"credential": "choose one of this team's credentials"})
    if scale not in ("1-5", "0-1"):
        raise ValidationError({"scale": "the scale is 1-5 or 0-1"})
    low, high = (1.0, 5.0) if scale == "1-5" else (0.0, 1.0)
    if pass_score is not None and not low <= pass_score <= high:
        raise ValidationError({"pass_score": f"on the {scale} scale, between {low:g} and {high:g}"})
    row = review_settings_for(project=project)
    row.judge_rubric = rubric.strip()
    row.judge_scale = scale
    row.judge_pass_score = pass_score
    row.judge_credential = credential
    row.judge_model = model.strip()
    row.save()
    return row


def _judge_setup(project: Project) -> JudgeSetup:
    row = review_settings_for(project=project)
    if not row.judge_rubric:
        raise ValidationError("Write the judge's rubric first.")
    if row.judge_credential_id is None or not row.judge_model:
        raise ValidationError("Choose the judge's credential and model first.")
    return JudgeSetup(
        rubric=checks.JudgeRubric(
            text=row.judge_rubric,
            scale=row.judge_scale,  # type: ignore[arg-type]
            pass_score=row.judge_pass_score,
        ),
        credential_id=row.judge_credential_id,
        model=row.judge_model,
    )


def _judge_price(project: Project, model: str, provider: str) -> Any:
    """The team's price for the judge model (the same lookup as teacher runs)."""
    from teachers.services import price_for_model

    price = price_for_model(team=project.team, model=model, provider=provider)
    if price is None:
        raise ValidationError(
            f"No price for the judge model {model!r}: add it to the team's price table, so the "
            "judge's calls can be metered."
        )
    return price


@dataclass
class _JudgeTally:
    """What a judge run has done so far: the progress figures and the job's result."""

    done: int = 0
    cost: Decimal = Decimal(0)
    calls: int = 0
    cache_hits: int = 0
    failed: int = 0
    low: int = 0

    def figures(self) -> dict[str, Any]:
        return {"judge cost": f"${self.cost:.4f}", "judged": self.done}

    def result(self) -> dict[str, Any]:
        return {
            "judged": self.done,
            "judge_calls": self.calls,
            "judge_cache_hits": self.cache_hits,
            "judge_low_scores": self.low,
            "judge_errors": self.failed,
            "judge_cost_usd": f"{self.cost:.6f}",
        }


@dataclass(frozen=True)
class _Judge:
    """What every batch of a judge run needs."""

    project: Project
    setup: JudgeSetup
    spec: TaskSpec
    config: ProviderConfig
    price: ModelPrice


def judge_run(
    *,
    project: Project,
    progress: Callable[[int, int, dict[str, Any]], None],
    scope: QuerySet[TeacherOutput] | None = None,
    chunk_size: int = 64,
) -> dict[str, Any]:
    """Ask the LLM judge about each unreviewed output (or `scope`) through the teacher engine
    (worker.teacher_runner), with the team's response cache, and record a score, a reason and
    judge flags. `progress(done, total, figures)` may raise to stop (cancel)."""
    setup = _judge_setup(project)
    spec = project.task_spec()
    credential = ProviderCredential.objects.get(pk=setup.credential_id, team=project.team)
    price = _judge_price(project, setup.model, credential.provider)
    rows = (
        scope
        if scope is not None
        else TeacherOutput.objects.filter(project=project, review_status=ReviewStatus.UNREVIEWED)
    )
    rows = rows.filter(project=project).order_by("pk")
    total = rows.count()
    tally = _JudgeTally()
    progress(0, total, {})
    judge = _Judge(project, setup, spec, credential.provider_config_dangerously(), price)
    batch: list[TeacherOutput] = []
    for output in rows.select_related("input").iterator(chunk_size=chunk_size):
        batch.append(output)
        if len(batch) >= chunk_size:
            _judge_batch(judge, batch, tally)
            batch.clear()
            progress(tally.done, total, tally.figures())
    if batch:
        _judge_batch(judge, batch, tally)
        progress(tally.done, total, tally.figures())
    return tally.result()


def _judge_batch(judge: _Judge, batch: list[TeacherOutput], tally: _JudgeTally) -> None:
    """Judge one batch of outputs: ask, then record the verdicts; count it in ``tally``."""
    answers, summary = _judge_ask(judge, _judge_requests(judge, batch))
    tally.cost += summary.cost_usd
    tally.calls += summary.calls
    tally.cache_hits += summary.cache_hits
    _judge_record(judge, batch, answers, summary.stopped_reason, tally)
    tally.done += len(batch)


def _judge_requests(judge: _Judge, batch: list[TeacherOutput]) -> list[TeacherRequest]:
    """One request to the judge per output, named ``judge-<pk>``."""
    from worker.teachers import TeacherRequest

    return [
        TeacherRequest(
            custom_id=f"judge-{output.pk}",
            messages=checks.build_judge_messages(
                judge.setup.rubric, judge.spec, output.input.data, output.raw_text
            ),
            model=judge.setup.model,
            temperature=0.0,
            max_tokens=400,
            output_kind="text",
        )
        for output in batch
    ]


def _judge_ask(
    judge: _Judge, requests: list[TeacherRequest]
) -> tuple[dict[str, TeacherResponse], RunSummary]:
    """The judge's answers by custom_id (through the team's response cache) and the run's
    summary. Raises when the judge could not be reached at all."""
    from teachers.calls import TeamResponseCache, teacher_calls_run

    cache = TeamResponseCache.load(
        team_id=judge.project.team_id, config=judge.config, requests=requests
    )
    answers: dict[str, TeacherResponse] = {}

    def on_result(request: Any, key: str, response: TeacherResponse, usd: Decimal) -> None:
        answers[request.custom_id] = response

    summary = teacher_calls_run(
        requests, judge.config, price=judge.price, concurrency=8, cache=cache, on_result=on_result
    )
    if summary.stopped is not None and not answers:
        raise RuntimeError(f"the judge could not be reached: {summary.stopped_reason}")
    return answers, summary


def _judge_record(
    judge: _Judge,
    batch: list[TeacherOutput],
    answers: dict[str, TeacherResponse],
    stopped_reason: str | None,
    tally: _JudgeTally,
) -> None:
    """Turn each answer into a verdict, and store the scores, reasons and judge flags of the
    batch in one transaction; count failures and low scores in ``tally``."""
    flags: dict[int, list[checks.Flag]] = {}
    for output in batch:
        response = answers.get(f"judge-{output.pk}")

        def call(_messages: list[dict[str, str]], response: Any = response) -> str:
            if response is None:
                raise RuntimeError(stopped_reason or "no answer")
            if not response.ok:
                raise RuntimeError(response.error)
            return str(response.raw_text)

        verdict, found = checks.judge_output(
            call, judge.setup.rubric, judge.spec, output.input.data, output.raw_text
        )
        tally.failed += int(verdict.score is None)
        tally.low += int(any(f.code == checks.JUDGE_LOW_SCORE for f in found))
        output.judge_score = verdict.normalised
        output.judge_reason = (verdict.reason or verdict.error)[:5000]
        flags[output.pk] = found
    with transaction.atomic():
        TeacherOutput.objects.bulk_update(batch, ["judge_score", "judge_reason"])
        flags_replace(
            project=judge.project,
            codes=JUDGE_CODES,
            flags=flags,
            scope=TeacherOutput.objects.filter(pk__in=[o.pk for o in batch]),
        )


# The checks job -------------------------------------------------------------------------------


def checks_start(*, project: Project, user: User, judge: bool, apply_rules: bool) -> Job:
    """Start the checks job: population checks, then (optionally) the judge and the rules."""
    from jobs.models import JobKind
    from jobs.services import job_create

    if not TeacherOutput.objects.filter(project=project).exists():
        raise ValidationError("There are no teacher outputs to check yet.")
    if judge:
        _judge_setup(project)  # refuse now, with the message, rather than fail in the worker
        row = review_settings_for(project=project)
        _judge_price(project, row.judge_model, row.judge_credential.provider)  # type: ignore[union-attr]
    return job_create(
        team=project.team,
        project=project,
        kind=JobKind.REVIEW_CHECKS,
        user=user,
        params={"judge": bool(judge), "apply_rules": bool(apply_rules)},
    )


def checks_job_run(
    *, job: Job, progress: Callable[[int, int, dict[str, Any]], None]
) -> dict[str, Any]:
    if job.project_id is None:
        raise ValueError(f"job #{job.pk} has no project to check")
    project = Project.objects.get(pk=job.project_id)
    result: dict[str, Any] = {}
    result.update(population_checks_run(project=project))
    if job.params.get("judge"):
        result.update(judge_run(project=project, progress=progress))
    if job.params.get("apply_rules"):
        applied = rules_apply(project=project, user=job.created_by)
        result["decided_by_rules"] = sum(applied.values())
    audit_record(
        project=project,
        actor=job.created_by,
        action=AuditAction.CHECKS,
        summary=(
            f"Automatic checks ran over {result['outputs_checked']:,} outputs"
            + (" with the LLM judge" if job.params.get("judge") else "")
            + (
                f"; auto rules decided {result['decided_by_rules']:,}"
                if "decided_by_rules" in result
                else ""
            )
        ),
        after=result,
        detail={"job_id": job.pk},
    )
    return result
