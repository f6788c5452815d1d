"""Reads for evaluation pages: results per candidate, the side-by-side comparison with its
filters, vote totals, and the votes as DPO preference pairs. Callers pass objects already resolved
through the user's team."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.models import User
from django.core.paginator import Page, Paginator
from django.db.models import Exists, OuterRef, Q, QuerySet

from evaluations.models import (
    CandidateRole,
    EvalCandidate,
    EvalExample,
    EvalOutput,
    Evaluation,
    EvaluationKind,
    EvalVote,
    VoteChoice,
)
from evaluations.scoring import primary_student
from projects.models import Project
from teams.access import AnyUser

FILTERS = {
    "all": "All examples",
    "disagree": "Student ≠ teacher",
    "student_wrong": "Student wrong",
    "teacher_wrong": "Teacher wrong",
}
PAGE_SIZE = 20


def evaluations_for_project(*, project: Project, kind: str | None = None) -> QuerySet[Evaluation]:
    rows = Evaluation.objects.filter(project=project).select_related(
        "job", "dataset_version", "created_by"
    )
    if kind:
        rows = rows.filter(kind=kind)
    return rows.order_by("-created_at", "-id")


def examples_of(*, evaluation: Evaluation) -> QuerySet[EvalExample]:
    """The evaluation's examples in test order, each with every candidate's answer."""
    return (
        EvalExample.objects.filter(evaluation=evaluation)
        .prefetch_related("outputs")
        .order_by("position")
    )


def latest_experiment(*, project: Project) -> Evaluation | None:
    return evaluations_for_project(project=project, kind=EvaluationKind.EXPERIMENT).first()


def latest_evaluation(*, project: Project, succeeded: bool = True) -> Evaluation | None:
    rows = evaluations_for_project(project=project, kind=EvaluationKind.EVALUATION)
    if succeeded:
        rows = rows.filter(job__status="succeeded")
    return rows.first()


def latest_learning_curve(*, project: Project) -> Evaluation | None:
    """The project's latest finished learning curve."""
    rows = evaluations_for_project(project=project, kind=EvaluationKind.CURVE)
    return rows.filter(job__status="succeeded").first()


def candidates_of(*, evaluation: Evaluation) -> list[EvalCandidate]:
    return list(
        evaluation.candidates.select_related("student_model", "teacher_run").order_by("position")
    )


# Results ----------------------------------------------------------------------------------------


@dataclass
class CandidateResult:
    """One row of the results table, in plain numbers for templates and the report."""

    candidate: EvalCandidate
    metric_name: str
    headline: float | None
    rate: dict[str, Any] | None  # accuracy / exact-match rate with its interval (k, n, low, high)
    extra: list[tuple[str, str]]  # other metrics, formatted
    percent_of_teacher: float | None
    agreement: dict[str, Any] | None
    latency: dict[str, Any]
    throughput: dict[str, Any]
    hardware: str
    answered: int
    missing: int
    prompt: dict[str, Any] | None = None  # local models: label list in prompt?, mean tokens

    @property
    def is_teacher(self) -> bool:
        return self.candidate.role == CandidateRole.TEACHER


