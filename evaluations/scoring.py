"""Scoring: ``evaluation_score`` recomputes every metric from the stored outputs (worker.metrics);
the job calls it at the end, and anyone can call it again and get the same numbers."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from django.utils import timezone

from evaluations.experiment import experiment_verdict
from evaluations.models import (
    CandidateRole,
    EvalCandidate,
    EvalExample,
    EvalOutput,
    Evaluation,
    EvaluationKind,
)
from worker.taskspec import TaskSpec, normalise_label

if TYPE_CHECKING:
    from worker.metrics import Metrics

# A free-text answer counts as "right" (for the comparison filters) at this ROUGE-L or above.
TEXT_RIGHT_AT = 0.5


def reference_sentence(counts: dict[str, int]) -> str:
    """How the page says what the reference was."""
    human, teacher, none = counts.get("human", 0), counts.get("teacher", 0), counts.get("none", 0)
    parts = []
    if human and not teacher:
        parts.append(f"human reference outputs ({human:,} examples)")
    elif teacher and not human:
        parts.append(f"the approved teacher outputs ({teacher:,} examples; no human references)")
    elif human or teacher:
        parts.append(
            f"human reference outputs where present ({human:,} examples), "
            f"else the approved teacher output ({teacher:,})"
        )
    text = "Reference: " + (parts[0] if parts else "none")
    if none:
        text += f"; {none:,} examples have no reference and count only for agreement"
    return text + "."


@dataclass
class _Stored:
    """An evaluation's examples, candidates and stored outputs, as scoring reads them."""

    spec: TaskSpec
    examples: list[EvalExample]
    candidates: list[EvalCandidate]
    outputs: dict[tuple[int, int], EvalOutput]
    teacher: EvalCandidate | None

    @property
    def scored(self) -> list[EvalExample]:
        """The examples with a reference (the others count only for agreement)."""
        return [e for e in self.examples if e.reference is not None]

    def raw(self, example: EvalExample, candidate: EvalCandidate) -> str:
        output = self.outputs.get((example.pk, candidate.pk))
        return output.raw_text if output is not None else ""

    def answered(self, candidate: EvalCandidate) -> bool:
        return any((e.pk, candidate.pk) in self.outputs for e in self.examples)


def _load(evaluation: Evaluation) -> _Stored:
    candidates = list(evaluation.candidates.order_by("position"))
    return _Stored(
        spec=evaluation.project.task_spec(),
        examples=list(evaluation.examples.order_by("position")),
        candidates=candidates,
        outputs={
            (o.example_id, o.candidate_id): o
            for o in EvalOutput.objects.filter(example__evaluation=evaluation)
        },
        teacher=next((c for c in candidates if c.role == CandidateRole.TEACHER), None),
    )


def _reference_source(counts: Counter[str]) -> str:
    """Stored with the metrics: "human", "teacher", or "mixed" where both served as reference."""
    if counts.get("human") and not counts.get("teacher"):
        return "human"
    if counts.get("teacher") and not counts.get("human"):
        return "teacher"
    return "mixed"


def evaluation_score(*, evaluation: Evaluation) -> dict[str, Any]:
    """(Re)compute every metric from the stored outputs, store it, and return the summary."""
    from worker import metrics

    stored = _load(evaluation)
    counts = Counter(
        e.reference_source if e.reference is not None else "none" for e in stored.examples
    )
    scored = stored.scored
    results: dict[int, Metrics] = {}
    for candidate in stored.candidates:
        if not stored.answered(candidate):
            continue
        result = metrics.evaluate_outputs(
            stored.spec,
            [stored.raw(e, candidate) for e in scored],
            [e.reference for e in scored],
            reference_source=_reference_source(counts),
        )
        results[candidate.pk] = result
        _score_outputs(stored, candidate, _per_example_scores(stored.spec, result, scored))
    teacher = stored.teacher
    teacher_result = results.get(teacher.pk) if teacher is not None else None
    for candidate in stored.candidates:
        if candidate.pk in results:
            _store_metrics(stored, candidate, results[candidate.pk], teacher_result)
    summary = _summary(evaluation, stored.candidates, counts, len(scored), teacher)
    if evaluation.kind == EvaluationKind.EXPERIMENT:
        summary.update(experiment_verdict(stored.candidates))
    Evaluation.objects.filter(pk=evaluation.pk).update(summary=summary)
    evaluation.summary = summary
    return summary


