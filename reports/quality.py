"""The report's quality section, read from the evaluation's stored rows: each candidate's metric
with its own interval, its share of the teacher's quality and its agreement with the teacher (each
with its interval), latency and throughput in units that fit, a plain-words sentence, and a few
answers side by side."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from evaluations.figures import QualityRow, load_scored, quality_rows
from evaluations.models import CandidateRole, EvalCandidate, EvalExample, EvalOutput, Evaluation
from evaluations.selectors import CandidateResult

EXAMPLES_SHOWN = 5
DISAGREEMENTS_SHOWN = 2


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
    examples, outputs = load_scored(evaluation)
    rows = quality_rows(evaluation, results, examples, outputs)
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
