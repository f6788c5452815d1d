"""Reads for teacher runs and prices. Callers pass objects already resolved through the team."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.core.paginator import Page, Paginator
from django.db.models import QuerySet
from django.utils import timezone

from jobs import services as job_services
from jobs.models import JobStatus
from projects.models import InputRow, Project
from teachers.models import LedgerEntry, LedgerStatus, PriceEntry, TeacherOutput, TeacherRun
from teachers.recording import LostCalls, lost_calls
from teams.models import Team
from worker import pricing

OUTPUTS_PER_PAGE = 25


def runs_for_project(*, project: Project) -> QuerySet[TeacherRun]:
    return (
        TeacherRun.objects.filter(project=project)
        .select_related("job", "credential", "job__created_by")
        .order_by("-created_at")
    )


@dataclass
class RunProgress:
    status: str
    status_label: str
    done: int
    total: int
    percent: int
    calls: int
    cache_hits: int
    failures: int
    input_tokens: int
    output_tokens: int
    cost_usd: Decimal
    eta_s: float | None
    in_flight: int  # ledger rows sent with no answer recorded yet
    lost: LostCalls  # calls a dead worker left unanswered: charged, possibly paid twice
    stopped_reason: str
    error: str
    cancel_requested: bool
    pause_requested: bool

    @property
    def is_live(self) -> bool:
        """Whether the page should keep polling."""
        return self.status in (JobStatus.QUEUED, JobStatus.RUNNING)

    @property
    def all_from_cache(self) -> bool:
        return (
            self.status == JobStatus.SUCCEEDED
            and self.calls == 0
            and self.cache_hits > 0
            and self.done == self.total
        )

    @property
    def eta_text(self) -> str:
        if self.eta_s is None:
            return "—"
        seconds = int(self.eta_s)
        if seconds < 60:
            return f"{seconds} s"
        if seconds < 3600:
            return f"{seconds // 60} min {seconds % 60:02d} s"
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def run_progress(*, run: TeacherRun) -> RunProgress:
    """Live figures for the run page: read from the run's rows (the ledger's running totals)."""
    run.refresh_from_db()
    job = job_services.job_live_view(run.job)
    job.refresh_from_db(fields=["status", "error", "cancel_requested"])
    total = len(run.input_ids) * run.samples_per_input
    done = TeacherOutput.objects.filter(run=run).count()
    if job.status == JobStatus.SUCCEEDED:
        total = max(total, done)
    eta = None
    if job.status == JobStatus.RUNNING and run.segment_started_at and done < total:
        elapsed = (timezone.now() - run.segment_started_at).total_seconds()
        rate = (done - run.segment_done_start) / elapsed if elapsed > 0 else 0
        if rate > 0:
            eta = (total - done) / rate
    in_flight = LedgerEntry.objects.filter(run=run, status=LedgerStatus.SENT).count()
    lost = lost_calls(run)
    return RunProgress(
        status=job.status,
        status_label=job.get_status_display(),
        done=done,
        total=total,
        percent=100 if total and done >= total else int(100 * done / total) if total else 0,
        calls=run.calls_made,
        cache_hits=run.cache_hits,
        failures=run.failures,
        input_tokens=run.input_tokens,
        output_tokens=run.output_tokens,
        cost_usd=run.cost_usd,
        eta_s=eta,
        in_flight=in_flight,
        lost=lost,
        stopped_reason=run.stopped_reason,
        error=job.error,
        cancel_requested=job.cancel_requested,
        pause_requested=run.pause_requested,
    )


def run_outputs(*, run: TeacherRun, page: Any = 1, problems_only: bool = False) -> Page[Any]:
    outputs = (
        TeacherOutput.objects.filter(run=run)
        .select_related("input")
        .order_by("input_id", "sample_index")
    )
    if problems_only:
        outputs = outputs.exclude(parse_error="", flag_codes=[])
    return Paginator(outputs, OUTPUTS_PER_PAGE).get_page(page)


def run_failed_calls(*, run: TeacherRun, limit: int = 20) -> QuerySet[LedgerEntry]:
    return (
        LedgerEntry.objects.filter(run=run, status=LedgerStatus.FAILED)
        .select_related("input")
        .order_by("-id")[:limit]
    )


@dataclass
class PriceRow:
    model: str
    provider: str
    input_per_1m: Decimal
    output_per_1m: Decimal
    batch_multiplier: Decimal
    override: PriceEntry | None
    default: pricing.ModelPrice | None


def price_rows(*, team: Team) -> list[PriceRow]:
    """The shipped defaults with the team's overrides in their place, plus the team's own models."""
    overrides = {e.model.strip().lower(): e for e in PriceEntry.objects.filter(team=team)}
    rows: list[PriceRow] = []
    for model, price in pricing.DEFAULT_PRICES.items():
        entry = overrides.pop(model, None)
        rows.append(_row(model, price.provider, entry, price))
    for _model, entry in sorted(overrides.items()):
        rows.append(_row(entry.model, "", entry, None))
    return rows


def _row(
    model: str, provider: str, entry: PriceEntry | None, default: pricing.ModelPrice | None
) -> PriceRow:
    if entry is not None:
        return PriceRow(
            model=model,
            provider=provider or "custom",
            input_per_1m=entry.input_usd_per_mtok,
            output_per_1m=entry.output_usd_per_mtok,
            batch_multiplier=entry.batch_multiplier,
            override=entry,
            default=default,
        )
    assert default is not None
    return PriceRow(
        model=model,
        provider=provider,
        input_per_1m=default.input_per_1m,
        output_per_1m=default.output_per_1m,
        batch_multiplier=Decimal(1) - default.batch_discount,
        override=None,
        default=default,
    )


SEED_CHOICES = 100


def synthesis_choices(*, project: Project) -> tuple[list[tuple[int, str]], list[tuple[str, str]]]:
    """The synthesis form's choices: the first SEED_CHOICES real inputs (id, text shortened),
    and for a label task each label with its approved outputs, fewest first (the short ones)."""
    from collections import Counter

    from teachers.models import ReviewStatus

    seeds = [
        (pk, " · ".join(str(v) for v in (data or {}).values())[:140])
        for pk, data in InputRow.objects.filter(project=project, synthetic=False)
        .order_by("pk")
        .values_list("pk", "data")[:SEED_CHOICES]
    ]
    if project.output_kind != "label":
        return seeds, []
    approved = Counter(
        value
        for value in TeacherOutput.objects.filter(
            project=project, review_status__in=[ReviewStatus.APPROVED, ReviewStatus.EDITED]
        ).values_list("parsed", flat=True)
        if isinstance(value, str)
    )
    labels = sorted(project.label_set or [], key=lambda label: (approved[label], label))
    return seeds, [(label, f"{label} ({approved[label]} approved)") for label in labels]
