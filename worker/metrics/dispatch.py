"""The metrics for a task's output kind, and their rebuilding from a stored ``to_dict()``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from worker.metrics.json_fields import FieldScore, JsonMetrics, json_metrics
from worker.metrics.labels import LabelMetrics, LabelScore, label_metrics
from worker.metrics.rates import Rate
from worker.metrics.text import JudgeResult, TextMetrics, text_metrics
from worker.taskspec import TaskSpec

Metrics = LabelMetrics | JsonMetrics | TextMetrics


def evaluate_outputs(
    spec: TaskSpec,
    outputs: Sequence[str],
    references: Sequence[Any],
    *,
    judge_verdicts: Sequence[str] | None = None,
    reference_source: str = "",
) -> Metrics:
    """The metrics for the task's output kind. ``reference_source`` is stored for the report
    ("human" or "teacher") and does not change any number."""
    if spec.output_kind == "label":
        return label_metrics(spec, outputs, references, reference_source=reference_source)
    if spec.output_kind == "json":
        return json_metrics(spec, outputs, references, reference_source=reference_source)
    return text_metrics(
        outputs, references, judge_verdicts=judge_verdicts, reference_source=reference_source
    )


def _rate(d: dict[str, Any]) -> Rate:
    return Rate(**d)


def metrics_from_dict(data: dict[str, Any]) -> Metrics:
    """Rebuild a result from its ``to_dict()`` (e.g. after a JSON round trip)."""
    d = dict(data)
    kind = d.get("kind")
    if kind == "label":
        d["accuracy"] = _rate(d["accuracy"])
        d["per_label"] = [LabelScore(**s) for s in d["per_label"]]
        return LabelMetrics(**d)
    if kind == "json":
        for key in ("valid_json", "schema_valid", "exact_match"):
            d[key] = _rate(d[key])
        d["fields"] = [FieldScore(**s) for s in d["fields"]]
        return JsonMetrics(**d)
    if kind == "text":
        judge = d.get("judge")
        if judge is not None:
            judge = dict(judge)
            judge["not_worse"] = _rate(judge["not_worse"])
            d["judge"] = JudgeResult(**judge)
        return TextMetrics(**d)
    raise ValueError(f"unknown metrics kind {kind!r}")
