"""A finished learning curve with fixed answers: students "trained" on given sizes (registered
models and succeeded fine-tunes given that many train rows: ``train_limit`` and ``n_train`` are the
size, the largest one's too, as the version is smaller than the sizes it stands for), each right on a given number of
the test examples, nested like real students (a bigger one gets right what a smaller one did),
scored by the real scoring code. For the page and report tests, which need known numbers."""

from __future__ import annotations

from typing import Any

from evaluations import services as evaluation_services
from evaluations.models import EvalCandidate, EvalExample, EvalOutput, Evaluation
from finetunes.models import FineTune, StudentModel
from jobs.models import Job
from projects.models import Project
from worker.taskspec import build_messages, canonical_output, parse_output


def _answer(candidate: EvalCandidate, example: EvalExample, answer: str, spec: Any) -> EvalOutput:
    parsed = parse_output(spec, answer)
    return EvalOutput(
        example=example,
        candidate=candidate,
        raw_text=answer,
        parsed=parsed.value,
        parse_error=parsed.error,
        canonical=None if parsed.value is None else canonical_output(spec, parsed.value),
    )


def finished_curve(
    project: Project, owner: Any, version: Any, *, sizes: list[int], right: list[int], n_test: int
) -> Evaluation:
    spec = project.task_spec()
    labels = list(project.label_set)
    job = Job.objects.create(
        team=project.team, project=project, kind="evaluation", status="succeeded", queue="gpu"
    )
    evaluation = Evaluation.objects.create(
        job=job,
        project=project,
        kind="curve",
        name="learning curve",
        dataset_version=version,
        split="test",
        options={**evaluation_services.EvalOptions().as_json(), "curve": {"sizes": sizes[:-1]}},
        created_by=owner,
    )
    teacher = EvalCandidate.objects.create(
        evaluation=evaluation, position=0, role="teacher", source="stored", name="Teacher"
    )
    students = []
    for position, n in enumerate(sizes, start=1):
        model = StudentModel.objects.create(
            team=project.team,
            name=f"student {n}",
            kind="distilled",
            source="fine_tune",
            path=f"models/student-{evaluation.pk}-{n}",
        )
        FineTune.objects.create(
            job=Job.objects.create(
                team=project.team, project=project, kind="fine_tune", status="succeeded"
            ),
            project=project,
            dataset_version=version,
            base_model_name="tiny",
            method="lora",
            n_train=n,
            train_limit=n,
            result_model=model,
        )
        students.append(
            EvalCandidate.objects.create(
                evaluation=evaluation,
                position=position,
                role="distilled",
                source="local",
                name=f"Student trained on {n:,} rows",
                student_model=model,
                status="done",
            )
        )
    outputs = []
    for position in range(n_test):
        reference = labels[position % len(labels)]
        wrong = labels[(position + 1) % len(labels)]
        example = EvalExample.objects.create(
            evaluation=evaluation,
            position=position,
            inputs={"text": f"ticket {position}"},
            messages=build_messages(spec, {"text": f"ticket {position}"}),
            reference=reference,
            reference_source="human",
            reference_label=reference,
        )
        outputs.append(_answer(teacher, example, reference, spec))
        for student, k in zip(students, right, strict=True):
            outputs.append(_answer(student, example, reference if position < k else wrong, spec))
    EvalOutput.objects.bulk_create(outputs)
    evaluation_services.evaluation_score(evaluation=evaluation)
    evaluation.refresh_from_db()
    return evaluation
