"""Learning curves: how much reviewed data is enough.

A learning curve takes one finished fine-tune (its recipe: base model, method, preset, the
settings chosen, its dataset version) and trains the same recipe again on nested, seeded
subsets of the version's train split (e.g. 25 % and 50 %; the fine-tune itself is the 100 %
point). Every student answers the same test examples, as in any evaluation, and a saturating
power law is fitted to their scores (worker.learning_curve) with a bootstrap over the test
examples for its uncertainty. From it, stakeholders read what more reviewed data would buy:
"at N reviewed examples the student is expected to reach X % of the teacher", how many the
quality target needs, or that more data will not get there and a bigger student is the lever.

Everything shown is recomputed from stored rows on every read: each candidate's per-example
scores (EvalOutput) and each student's training size — the reviewed rows of the train split it
was given (``reviewed_rows``), the unit a team adds more of. Without a validation split a
fine-tune holds a tenth of them out to watch for over-fitting and trains on the rest
(``FineTune.n_train``); the same share at every size, so the curve's shape is the same either way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError

from evaluations.answers import Progress
from evaluations.candidates import student_candidate, teacher_candidate
from evaluations.choices import EvalOptions, StudentChoice, TeacherChoice
from evaluations.examples import examples_from_inputs, examples_from_version, valid_spec
from evaluations.models import (
    CandidateRole,
    CandidateSource,
    EvalCandidate,
    Evaluation,
    EvaluationKind,
)
from evaluations.start import create_evaluation
from evaluations.units import DASH
from finetunes.models import FineTune
from finetunes.services import split_counts
from jobs.models import JobStatus
from projects.models import Project

DEFAULT_PERCENTS = (25, 50)
MIN_SUBSET_ROWS = 10
DEFAULT_TARGET_PERCENT = 95  # the go/no-go report's default quality target
# Beyond this many times the largest measured size, a forecast is a guess, not a reading.
EXTRAPOLATION_LIMIT = 10
CURVE_SEED = 20240611  # the bootstrap's: the same stored rows give the same interval every time


def reviewed_rows(fine_tune: FineTune) -> int:
    """The train-split rows ``fine_tune`` was given: its subset's size for a curve's point (always
    under the split's size), else the version's whole train split."""
    if fine_tune.train_limit:
        return fine_tune.train_limit
    return split_counts(fine_tune.dataset_version).get("train", 0) or fine_tune.n_train


# Starting ---------------------------------------------------------------------------------------


def curve_sizes(n_train: int, percents: Sequence[float]) -> list[int]:
    """The subset sizes for these percentages of ``n_train`` rows (the 100 % point excluded).
    Raises ValidationError (field ``percents``)."""
    if any(not 0 < p < 100 for p in percents):
        raise ValidationError({"percents": "percentages between 1 and 99 (100 % is the fine-tune)"})
    sizes = sorted({round(n_train * p / 100) for p in percents})
    small = [n for n in sizes if n < MIN_SUBSET_ROWS]
    if small:
        raise ValidationError(
            {
                "percents": f"{small[0]} rows is too few to train on (at least "
                f"{MIN_SUBSET_ROWS}); the fine-tune has {n_train:,} training rows"
            }
        )
    if len(sizes) < 2:
        raise ValidationError(
            {
                "percents": "choose at least two smaller sizes: with the fine-tune itself that makes "
                "the three points a curve needs"
            }
        )
    return sizes


def learning_curve_start(
    *,
    project: Project,
    user: User,
    fine_tune: FineTune,
    teacher: TeacherChoice,
    percents: Sequence[float] = DEFAULT_PERCENTS,
    seed: int = 0,
    split: str = "test",
    input_ids: Sequence[int] | None = None,
    options: EvalOptions | None = None,
    name: str = "",
) -> Evaluation:
    """Queue a learning curve (gpu queue): ``fine_tune``'s recipe retrained on nested subsets
    of its train split, then every student scored on the version's ``split`` (or on the given
    inputs). Raises ValidationError (by form field) before anything is created."""
    options = options or EvalOptions()
    options.validate()
    spec = valid_spec(project)
    if fine_tune.project_id != project.pk:
        raise ValidationError({"fine_tune": "choose one of this project's fine-tunes"})
    if fine_tune.job.status != JobStatus.SUCCEEDED or fine_tune.result_model is None:
        raise ValidationError({"fine_tune": "choose a fine-tune that finished and has a student"})
    given = reviewed_rows(fine_tune)
    sizes = curve_sizes(given, percents)
    version = fine_tune.dataset_version
    full = StudentChoice(
        CandidateRole.DISTILLED,
        student_model=fine_tune.result_model,
        name=_student_name(given, given),
    )
    candidates = [teacher_candidate(project, teacher), student_candidate(project, full)]
    if input_ids is None:
        examples = examples_from_version(spec, version, split)
        default_name = f"Learning curve · {version.name} · {split}"
    else:
        examples = examples_from_inputs(spec, project, list(input_ids))
        default_name = f"Learning curve · {len(examples)} inputs"
    if not examples:
        raise ValidationError(
            {"fine_tune": f"dataset version {version.name!r} has no {split} rows"}
        )
    if teacher.source == CandidateSource.REFERENCES and any(e.reference is None for e in examples):
        raise ValidationError({"teacher": "some test examples have no human reference"})
    return create_evaluation(
        project=project,
        user=user,
        kind=EvaluationKind.CURVE,
        examples=examples,
        candidates=candidates,
        options=options,
        name=name or default_name,
        dataset_version=version if input_ids is None else None,
        split=split if input_ids is None else "",
        extra_options={"curve": {"fine_tune_id": fine_tune.pk, "sizes": sizes, "seed": seed}},
    )


def _student_name(n: int, full: int) -> str:
    return f"Student trained on {n:,} rows ({100 * n / full:.0f} %)"


# The job's training phase -----------------------------------------------------------------------


def curve_train(*, evaluation: Evaluation, progress: Progress) -> None:
    """Train each missing subset (inline, in this job) and add its student as a candidate. A
    re-claimed job keeps the students it already has."""
    from finetunes.services import fine_tune_subset_run

    plan = evaluation.options.get("curve") or {}
    parent = FineTune.objects.select_related(
        "project__team", "dataset_version", "base_model", "job"
    ).get(pk=plan["fine_tune_id"], project=evaluation.project)
    have = {
        c.student_model_id
        for c in evaluation.candidates.filter(role=CandidateRole.DISTILLED)
        if c.student_model_id
    }
    sizes = [int(n) for n in plan["sizes"]]
    given = reviewed_rows(parent)
    for index, n in enumerate(sizes, start=1):
        done = FineTune.objects.filter(
            result_model_id__in=have, train_limit=n, subset_seed=int(plan.get("seed", 0))
        ).exists()
        if done:
            continue
        progress.add(0, phase=f"training on {n:,} of {given:,} rows ({index}/{len(sizes)})")
        fine_tune = fine_tune_subset_run(
            parent=parent,
            n_train=n,
            seed=int(plan.get("seed", 0)),
            host=f"evaluation #{evaluation.pk}",
        )
        candidate = student_candidate(
            evaluation.project,
            StudentChoice(
                CandidateRole.DISTILLED,
                student_model=fine_tune.result_model,
                name=_student_name(n, given),
            ),
        )
        candidate.evaluation = evaluation
        candidate.position = evaluation.candidates.count()
        candidate.save()
        have.add(fine_tune.result_model_id or 0)


# Reading ----------------------------------------------------------------------------------------


@dataclass
class CurvePoint:
    n: int
    percent: float  # of the teacher's quality (or the metric x 100 with no teacher score)
    candidate: EvalCandidate


@dataclass
class CurveView:
    """What the evaluation page and the go/no-go report show."""

    points: list[CurvePoint]
    target_percent: int
    n_test: int
    sentences: list[str] = field(default_factory=list)
    caveat: str = ""
    chart: dict[str, Any] = field(default_factory=dict)
    fitted: bool = False
    # Kept for callers that print or test numbers: the forecast at ``forecast_n``.
    forecast_n: int | None = None
    forecast: tuple[float, float, float] | None = None
    needed: dict[str, Any] | None = None


def _fmt_n(n: float) -> str:
    """A size for reading: 3 significant figures above a thousand (9,340 → 9,300)."""
    if n >= 1000:
        digits = math.floor(math.log10(n)) - 2
        return f"{round(n, -digits):,.0f}"
    return f"{n:,.0f}"


def _rounded(n: float) -> float:
    """``n`` as ``_fmt_n`` shows it, so the sentences' sums add up."""
    return float(_fmt_n(n).replace(",", ""))


