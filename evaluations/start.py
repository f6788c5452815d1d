"""Starting an evaluation: check the choices, build the examples and candidates, and create the
job and its rows in one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import transaction

from dataset_versions.models import DatasetVersion
from evaluations.candidates import endpoint_candidate, student_candidate, teacher_candidate
from evaluations.choices import EndpointChoice, EvalOptions, StudentChoice, TeacherChoice
from evaluations.examples import examples_from_inputs, examples_from_version, valid_spec
from evaluations.models import (
    CandidateSource,
    EvalCandidate,
    EvalExample,
    Evaluation,
    EvaluationKind,
)
from jobs import services as job_services
from jobs.models import JobKind
from projects.models import Project


def create_evaluation(
    *,
    project: Project,
    user: User,
    kind: str,
    examples: list[EvalExample],
    candidates: list[EvalCandidate],
    options: EvalOptions,
    name: str,
    dataset_version: DatasetVersion | None = None,
    split: str = "",
    extra_options: dict[str, Any] | None = None,
) -> Evaluation:
    job_kind = JobKind.EXPERIMENT if kind == EvaluationKind.EXPERIMENT else JobKind.EVALUATION
    with transaction.atomic():
        job = job_services.job_create(
            team=project.team,
            project=project,
            kind=job_kind,
            user=user,
            params={},
            total=len(examples) * len(candidates),
        )
        evaluation = Evaluation.objects.create(
            job=job,
            project=project,
            kind=kind,
            name=name.strip()[:200],
            dataset_version=dataset_version,
            split=split,
            options={**options.as_json(), **(extra_options or {})},
            created_by=user,
        )
        for position, candidate in enumerate(candidates):
            candidate.evaluation = evaluation
            candidate.position = position
        EvalCandidate.objects.bulk_create(candidates)
        for example in examples:
            example.evaluation = evaluation
        EvalExample.objects.bulk_create(examples, batch_size=2000)
        job.params = {"evaluation_id": evaluation.pk}
        job.save(update_fields=["params"])
    return evaluation


def evaluation_start(
    *,
    project: Project,
    user: User,
    teacher: TeacherChoice,
    students: Sequence[StudentChoice] = (),
    endpoints: Sequence[EndpointChoice] = (),
    dataset_version: DatasetVersion | None = None,
    split: str = "test",
    input_ids: Sequence[int] | None = None,
    options: EvalOptions | None = None,
    name: str = "",
) -> Evaluation:
    """Queue an evaluation (gpu queue) of the candidates on a frozen split, or on given inputs.

    Raises ValidationError (by form field) before anything is created."""
    options = options or EvalOptions()
    options.validate()
    spec = valid_spec(project)
    if (dataset_version is None) == (input_ids is None):
        raise ValidationError({"dataset_version": "choose the dataset version to evaluate on"})
    candidates = [teacher_candidate(project, teacher)]
    candidates += [student_candidate(project, s) for s in students]
    candidates += [endpoint_candidate(project, e) for e in endpoints]
    if len(candidates) < 2:
        raise ValidationError({"students": "choose at least one student or endpoint to evaluate"})
    if dataset_version is not None:
        if dataset_version.project_id != project.pk:
            raise ValidationError({"dataset_version": "choose one of this project's versions"})
        examples = examples_from_version(spec, dataset_version, split)
        default_name = f"{dataset_version.name} · {split}"
    else:
        examples = examples_from_inputs(spec, project, list(input_ids or []))
        default_name = f"{len(examples)} inputs"
    if teacher.source == CandidateSource.REFERENCES and any(e.reference is None for e in examples):
        missing = sum(1 for e in examples if e.reference is None)
        raise ValidationError(
            {
                "teacher": f"{missing} of {len(examples)} examples have no human reference to "
                "stand in for the teacher"
            }
        )
    return create_evaluation(
        project=project,
        user=user,
        kind=EvaluationKind.EVALUATION,
        examples=examples,
        candidates=candidates,
        options=options,
        name=name or default_name,
        dataset_version=dataset_version,
        split=split if dataset_version is not None else "",
    )
