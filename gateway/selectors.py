"""The gateway page's figures, all recomputed from GatewayRequest rows (nothing kept aside):
traffic, who answered, agreement with its 95 % Wilson interval, latency percentiles, cost per
1,000 vs teacher-only, the month's savings, charts over time, drift and the cascade threshold
suggested by the confidence/agreement curve of traffic where both answered - and, before there
is traffic, by the same curve from the served student's evaluation on the frozen test split."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.db.models import QuerySet
from django.utils import timezone

from evaluations.intervals import Interval, from_rate
from evaluations.models import CandidateRole, EvalCandidate, EvalOutput, EvaluationKind
from gateway.drift import drift_signals
from gateway.models import GatewayDrops, GatewayPolicy, GatewayRequest, PolicyChange
from gateway.routing import month_start
from jobs.models import JobStatus
from projects.models import Project
from worker.metrics.rates import wilson_rate

RECENT = 500  # the requests drift and the threshold curve look at
# Requests both answered (with the student's confidence) before traffic's own curve is the
# suggestion offered; until then the evaluation's is.
TRAFFIC_CURVE_MIN_PAIRS = 20


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def agreement_interval(rows: Sequence[Mapping[str, Any]]) -> Interval | None:
    judged = [r["agrees"] for r in rows if r["agrees"] is not None]
    if not judged:
        return None
    rate = wilson_rate(sum(1 for a in judged if a), len(judged))
    return from_rate(
        {"k": rate.k, "n": rate.n, "value": rate.value, "low": rate.low, "high": rate.high},
        scale="percent",
    )


def traffic_figures(*, project: Project, since: Any = None) -> dict[str, Any]:
    """Figures over the rows since ``since`` (default: this month)."""
    since = since or month_start()
    rows = list(
        GatewayRequest.objects.filter(project=project, created_at__gte=since).values(
            "answered_by",
            "latency_ms",
            "cost_usd",
            "agrees",
            "teacher_ms",
            "from_cache",
            "created_at",
        )
    )
    n = len(rows)
    by = Counter(r["answered_by"] for r in rows)
    latencies = [r["latency_ms"] for r in rows]
    paid = [r["cost_usd"] for r in rows if r["teacher_ms"] is not None and not r["from_cache"]]
    teacher_each = (sum(paid, Decimal(0)) / len(paid)) if paid else None
    spent = sum((r["cost_usd"] for r in rows), Decimal(0))
    now = timezone.now()
    last5 = sum(1 for r in rows if r["created_at"] >= now - timedelta(minutes=5))
    teacher_only = None if teacher_each is None else teacher_each * n
    return {
        "n": n,
        "per_minute": last5 / 5,
        "teacher": by.get("teacher", 0),
        "student": by.get("student", 0),
        "student_share": (by.get("student", 0) / n) if n else None,
        "agreement": agreement_interval(rows),
        "p50_ms": _percentile(latencies, 0.5),
        "p95_ms": _percentile(latencies, 0.95),
        "spent_usd": spent,
        "cost_per_1000": (spent / n * 1000) if n else None,
        "teacher_only_per_1000": None if teacher_each is None else teacher_each * 1000,
        "saved_usd": None if teacher_only is None else teacher_only - spent,
    }


def series(*, project: Project, hours: int = 24) -> dict[str, Any]:
    """Per-bucket counts by who answered, agreement and p50 latency, for the charts."""
    since = timezone.now() - timedelta(hours=hours)
    rows = GatewayRequest.objects.filter(project=project, created_at__gte=since).values_list(
        "created_at", "answered_by", "agrees", "latency_ms"
    )
    minutes = 1 if hours <= 2 else 15 if hours <= 24 else 60
    buckets: dict[str, dict[str, Any]] = {}
    for at, by, agrees, latency in rows:
        start = at.replace(second=0, microsecond=0, minute=at.minute - at.minute % minutes)
        b = buckets.setdefault(
            start.isoformat(), {"teacher": 0, "student": 0, "agree": 0, "judged": 0, "lat": []}
        )
        if by in ("teacher", "student"):
            b[by] += 1
        if agrees is not None:
            b["judged"] += 1
            b["agree"] += int(agrees)
        b["lat"].append(latency)
    keys = sorted(buckets)
    return {
        "t": keys,
        "teacher": [buckets[k]["teacher"] for k in keys],
        "student": [buckets[k]["student"] for k in keys],
        "agreement": [
            (100 * buckets[k]["agree"] / buckets[k]["judged"]) if buckets[k]["judged"] else None
            for k in keys
        ],
        "p50_ms": [_percentile(buckets[k]["lat"], 0.5) for k in keys],
        "bucket_minutes": minutes,
    }


def curve_points(pairs: Sequence[tuple[float, bool]], target_percent: int) -> dict[str, Any]:
    """Share answered by the student vs agreement with the teacher among the answers it keeps,
    for each confidence threshold 0, 0.05 ... 1 (pairs: confidence, agrees); the lowest
    threshold whose agreement reaches the target is the suggestion."""
    points = []
    suggested = None
    for step in range(0, 101, 5):
        t = step / 100
        kept = [a for c, a in pairs if c >= t]
        if not kept:
            continue
        agreement = 100 * sum(kept) / len(kept)
        points.append(
            {"threshold": t, "share": 100 * len(kept) / len(pairs), "agreement": agreement}
        )
        if suggested is None and agreement >= target_percent:
            suggested = t
    return {"n": len(pairs), "points": points, "suggested": suggested, "target": target_percent}


def threshold_curve(*, project: Project, target_percent: int) -> dict[str, Any]:
    """Share answered by the student vs agreement with the teacher, for each confidence
    threshold, from recent requests where the student's confidence and both answers are known
    (shadow, cascade and sampled traffic); and the lowest threshold keeping the target."""
    pairs = [
        (float(c or 0), bool(a))  # both filtered non-null
        for c, a in GatewayRequest.objects.filter(
            project=project, student_confidence__isnull=False, agrees__isnull=False
        )
        .order_by("-created_at")
        .values_list("student_confidence", "agrees")[:RECENT]
    ]
    return curve_points(pairs, target_percent)


def evaluation_threshold_curve(*, project: Project, policy: GatewayPolicy) -> dict[str, Any] | None:
    """The same curve from the latest succeeded evaluation on a frozen split whose distilled
    student answered with its confidence (label tasks): the served student's evaluation when
    there is one, else the project's latest with a distilled candidate (``served`` says which).
    Before any traffic it is the only evidence for the cascade's threshold. None: no such
    evaluation (evaluations made before the confidence was stored have none)."""
    candidates = (
        EvalCandidate.objects.filter(
            evaluation__project=project,
            evaluation__kind=EvaluationKind.EVALUATION,
            evaluation__dataset_version__isnull=False,
            evaluation__job__status=JobStatus.SUCCEEDED,
            role=CandidateRole.DISTILLED,
            outputs__confidence__isnull=False,
        )
        .select_related("evaluation__dataset_version")
        .order_by("-evaluation__created_at", "-evaluation_id", "position")
        .distinct()
    )
    served = policy.served_model
    candidate = None
    if served is not None:
        candidate = candidates.filter(student_model_id=served.student_id).first()
    is_served = candidate is not None
    candidate = candidate or candidates.first()
    if candidate is None:
        return None
    pairs = [
        (float(c or 0), bool(a))  # both filtered non-null
        for c, a in EvalOutput.objects.filter(
            candidate=candidate, confidence__isnull=False, agrees_with_teacher__isnull=False
        ).values_list("confidence", "agrees_with_teacher")
    ]
    return {
        **curve_points(pairs, policy.agreement_target_percent),
        "evaluation": candidate.evaluation,
        "candidate": candidate,
        "served": is_served,
    }


def drift(*, project: Project, policy: GatewayPolicy) -> dict[str, Any]:
    recent = list(
        GatewayRequest.objects.filter(project=project)
        .order_by("-created_at")
        .values("teacher_answer", "input_chars", "unseen_share", "agrees")[:RECENT]
    )
    labels: Counter[str] = Counter(
        r["teacher_answer"] for r in recent if r["teacher_answer"] is not None
    )
    if project.output_kind != "label":
        labels = Counter()
    found = drift_signals(
        project.pk,
        recent_labels=labels,
        recent_chars=[r["input_chars"] for r in recent],
        unseen=[r["unseen_share"] for r in recent if r["unseen_share"] is not None],
    )
    agreement = agreement_interval(recent)
    below = (
        agreement is not None
        and agreement.n >= 20
        and agreement.high < policy.agreement_target_percent
    )
    found["agreement"] = agreement
    found["agreement_below_target"] = below
    found["moved"] = below or any(s["moved"] for s in found["signals"])
    return found


def drops(*, project: Project) -> GatewayDrops | None:
    return GatewayDrops.objects.filter(project=project).first()


def policy_changes(*, policy: GatewayPolicy) -> QuerySet[PolicyChange]:
    return policy.changes.select_related("user")[:20]


def production_summary(*, project: Project) -> dict[str, Any] | None:
    """For the go/no-go report's "measured in production": this month's traffic."""
    if not GatewayRequest.objects.filter(project=project).exists():
        return None
    return traffic_figures(project=project)