@dataclass
class _Scores:
    """Per-example scores of a curve's students (smallest training size first)."""

    students: list[EvalCandidate]
    sizes: list[int]
    matrix: list[list[float]]
    weights: list[float]
    teacher: list[float] | None

    def percent(self, row: list[float]) -> float:
        """A student's metric as a share of the teacher's (x 100); the metric x 100 without one."""
        total = sum(self.weights)
        level = sum(s * w for s, w in zip(row, self.weights, strict=True)) / total
        if self.teacher is None:
            return 100 * level
        teacher = sum(t * w for t, w in zip(self.teacher, self.weights, strict=True)) / total
        return 100 * level / teacher


def curve_scores(*, evaluation: Evaluation) -> _Scores | None:
    """The stored per-example scores of a learning curve's students, with each student's
    training size (``reviewed_rows``); None before any student has answered."""
    from evaluations.figures import load_scored, scored_examples, stored_scores

    candidates = list(evaluation.candidates.select_related("student_model").order_by("position"))
    teacher = next((c for c in candidates if c.role == CandidateRole.TEACHER), None)
    sizes = {
        ft.result_model_id: reviewed_rows(ft)
        for ft in FineTune.objects.filter(
            result_model__in=[c.student_model_id for c in candidates if c.student_model_id]
        ).select_related("dataset_version")
    }
    size_of = {
        c.pk: sizes[c.student_model_id]
        for c in candidates
        if c.role == CandidateRole.DISTILLED and c.student_model_id in sizes
    }
    students = sorted((c for c in candidates if c.pk in size_of), key=lambda c: size_of[c.pk])
    examples, outputs = load_scored(evaluation)
    scored, weights = scored_examples(examples, evaluation.project.output_kind)
    if not scored or not students:
        return None
    teacher_scores = stored_scores(scored, outputs, teacher) if teacher is not None else None
    if teacher_scores is not None and not any(t > 0 for t in teacher_scores):
        teacher_scores = None  # a teacher that scores 0 everywhere gives no share to speak of
    return _Scores(
        students=students,
        sizes=[int(size_of[c.pk]) for c in students],
        matrix=[stored_scores(scored, outputs, c) for c in students],
        weights=weights,
        teacher=teacher_scores,
    )


