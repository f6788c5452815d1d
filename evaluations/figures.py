"""Each candidate's figures with their own interval and units, computed from the stored
per-example rows: the evaluation pages and the go/no-go report show the same numbers.

Accuracy and agreement use the Wilson interval stored with the metrics; field F1 and ROUGE-L a
seeded bootstrap over the stored per-example scores (evaluations.intervals); the share of the
teacher a paired bootstrap of the ratio.
"""

from __future__ import annotations

from dataclasses import dataclass

from evaluations import units
from evaluations.intervals import Interval, bootstrap_ratio, from_rate
from evaluations.models import EvalCandidate, EvalExample, EvalOutput, Evaluation
from evaluations.selectors import CandidateResult


@dataclass
class QualityRow:
    """One candidate's figures, each with its interval or unit."""

    result: CandidateResult
    metric: Interval | None
    percent_of_teacher: Interval | None
    agreement: Interval | None

    @property
    def latency(self) -> str:
        lat = self.result.latency
        if not lat.get("n"):
            return "—"
        return f"{units.duration(lat['p50_ms'])} / {units.duration(lat['p95_ms'])}"

    @property
    def throughput(self) -> str:
        rate = self.result.throughput.get("examples_per_s")
        return units.throughput(rate) if rate else "—"


# Per-example scores -----------------------------------------------------------------------------


def _field_count(reference: str) -> int:
    """How many fields a json reference has: its weight in the micro-averaged field F1."""
    from worker.metrics import flatten_json
    from worker.metrics.json_fields import reference_value

    return len(flatten_json(reference_value(reference)))


def scored_examples(
    examples: list[EvalExample], kind: str
) -> tuple[list[EvalExample], list[float]]:
    """The examples the metric was computed on (those with a reference) and each one's weight."""
    scored = [e for e in examples if e.reference is not None]
    if kind == "json":
        return scored, [float(_field_count(e.reference or "")) for e in scored]
    return scored, [1.0] * len(scored)


def stored_scores(
    scored: list[EvalExample], outputs: dict[tuple[int, int], EvalOutput], candidate: EvalCandidate
) -> list[float]:
    """The stored per-example score of each scored example (no answer scores 0)."""
    found = [outputs.get((e.pk, candidate.pk)) for e in scored]
    return [o.score if o is not None and o.score is not None else 0.0 for o in found]


def _metric_interval(
    kind: str, candidate: EvalCandidate, scores: list[float], weights: list[float]
) -> Interval | None:
    quality = (candidate.metrics or {}).get("quality") or {}
    if not quality:
        return None
    if kind == "label":
        return from_rate(quality["accuracy"], scale="score")
    return bootstrap_ratio([s * w for s, w in zip(scores, weights, strict=True)], weights)


def quality_rows(
    evaluation: Evaluation,
    results: list[CandidateResult],
    examples: list[EvalExample],
    outputs: dict[tuple[int, int], EvalOutput],
) -> list[QualityRow]:
    kind = evaluation.project.output_kind
    scored, weights = scored_examples(examples, kind)
    teacher = next((r.candidate for r in results if r.is_teacher), None)
    teacher_scores = stored_scores(scored, outputs, teacher) if teacher is not None else None
    rows = []
    for result in results:
        scores = stored_scores(scored, outputs, result.candidate)
        pct = None
        if teacher_scores is not None and not result.is_teacher and result.headline is not None:
            pct = bootstrap_ratio(
                [s * w for s, w in zip(scores, weights, strict=True)],
                [t * w for t, w in zip(teacher_scores, weights, strict=True)],
                factor=100.0,
                scale="percent",
            )
        rows.append(
            QualityRow(
                result=result,
                metric=_metric_interval(kind, result.candidate, scores, weights),
                percent_of_teacher=pct,
                agreement=(
                    from_rate(result.agreement["rate"], scale="percent")
                    if result.agreement
                    else None
                ),
            )
        )
    return rows


def load_scored(
    evaluation: Evaluation,
) -> tuple[list[EvalExample], dict[tuple[int, int], EvalOutput]]:
    """The evaluation's examples in test order and every stored answer by (example, candidate)."""
    examples = list(EvalExample.objects.filter(evaluation=evaluation).order_by("position"))
    outputs = {
        (o.example_id, o.candidate_id): o
        for o in EvalOutput.objects.filter(example__evaluation=evaluation)
    }
    return examples, outputs


def figures_for(*, evaluation: Evaluation, results: list[CandidateResult]) -> list[QualityRow]:
    """The results table's rows: every figure with its own interval and units."""
    examples, outputs = load_scored(evaluation)
    return quality_rows(evaluation, results, examples, outputs)