def _fmt(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def candidate_results(*, evaluation: Evaluation) -> list[CandidateResult]:
    kind = evaluation.project.output_kind
    counts: dict[int, Counter[bool]] = defaultdict(Counter)
    for candidate_id, missing in EvalOutput.objects.filter(
        candidate__evaluation=evaluation
    ).values_list("candidate_id", "missing"):
        counts[candidate_id][missing] += 1
    results = []
    for candidate in candidates_of(evaluation=evaluation):
        metrics = candidate.metrics or {}
        quality = metrics.get("quality") or {}
        rate = None
        extra: list[tuple[str, str]] = []
        if kind == "label" and quality:
            rate = quality["accuracy"]
            extra = [
                ("macro-F1", _fmt(quality.get("macro_f1"))),
                ("unparseable", str(quality.get("unparseable", 0))),
            ]
        elif kind == "json" and quality:
            rate = quality["exact_match"]
            extra = [
                ("valid JSON", f"{100 * quality['valid_json']['value']:.0f} %"),
                ("schema-valid", f"{100 * quality['schema_valid']['value']:.0f} %"),
                ("field exact match", _fmt(quality.get("field_exact_match"))),
            ]
        elif kind == "text" and quality:
            extra = [("chrF", _fmt(quality.get("chrf"), 1))]
            judge = quality.get("judge")
            if judge:
                extra.append(("judge win-rate", _fmt(judge.get("win_rate"))))
        performance = candidate.performance or {}
        results.append(
            CandidateResult(
                candidate=candidate,
                metric_name=evaluation.project.metric_name,
                headline=candidate.headline,
                rate=rate,
                extra=extra,
                percent_of_teacher=metrics.get("percent_of_teacher"),
                agreement=metrics.get("agreement"),
                latency=performance.get("latency") or {},
                throughput=performance.get("throughput") or {},
                hardware=(performance.get("hardware") or {}).get("description", ""),
                answered=counts[candidate.pk][False],
                missing=counts[candidate.pk][True],
                prompt=performance.get("prompt") or None,
            )
        )
    return results


def confusion_for(*, candidate: EvalCandidate, limit: int = 20) -> dict[str, Any] | None:
    """The label confusion matrix, trimmed to the rows/columns that have counts (most first)."""
    quality = (candidate.metrics or {}).get("quality") or {}
    if quality.get("kind") != "label" or not quality.get("n"):
        return None
    rows, columns, matrix = (
        quality["confusion_rows"],
        quality["confusion_columns"],
        quality["confusion_matrix"],
    )
    row_totals = [sum(r) for r in matrix]
    col_totals = [sum(matrix[i][j] for i in range(len(rows))) for j in range(len(columns))]
    keep_rows = sorted((i for i, t in enumerate(row_totals) if t), key=lambda i: -row_totals[i])
    keep_cols = sorted((j for j, t in enumerate(col_totals) if t), key=lambda j: -col_totals[j])
    keep_rows, keep_cols = keep_rows[:limit], keep_cols[:limit]
    return {
        "columns": [columns[j] for j in keep_cols],
        "rows": [
            {
                "label": rows[i],
                "cells": [
                    {"count": matrix[i][j], "diagonal": rows[i] == columns[j]} for j in keep_cols
                ],
            }
            for i in keep_rows
        ],
        "trimmed": len(keep_rows) < sum(1 for t in row_totals if t)
        or len(keep_cols) < sum(1 for t in col_totals if t),
    }


# Comparison -------------------------------------------------------------------------------------


@dataclass
class Pair:
    """The two candidates votes compare, A on the left: A is the one earlier in the candidates'
    order (the teacher, by default, against the headline student)."""

    a: EvalCandidate
    b: EvalCandidate

    @property
    def student(self) -> EvalCandidate:
        """The candidate the filters call "student": the one of the pair that is not the teacher."""
        return self.b if self.a.role == CandidateRole.TEACHER else self.a

    def matches(self, a_id: int, b_id: int) -> bool | None:
        """True when a stored vote's (A, B) is this pair, False when it is this pair the other way
        round (an older page's order), None when it is another pair."""
        if (a_id, b_id) == (self.a.pk, self.b.pk):
            return True
        if (a_id, b_id) == (self.b.pk, self.a.pk):
            return False
        return None


#: A vote's choice seen from the other side of the pair.
FLIPPED = {
    VoteChoice.A_BETTER: VoteChoice.B_BETTER,
    VoteChoice.B_BETTER: VoteChoice.A_BETTER,
}


def oriented(choice: str, same_way: bool) -> str:
    """A stored choice as this page's A and B read it."""
    return choice if same_way else FLIPPED.get(VoteChoice(choice), choice)


def ordered_pair(a: EvalCandidate, b: EvalCandidate, candidates: list[EvalCandidate]) -> Pair:
    """The pair with A the candidate further left (earlier in ``candidates``)."""
    order = {c.pk: i for i, c in enumerate(candidates)}
    if order.get(a.pk, 0) > order.get(b.pk, 0):
        a, b = b, a
    return Pair(a=a, b=b)


def _pair_votes(evaluation: Evaluation, pair: Pair) -> QuerySet[EvalVote]:
    """Votes on this pair in either order (a page before this order stored the teacher as B)."""
    return EvalVote.objects.filter(
        Q(candidate_a=pair.a, candidate_b=pair.b) | Q(candidate_a=pair.b, candidate_b=pair.a),
        evaluation=evaluation,
    )


def vote_pair(
    *,
    evaluation: Evaluation,
    candidates: list[EvalCandidate],
    a_id: str | None = None,
    b_id: str | None = None,
) -> Pair | None:
    by_id = {c.pk: c for c in candidates}

    def pick(value: str | None) -> EvalCandidate | None:
        try:
            return by_id.get(int(value or ""))
        except (TypeError, ValueError):
            return None

    a = pick(a_id) or primary_student(candidates)
    b = pick(b_id) or next((c for c in candidates if c.role == CandidateRole.TEACHER), None)
    if a is None or b is None or a.pk == b.pk:
        return None
    return ordered_pair(a, b, candidates)


@dataclass
class Cell:
    candidate: EvalCandidate
    output: EvalOutput | None
    is_teacher: bool

    @property
    def disagrees(self) -> bool:
        return self.output is not None and self.output.agrees_with_teacher is False

    @property
    def wrong(self) -> bool:
        return self.output is not None and self.output.correct is False


@dataclass
class ComparisonRow:
    example: EvalExample
    cells: list[Cell]
    my_vote: str = ""
    votes: dict[str, int] = field(default_factory=dict)


def _filtered_examples(
    evaluation: Evaluation,
    *,
    filter_name: str,
    label: str,
    student: EvalCandidate | None,
    teacher: EvalCandidate | None,
) -> QuerySet[EvalExample]:
    examples = EvalExample.objects.filter(evaluation=evaluation)
    outputs = EvalOutput.objects.filter(example=OuterRef("pk"))
    if filter_name == "disagree" and student is not None:
        examples = examples.filter(
            Exists(outputs.filter(candidate=student, agrees_with_teacher=False))
        )
    elif filter_name == "student_wrong" and student is not None:
        examples = examples.filter(Exists(outputs.filter(candidate=student, correct=False)))
    elif filter_name == "teacher_wrong" and teacher is not None:
        examples = examples.filter(Exists(outputs.filter(candidate=teacher, correct=False)))
    if label:
        examples = examples.filter(reference_label=label)
    return examples.order_by("position")


def comparison(
    *,
    evaluation: Evaluation,
    user: AnyUser,
    filter_name: str = "all",
    label: str = "",
    page: str | int | None = 1,
    pair: Pair | None = None,
    candidates: list[EvalCandidate] | None = None,
    only_example: EvalExample | None = None,
) -> tuple[Page[Any], list[ComparisonRow]]:
    """A page of examples, each with every candidate's answer (and the user's vote on the
    pair). The "student" in the filters is the pair's A candidate."""
    candidates = candidates if candidates is not None else candidates_of(evaluation=evaluation)
    teacher = next((c for c in candidates if c.role == CandidateRole.TEACHER), None)
    student = pair.student if pair else primary_student(candidates)
    if filter_name not in FILTERS:
        filter_name = "all"
    examples = _filtered_examples(
        evaluation, filter_name=filter_name, label=label, student=student, teacher=teacher
    )
    if only_example is not None:
        examples = examples.filter(pk=only_example.pk)
    page_obj = Paginator(examples, PAGE_SIZE).get_page(page)
    ids = [e.pk for e in page_obj]
    outputs = {
        (o.example_id, o.candidate_id): o for o in EvalOutput.objects.filter(example_id__in=ids)
    }
    votes: dict[int, Counter[str]] = defaultdict(Counter)
    mine: dict[int, str] = {}
    if pair is not None:
        for example_id, voter, a_id, b_id, stored in (
            _pair_votes(evaluation, pair)
            .filter(example_id__in=ids)
            .order_by("id")
            .values_list("example_id", "user_id", "candidate_a_id", "candidate_b_id", "choice")
        ):
            choice = oriented(stored, bool(pair.matches(a_id, b_id)))
            votes[example_id][choice] += 1
            if voter == user.pk:
                mine[example_id] = choice
    rows = [
        ComparisonRow(
            example=example,
            cells=[
                Cell(
                    candidate=c,
                    output=outputs.get((example.pk, c.pk)),
                    is_teacher=c.role == CandidateRole.TEACHER,
                )
                for c in candidates
            ],
            my_vote=mine.get(example.pk, ""),
            votes=dict(votes.get(example.pk, {})),
        )
        for example in page_obj
    ]
    return page_obj, rows


def filter_counts(
    *, evaluation: Evaluation, candidates: list[EvalCandidate], pair: Pair | None
) -> dict[str, int]:
    teacher = next((c for c in candidates if c.role == CandidateRole.TEACHER), None)
    student = pair.student if pair else primary_student(candidates)
    return {
        name: _filtered_examples(
            evaluation, filter_name=name, label="", student=student, teacher=teacher
        ).count()
        for name in FILTERS
    }


def labels_in(*, evaluation: Evaluation) -> list[tuple[str, int]]:
    counts = Counter(
        EvalExample.objects.filter(evaluation=evaluation)
        .exclude(reference_label="")
        .values_list("reference_label", flat=True)
    )
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


# Votes ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VoteTotals:
    a_better: int
    b_better: int
    both_ok: int
    both_wrong: int

    @property
    def total(self) -> int:
        return self.a_better + self.b_better + self.both_ok + self.both_wrong

    @property
    def decisive(self) -> int:
        return self.a_better + self.b_better

    @property
    def preference_rate(self) -> float | None:
        """Share of decisive votes (A or B better) that prefer A."""
        return self.a_better / self.decisive if self.decisive else None

    @property
    def a_acceptable_rate(self) -> float | None:
        """Share of all votes where A is at least as good: A better, or both acceptable."""
        return (self.a_better + self.both_ok) / self.total if self.total else None


def stored_order(
    *, example: EvalExample, user: User, a: EvalCandidate, b: EvalCandidate
) -> tuple[EvalCandidate, EvalCandidate, bool]:
    """The (A, B) a vote on this pair is stored under: the user's existing vote's order if they
    voted with the pair the other way round (so a changed mind replaces it), else as given; and
    whether that is the given order."""
    reversed_vote = EvalVote.objects.filter(
        example=example, user=user, candidate_a=b, candidate_b=a
    ).exists()
    return (b, a, False) if reversed_vote else (a, b, True)


def vote_totals(*, evaluation: Evaluation, pair: Pair) -> VoteTotals:
    counts = Counter(
        oriented(choice, bool(pair.matches(a_id, b_id)))
        for a_id, b_id, choice in _pair_votes(evaluation, pair).values_list(
            "candidate_a_id", "candidate_b_id", "choice"
        )
    )
    return VoteTotals(
        a_better=counts[VoteChoice.A_BETTER],
        b_better=counts[VoteChoice.B_BETTER],
        both_ok=counts[VoteChoice.BOTH_OK],
        both_wrong=counts[VoteChoice.BOTH_WRONG],
    )


def dpo_pairs(*, evaluation: Evaluation) -> Iterator[dict[str, Any]]:
    """Votes as preference pairs for DPO, in TRL's conversational format: ``prompt`` (the
    task's messages), ``chosen`` and ``rejected`` (one assistant message each).

    Per example and candidate pair, the majority of decisive votes wins; a tie, or only "both
    acceptable"/"both wrong" votes, gives no pair (there is no preference to learn)."""
    tallies: dict[tuple[int, int, int], Counter[str]] = defaultdict(Counter)
    for example_id, a_id, b_id, choice in EvalVote.objects.filter(
        evaluation=evaluation, choice__in=[VoteChoice.A_BETTER, VoteChoice.B_BETTER]
    ).values_list("example_id", "candidate_a_id", "candidate_b_id", "choice"):
        # One tally per unordered pair: a vote stored the other way round counts flipped.
        if a_id > b_id:
            a_id, b_id, choice = b_id, a_id, oriented(choice, False)
        tallies[(example_id, a_id, b_id)][choice] += 1
    if not tallies:
        return
    example_ids = {k[0] for k in tallies}
    examples = {e.pk: e for e in EvalExample.objects.filter(pk__in=example_ids)}
    outputs = {
        (o.example_id, o.candidate_id): o.raw_text
        for o in EvalOutput.objects.filter(example_id__in=example_ids)
    }
    for (example_id, a_id, b_id), tally in sorted(tallies.items()):
        a, b = tally[VoteChoice.A_BETTER], tally[VoteChoice.B_BETTER]
        if a == b:
            continue
        chosen, rejected = (a_id, b_id) if a > b else (b_id, a_id)
        yield {
            "prompt": list(examples[example_id].messages),
            "chosen": [{"role": "assistant", "content": outputs.get((example_id, chosen), "")}],
            "rejected": [{"role": "assistant", "content": outputs.get((example_id, rejected), "")}],
        }


def dpo_jsonl(*, evaluation: Evaluation) -> Iterator[str]:
    for pair in dpo_pairs(evaluation=evaluation):
        yield json.dumps(pair, ensure_ascii=False) + "\n"