def curve_for(
    *, evaluation: Evaluation, target_percent: int = DEFAULT_TARGET_PERCENT
) -> CurveView | None:
    """The curve of a finished learning-curve evaluation, recomputed from its stored rows and
    read against ``target_percent`` (% of the teacher's quality); None for other evaluations."""
    from worker.learning_curve import MIN_POINTS, forecast

    if evaluation.kind != EvaluationKind.CURVE or evaluation.job.status != JobStatus.SUCCEEDED:
        return None
    data = curve_scores(evaluation=evaluation)
    if data is None:
        return None
    points = [
        CurvePoint(n=n, percent=data.percent(row), candidate=c)
        for n, row, c in zip(data.sizes, data.matrix, data.students, strict=True)
    ]
    n_test = len(data.weights)
    view = CurveView(points=points, target_percent=target_percent, n_test=n_test)
    view.sentences.append(_measured_sentence(points, n_test, data.teacher is not None))
    distinct = len(set(data.sizes))
    if distinct < MIN_POINTS:
        view.caveat = (
            f"A curve needs students trained on at least {MIN_POINTS} different amounts of data; "
            f"this one has {distinct}, so it makes no forecast."
        )
        view.chart = _chart(view, None)
        return view
    fc = forecast(
        data.sizes,
        data.matrix,
        weights=data.weights,
        teacher=data.teacher,
        seed=CURVE_SEED,
    )
    view.fitted = True
    _forecast_sentences(view, fc, max(data.sizes))
    if distinct == MIN_POINTS:
        view.caveat = (
            "With three training sizes the curve passes through every point: its interval "
            "covers the noise of the test set, not whether growth keeps this shape. A fourth "
            "size makes the forecast firmer."
        )
    view.chart = _chart(view, fc)
    return view


