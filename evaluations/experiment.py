"""The weekend experiment: a seeded sample of inputs, the teacher and the untuned student side by
side, their agreement and a plain-language verdict on the gap."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError

from evaluations.candidates import student_candidate, teacher_candidate
from evaluations.choices import EvalOptions, StudentChoice, TeacherChoice
from evaluations.examples import examples_from_inputs, valid_spec
from evaluations.models import (
    CandidateRole,
    CandidateSource,
    EvalCandidate,
    Evaluation,
    EvaluationKind,
)
from evaluations.start import create_evaluation
from projects.models import InputRow, Project
from teachers.models import TeacherOutput

EXPERIMENT_SAMPLE = 100
SAMPLE_LIMIT = 1000


def experiment_input_ids(
    *, project: Project, teacher: TeacherChoice, sample_size: int, seed: int
) -> list[int]:
    """The inputs a weekend experiment samples: those the teacher can answer without a call
    (stored outputs, or references standing in), or any input when a credential is given.
    Real inputs only: the gap is measured on what production sends, not on inputs a teacher
    wrote (projects.InputRow.synthetic)."""
    rows = InputRow.objects.filter(project=project, synthetic=False)
    if teacher.source == CandidateSource.REFERENCES:
        rows = rows.filter(reference_output__isnull=False).exclude(reference_output="")
    elif teacher.credential is None:
        outputs = TeacherOutput.objects.filter(project=project, sample_index=0)
        if teacher.run is not None:
            outputs = outputs.filter(run=teacher.run)
        rows = rows.filter(pk__in=outputs.values("input_id"))
    ids = list(rows.order_by("id").values_list("id", flat=True))
    if len(ids) > sample_size:
        ids = sorted(random.Random(seed).sample(ids, sample_size))
    return ids


def experiment_start(
    *,
    project: Project,
    user: User,
    teacher: TeacherChoice,
    base: StudentChoice,
    sample_size: int = EXPERIMENT_SAMPLE,
    seed: int = 0,
    options: EvalOptions | None = None,
) -> Evaluation:
    """The weekend experiment: a seeded sample of inputs, the teacher and the untuned student side
    by side, their agreement and a plain-language verdict (worker.economics.weekend_verdict)."""
    options = options or EvalOptions()
    options.validate()
    spec = valid_spec(project)
    if not 1 <= sample_size <= SAMPLE_LIMIT:
        raise ValidationError({"sample_size": f"sample between 1 and {SAMPLE_LIMIT:,} inputs"})
    teacher_row = teacher_candidate(project, teacher)
    base_row = student_candidate(
        project, StudentChoice(CandidateRole.BASE, base.path, base.name, base.student_model)
    )
    ids = experiment_input_ids(project=project, teacher=teacher, sample_size=sample_size, seed=seed)
    if not ids:
        if teacher.source == CandidateSource.REFERENCES:
            why = "no input has a human reference output to stand in for the teacher"
        else:
            why = "no input has a stored teacher output: choose a credential and a model to call"
        raise ValidationError({"teacher": why})
    examples = examples_from_inputs(spec, project, ids)
    return create_evaluation(
        project=project,
        user=user,
        kind=EvaluationKind.EXPERIMENT,
        examples=examples,
        candidates=[teacher_row, base_row],
        options=options,
        name=f"Weekend experiment · {len(examples)} inputs",
        extra_options={"sample_size": sample_size, "seed": seed},
    )


def experiment_verdict(candidates: Sequence[EvalCandidate]) -> dict[str, Any]:
    """The plain-language verdict on the gap (worker.economics.weekend_verdict), from the untuned
    student's agreement with the teacher; nothing when it has none."""
    from worker.economics import weekend_verdict

    student = next((c for c in candidates if c.role == CandidateRole.BASE), None)
    agreement = (student.metrics or {}).get("agreement") if student else None
    if not agreement:
        return {}
    verdict = weekend_verdict(agreement["agree"], agreement["n"])
    return {
        "verdict": {"level": verdict.level, "sentence": verdict.sentence},
        "verdict_sentence": verdict.sentence,
    }
