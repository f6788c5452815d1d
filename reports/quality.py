"""The report's quality section, read from the evaluation's stored rows: each candidate's metric
with its own interval, its share of the teacher's quality and its agreement with the teacher (each
with its interval), latency and throughput in units that fit, a plain-words sentence, and a few
answers side by side."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from evaluations.models import CandidateRole, EvalCandidate, EvalExample, EvalOutput, Evaluation
from evaluations.selectors import CandidateResult
from reports import units
from reports.intervals import Interval, bootstrap_ratio, from_rate

EXAMPLES_SHOWN = 5
DISAGREEMENTS_SHOWN = 2


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


@dataclass
class SideBySide:
    """One test example: its input, the teacher's and the student's answers."""

    position: int
    input: str
    teacher: str
    student: str
    agrees: bool


@dataclass
class Quality:
    metric_name: str
    rows: list[QualityRow]
    student: QualityRow | None
    teacher: QualityRow | None
    sentences: list[str]
    examples: list[SideBySide]


# Per-example scores -----------------------------------------------------------------------------


def _field_count(reference: str) -> int:
    """How many fields a json reference has: its weight in the micro-averaged field F1."""
    from worker.metrics import flatten_json
    from worker.metrics.json_fields import _reference_value

    return len(flatten_json(_reference_value(reference)))


def _scored(examples: list[EvalExample], kind: str) -> tuple[list[EvalExample], list[float]]:
    """The examples the metric was computed on (those with a reference) and each one's weight."""
    scored = [e for e in examples if e.reference is not None]
    if kind == "json":
        return scored, [float(_field_count(e.reference or "")) for e in scored]
    return scored, [1.0] * len(scored)


def _scores(
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


def _rows(
    evaluation: Evaluation,
    results: list[CandidateResult],
    examples: list[EvalExample],
    outputs: dict[tuple[int, int], EvalOutput],
) -> list[QualityRow]:
    kind = evaluation.project.output_kind
    scored, weights = _scored(examples, kind)
    teacher = next((r.candidate for r in results if r.is_teacher), None)
    teacher_scores = _scores(scored, outputs, teacher) if teacher is not None else None
    rows = []
    for result in results:
        scores = _scores(scored, outputs, result.candidate)
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


# Plain words ------------------------------------------------------------------------------------


WHO: dict[str, str] = {
    CandidateRole.DISTILLED: "the distilled student",
    CandidateRole.BASE: "the untuned student",
}


def _who(row: QualityRow) -> str:
    return WHO.get(row.result.candidate.role, row.result.candidate.name)


def _sentences(
    kind: str, metric_name: str, student: QualityRow, teacher: QualityRow | None
) -> list[str]:
    who = _who(student)
    out = []
    agreement = student.result.agreement
    if agreement and student.agreement is not None:
        out.append(
            f"{who[:1].upper()}{who[1:]} gives the teacher's answer on {agreement['agree']:,} of "
            f"{agreement['n']:,} test examples (95 % interval {student.agreement.range_shown})."
        )
    metric = student.metric
    if metric is not None:
        if kind == "label":
            rate = (student.result.candidate.metrics or {}).get("quality", {}).get("accuracy", {})
            said = (
                f"Against the reference it labels {rate.get('k', 0):,} of {rate.get('n', 0):,} "
                f"examples right: accuracy {metric.shown}"
            )
        elif kind == "json":
            said = (
                "Against the reference, field by field, its answers score a field F1 of "
                f"{metric.shown}, where 1.000 is every field right"
            )
        else:
            said = (
                f"Against the reference its answers share wording with a ROUGE-L of {metric.shown}, "
                "where 1.000 is word for word"
            )
        if teacher is not None and teacher.metric is not None:
            said += f"; the teacher scores {teacher.metric.shown}"
        out.append(said + ".")
    if student.percent_of_teacher is not None:
        out.append(f"That is {student.percent_of_teacher.shown} of the teacher's {metric_name}.")
    return out


def _input_text(inputs: dict[str, Any]) -> str:
    if len(inputs) == 1:
        return str(next(iter(inputs.values())))
    return "; ".join(f"{k}: {v}" for k, v in inputs.items())


def _examples(
    examples: list[EvalExample],
    outputs: dict[tuple[int, int], EvalOutput],
    teacher: EvalCandidate,
    student: EvalCandidate,
) -> list[SideBySide]:
    """Up to five answered examples in test order: the first disagreements (up to two), then
    agreements to fill, so a reader sees both."""
    rows = []
    for e in examples:
        t, s = outputs.get((e.pk, teacher.pk)), outputs.get((e.pk, student.pk))
        if t is None or s is None or s.agrees_with_teacher is None:
            continue
        rows.append(
            SideBySide(
                e.position, _input_text(e.inputs), t.raw_text, s.raw_text, s.agrees_with_teacher
            )
        )
    disagree = [r for r in rows if not r.agrees][:DISAGREEMENTS_SHOWN]
    agree = [r for r in rows if r.agrees][: EXAMPLES_SHOWN - len(disagree)]
    if len(disagree) + len(agree) < EXAMPLES_SHOWN:
        disagree = [r for r in rows if not r.agrees][: EXAMPLES_SHOWN - len(agree)]
    return sorted(disagree + agree, key=lambda r: r.position)


def quality_for(
    *, evaluation: Evaluation, results: list[CandidateResult], student: CandidateResult | None
) -> Quality:
    examples = list(EvalExample.objects.filter(evaluation=evaluation).order_by("position"))
    outputs = {
        (o.example_id, o.candidate_id): o
        for o in EvalOutput.objects.filter(example__evaluation=evaluation)
    }
    rows = _rows(evaluation, results, examples, outputs)
    by_candidate = {row.result.candidate.pk: row for row in rows}
    teacher_row = next((row for row in rows if row.result.is_teacher), None)
    student_row = by_candidate.get(student.candidate.pk) if student is not None else None
    metric_name = evaluation.project.metric_name
    kind = evaluation.project.output_kind
    return Quality(
        metric_name=metric_name,
        rows=rows,
        student=student_row,
        teacher=teacher_row,
        sentences=(_sentences(kind, metric_name, student_row, teacher_row) if student_row else []),
        examples=(
            _examples(examples, outputs, teacher_row.result.candidate, student_row.result.candidate)
            if student_row and teacher_row
            else []
        ),
    )