def _measured_sentence(points: list[CurvePoint], n_test: int, of_teacher: bool) -> str:
    sizes = ", ".join(f"{p.n:,}" for p in points)
    values = ", ".join(f"{p.percent:.0f} %" for p in points)
    what = "of the teacher's quality" if of_teacher else "(the metric, as a percentage)"
    return (
        f"Trained on {sizes} reviewed examples, the student reached {values} {what} on the "
        f"same {n_test:,} test examples."
    )


def _forecast_sentences(view: CurveView, fc: Any, largest: int) -> None:
    target = view.target_percent / 100
    at = 2 * largest
    value, low, high = fc.predict_interval(at)
    view.forecast_n, view.forecast = at, (100 * value, 100 * low, 100 * high)
    view.sentences.append(
        f"At {at:,} reviewed examples (twice today's {largest:,}) the student is expected to "
        f"reach {100 * value:.0f} % of the teacher (95 % interval {100 * low:.0f}{DASH}"
        f"{100 * high:.0f} %)."
    )
    plateau, p_low, p_high = fc.plateau_interval()
    needed = fc.examples_needed(target)
    view.needed = needed
    level = (
        f"The curve levels off at about {100 * plateau:.0f} % of the teacher (95 % interval "
        f"{100 * p_low:.0f}{DASH}{100 * p_high:.0f} %)"
    )
    n = needed["n"]
    if n is not None and n <= largest:
        view.sentences.append(f"The student already meets the {view.target_percent} % target.")
    elif n is None and needed["reachable_share"] < 0.2:
        view.sentences.append(
            f"{level}, below the {view.target_percent} % target: more reviewed data is unlikely "
            "to reach it. A bigger student is the lever."
        )
    elif n is not None and needed["low"] is None:
        below = 100 * (1 - needed["reachable_share"])
        view.sentences.append(
            f"By the fitted curve the {view.target_percent} % target needs about {_fmt_n(n)} "
            f"reviewed examples, but that is uncertain: on {below:.0f} % of resamples of the "
            "test set the curve levels off below the target. More training sizes or test "
            "examples would tell."
        )
    elif n is None:
        share = 100 * needed["reachable_share"]
        view.sentences.append(
            f"{level}. Whether more data reaches the {view.target_percent} % target is "
            f"uncertain: on {share:.0f} % of resamples of the test set the curve gets there, on "
            "the rest it levels off below. More training sizes or test examples would tell."
        )
    elif n > EXTRAPOLATION_LIMIT * largest:
        view.sentences.append(
            f"The curve puts the {view.target_percent} % target at about {_fmt_n(n)} reviewed "
            f"examples, more than {EXTRAPOLATION_LIMIT} times today's {largest:,}: more data "
            "alone is an unlikely route there. A bigger student is the lever."
        )
    else:
        view.sentences.append(
            f"The {view.target_percent} % target needs about {_fmt_n(n)} reviewed examples "
            f"(95 % interval {_fmt_n(needed['low'])}{DASH}{_fmt_n(needed['high'])}): about "
            f"{_fmt_n(_rounded(n) - largest)} more than today's {largest:,}."
        )


def _chart(view: CurveView, fc: Any) -> dict[str, Any]:
    """Series for static/js/learning_curve.js: measured points, the fitted curve and its band
    (log-spaced sizes from half the smallest to 4x the largest), the target."""
    ns = [p.n for p in view.points]
    data: dict[str, Any] = {
        "measured": {"x": ns, "y": [round(p.percent, 2) for p in view.points]},
        "target": view.target_percent,
    }
    if fc is not None:
        lo, hi = math.log(max(1, min(ns) / 2)), math.log(4 * max(ns))
        xs = sorted({round(math.exp(lo + (hi - lo) * i / 40)) for i in range(41)})
        rows = [fc.predict_interval(x) for x in xs]
        data["fit"] = {
            "x": xs,
            "y": [round(100 * r[0], 2) for r in rows],
            "low": [round(100 * r[1], 2) for r in rows],
            "high": [round(100 * r[2], 2) for r in rows],
        }
    return data
