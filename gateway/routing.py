"""The routing policy as each request reads it: a snapshot per project, reused for
GATEWAY_POLICY_CACHE_S seconds (a change on the page takes effect within that time, no restart),
and the seeded decisions (canary share, sampling) that depend only on the input's content."""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import Sum
from django.utils import timezone

from gateway.models import GatewayPolicy, GatewayRequest, Mode
from jobs import services as job_services
from jobs.models import JobKind
from projects.models import Project
from teachers.models import TeacherRun, TeacherRunMode
from teachers.prices import price_for_model, price_to_json
from worker.pricing import ModelPrice
from worker.taskspec import TaskSpec
from worker.teachers.base import ProviderConfig

GATEWAY_SOURCE = "gateway"


@dataclass
class Snapshot:
    project_id: int
    team_id: int
    slug: str
    spec: TaskSpec
    mode: str
    teacher_config: ProviderConfig | None  # holds the decrypted key: memory only, never logged
    teacher_fingerprint: tuple[Any, ...]
    teacher_model: str
    teacher_max_tokens: int
    price: ModelPrice | None
    teacher_run_id: int | None
    student_model: str | None  # the served slug, None when nothing active is served
    student_timeout_s: float
    canary_percent: int
    cascade_threshold: float
    seed: int
    record_inputs: bool
    sample_rate: float
    monthly_budget_usd: Decimal | None
    budget_fallback_to_student: bool
    loaded_at: float
    month_spent_usd: Decimal
    spent_since_load: Decimal = Decimal(0)

    @property
    def has_teacher(self) -> bool:
        return self.teacher_config is not None and self.price is not None

    def over_budget(self) -> bool:
        if self.monthly_budget_usd is None:
            return False
        return self.month_spent_usd + self.spent_since_load >= self.monthly_budget_usd


def share(seed: int, salt: str, input_hash: str) -> float:
    """A number in [0, 1) fixed by the seed and the input's content: the same input always gets
    the same canary / sampling decision, and the shares match the set percentages."""
    digest = hashlib.sha256(f"{seed}:{salt}:{input_hash}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def month_start() -> Any:
    return timezone.now().replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def month_spent(project_id: int) -> Decimal:
    total = GatewayRequest.objects.filter(
        project_id=project_id, created_at__gte=month_start()
    ).aggregate(s=Sum("cost_usd"))["s"]
    return Decimal(total or 0)


def gateway_teacher_run(*, policy: GatewayPolicy, price: ModelPrice) -> TeacherRun:
    """The project's teacher run for production traffic with this credential and model: its
    ledger meters the gateway's teacher calls and its outputs are the recorded answers."""
    project = policy.project
    found = TeacherRun.objects.filter(
        project=project,
        source=GATEWAY_SOURCE,
        credential=policy.credential,
        model=policy.teacher_model,
    ).first()
    if found is not None:
        return found
    job = job_services.job_record_finished(
        team=project.team,
        project=project,
        kind=JobKind.TEACHER_RUN,
        user=policy.updated_by,
        params={"gateway": True},
        result={"source": "production traffic through the gateway"},
    )
    assert policy.credential is not None
    return TeacherRun.objects.create(
        job=job,
        project=project,
        credential=policy.credential,
        provider=policy.credential.provider,
        model=policy.teacher_model,
        mode=TeacherRunMode.LIVE,
        max_tokens=policy.teacher_max_tokens,
        concurrency=1,
        selection={"kind": "gateway"},
        estimate={"price": price_to_json(price)},
        source=GATEWAY_SOURCE,
    )


def load_snapshot(project: Project) -> Snapshot:
    policy, _ = GatewayPolicy.objects.select_related("credential", "served_model").get_or_create(
        project=project
    )
    policy.project = project
    credential = policy.credential
    config: ProviderConfig | None = None
    price: ModelPrice | None = None
    run_id: int | None = None
    fingerprint: tuple[Any, ...] = ()
    if credential is not None and policy.teacher_model:
        config = credential.provider_config_dangerously()
        fingerprint = (credential.pk, bytes(credential.encrypted_key), credential.base_url)
        price = price_for_model(
            team=project.team, model=policy.teacher_model, provider=credential.provider
        )
        if price is not None:
            run_id = gateway_teacher_run(policy=policy, price=price).pk
    served = policy.served_model
    return Snapshot(
        project_id=project.pk,
        team_id=project.team_id,
        slug=project.slug,
        spec=project.task_spec(),
        mode=policy.mode,
        teacher_config=config,
        teacher_fingerprint=fingerprint,
        teacher_model=policy.teacher_model,
        teacher_max_tokens=policy.teacher_max_tokens,
        price=price,
        teacher_run_id=run_id,
        student_model=served.slug if served is not None and served.active else None,
        student_timeout_s=policy.student_timeout_ms / 1000,
        canary_percent=policy.canary_percent,
        cascade_threshold=policy.cascade_threshold,
        seed=policy.seed,
        record_inputs=policy.record_inputs,
        sample_rate=policy.sample_rate,
        monthly_budget_usd=policy.monthly_budget_usd,
        budget_fallback_to_student=policy.budget_fallback_to_student,
        loaded_at=time.monotonic(),
        month_spent_usd=month_spent(project.pk)
        if policy.monthly_budget_usd is not None
        else Decimal(0),
    )


_CACHE: dict[int, Snapshot] = {}
_BY_SLUG: dict[tuple[int, str], int] = {}
_LOCK = threading.Lock()


def _fresh(found: Snapshot | None) -> bool:
    return (
        found is not None and time.monotonic() - found.loaded_at < settings.GATEWAY_POLICY_CACHE_S
    )


def snapshot_for(project: Project) -> Snapshot:
    with _LOCK:
        found = _CACHE.get(project.pk)
    if found is not None and _fresh(found):
        return found
    fresh = load_snapshot(project)
    with _LOCK:
        _CACHE[project.pk] = fresh
        _BY_SLUG[(fresh.team_id, fresh.slug)] = fresh.project_id
    return fresh


def cached_snapshot(team_id: int, slug: str) -> Snapshot | None:
    """The fresh snapshot of the team's project ``slug`` this process holds, if any: a request
    within GATEWAY_POLICY_CACHE_S of the last read needs no project lookup (the snapshot carries
    the task spec and the policy; a renamed or deleted project is seen within that time, as a
    policy change is)."""
    with _LOCK:
        project_id = _BY_SLUG.get((team_id, slug))
        found = _CACHE.get(project_id) if project_id is not None else None
    if found is not None and found.team_id == team_id and found.slug == slug and _fresh(found):
        return found
    return None


def forget(project_id: int) -> None:
    """Drop this process's snapshot (the page's own process sees its change at once)."""
    with _LOCK:
        _CACHE.pop(project_id, None)


def student_first(snap: Snapshot, input_hash: str) -> bool:
    """Does the policy send this input to the student first?"""
    if snap.student_model is None:
        return False
    if snap.mode in (Mode.STUDENT, Mode.CASCADE):
        return True
    if snap.mode == Mode.CANARY:
        return share(snap.seed, "canary", input_hash) < snap.canary_percent / 100
    return False


def sampled(snap: Snapshot, input_hash: str) -> bool:
    return share(snap.seed, "sample", input_hash) < snap.sample_rate