def _score_outputs(stored: _Stored, candidate: EvalCandidate, scores: dict[int, float]) -> None:
    """Each output's score, whether it is right, and whether it agrees with the teacher's."""
    teacher = stored.teacher
    teacher_canonical = {
        e.pk: stored.outputs[(e.pk, teacher.pk)].canonical
        for e in stored.examples
        if teacher is not None and (e.pk, teacher.pk) in stored.outputs
    }
    changed = []
    for e in stored.examples:
        output = stored.outputs.get((e.pk, candidate.pk))
        if output is None:
            continue
        score = scores.get(e.pk)
        output.score = score
        output.correct = None if score is None else _is_right(stored.spec, score)
        if teacher is None or candidate.pk == teacher.pk:
            output.agrees_with_teacher = None
        else:
            output.agrees_with_teacher = (
                output.canonical is not None and output.canonical == teacher_canonical.get(e.pk)
            )
        changed.append(output)
    EvalOutput.objects.bulk_update(
        changed, ["score", "correct", "agrees_with_teacher"], batch_size=2000
    )


def _store_metrics(
    stored: _Stored,
    candidate: EvalCandidate,
    result: Metrics,
    teacher_result: Metrics | None,
) -> None:
    """The candidate's quality, and its agreement with and share of the teacher."""
    from worker import metrics

    teacher = stored.teacher
    data: dict[str, Any] = {"quality": result.to_dict(), "headline_name": result.headline_name}
    if teacher is not None and candidate.pk != teacher.pk:
        agree = metrics.agreement(
            stored.spec,
            [stored.raw(e, candidate) for e in stored.examples],
            [stored.raw(e, teacher) for e in stored.examples],
        )
        data["agreement"] = asdict(agree)
        if teacher_result is not None:
            data["percent_of_teacher"] = metrics.percent_of_teacher(
                result.headline, teacher_result.headline
            )
    candidate.metrics = data
    candidate.headline = result.headline
    EvalCandidate.objects.filter(pk=candidate.pk).update(metrics=data, headline=result.headline)


def _per_example_scores(
    spec: TaskSpec, result: Metrics, scored: list[EvalExample]
) -> dict[int, float]:
    from worker.metrics import JsonMetrics, LabelMetrics

    if isinstance(result, LabelMetrics):
        scores = {}
        for e, predicted in zip(scored, result.predictions, strict=True):
            wanted = (
                normalise_label(e.reference or "", spec.label_set) or (e.reference or "").strip()
            )
            scores[e.pk] = 1.0 if predicted == wanted else 0.0
        return scores
    if isinstance(result, JsonMetrics):
        return {e.pk: s for e, s in zip(scored, result.per_example_field_f1, strict=True)}
    return {e.pk: s for e, s in zip(scored, result.per_example_rouge_l, strict=True)}


def _is_right(spec: TaskSpec, score: float) -> bool:
    return score >= (TEXT_RIGHT_AT if spec.output_kind == "text" else 1.0)


def primary_student(candidates: Sequence[EvalCandidate]) -> EvalCandidate | None:
    """The candidate the headline is about: the first distilled student, else the base one,
    else the first endpoint."""
    for role in (CandidateRole.DISTILLED, CandidateRole.BASE, CandidateRole.ENDPOINT):
        for candidate in candidates:
            if candidate.role == role:
                return candidate
    return None


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f} %"


def _summary(
    evaluation: Evaluation,
    candidates: list[EvalCandidate],
    counts: Counter[str],
    n_scored: int,
    teacher: EvalCandidate | None,
) -> dict[str, Any]:
    metric = evaluation.project.metric_name
    summary: dict[str, Any] = {
        "n": sum(counts.values()),
        "n_scored": n_scored,
        "reference_counts": dict(counts),
        "reference_sentence": reference_sentence(dict(counts)),
        "metric": metric,
        "computed_at": timezone.now().isoformat(),
    }
    student = primary_student(candidates)
    if teacher is not None:
        summary["teacher"] = {
            "candidate_id": teacher.pk,
            "name": teacher.name,
            "headline": teacher.headline,
        }
    if student is None:
        return summary
    data = student.metrics or {}
    agreement = data.get("agreement")
    pct = data.get("percent_of_teacher")
    roles: dict[str, str] = {
        CandidateRole.DISTILLED: "The distilled student",
        CandidateRole.BASE: "The untuned student",
    }
    who = roles.get(student.role, student.name)
    summary["student"] = {
        "candidate_id": student.pk,
        "name": student.name,
        "role": student.role,
        "headline": student.headline,
        "percent_of_teacher": pct,
        "agreement": agreement,
    }
    if teacher is not None and teacher.headline is not None and student.headline is not None:
        if pct is None:
            summary["headline_quality"] = (
                f"The teacher scored 0 {metric} against the reference, so the student's share of "
                "its quality is undefined."
            )
        else:
            summary["headline_quality"] = (
                f"{who} reaches {_percent(pct)} of the teacher's quality "
                f"({metric} {student.headline:.3f} vs {teacher.headline:.3f} on {n_scored:,} examples)."
            )
    if agreement:
        rate = agreement["rate"]
        summary["headline_agreement"] = (
            f"It agrees with the teacher on {100 * rate['value']:.0f} % of inputs "
            f"({agreement['agree']:,} of {agreement['n']:,}; 95 % CI {100 * rate['low']:.0f} to "
            f"{100 * rate['high']:.0f} %)."
        )
    return summary
