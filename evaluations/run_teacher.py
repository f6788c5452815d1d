"""The teacher candidate: its stored answers reused, and the inputs without one sent to the
teacher through a normal (metered, ledgered, cached) teacher run inside the evaluation job."""

from __future__ import annotations

from collections import Counter
from typing import Any

from django.db import transaction

from dataset_versions.models import DatasetItem
from evaluations.answers import Progress, store_answers
from evaluations.models import EvalCandidate, EvalExample, Evaluation
from jobs import services as job_services
from jobs.models import JobKind
from teachers.models import TeacherOutput, TeacherRun, TeacherRunMode
from worker.taskspec import TaskSpec


def _stored_teacher_outputs(
    evaluation: Evaluation, candidate: EvalCandidate, examples: list[EvalExample]
) -> dict[int, TeacherOutput]:
    """Per input id, the teacher answer to reuse: the run's, else the one the dataset version
    froze, else the latest stored one."""
    input_ids = [e.input_row_id for e in examples if e.input_row_id]
    outputs = TeacherOutput.objects.filter(
        project=evaluation.project, input_id__in=input_ids, sample_index=0
    ).select_related("run")
    if candidate.teacher_run_id:
        outputs = outputs.filter(run_id=candidate.teacher_run_id)
    by_input: dict[int, TeacherOutput] = {}
    for output in outputs.order_by("id"):
        by_input[output.input_id] = output  # the latest wins
    if not candidate.teacher_run_id and evaluation.dataset_version_id:
        frozen = dict(
            DatasetItem.objects.filter(
                version_id=evaluation.dataset_version_id,
                pk__in=[e.dataset_item_id for e in examples if e.dataset_item_id],
                teacher_output_id__isnull=False,
            ).values_list("pk", "teacher_output_id")
        )
        chosen = TeacherOutput.objects.filter(pk__in=frozen.values()).select_related("run")
        for output in chosen:
            by_input[output.input_id] = output
    return by_input


def run_stored_teacher(
    evaluation: Evaluation,
    candidate: EvalCandidate,
    examples: list[EvalExample],
    spec: TaskSpec,
    progress: Progress,
) -> None:
    by_input = _stored_teacher_outputs(evaluation, candidate, examples)
    missing = sorted(
        {e.input_row_id for e in examples if e.input_row_id and e.input_row_id not in by_input}
    )
    if missing and candidate.credential_id:
        run = _teacher_run_for_missing(evaluation, candidate, missing)
        for fresh in TeacherOutput.objects.filter(run=run, sample_index=0).select_related("run"):
            by_input[fresh.input_id] = fresh
    answers: list[str | None] = []
    latencies: list[float | None] = []
    tokens: list[tuple[int, int]] = []
    for example in examples:
        output = by_input.get(example.input_row_id or 0)
        answers.append(output.raw_text if output is not None else None)
        latencies.append(
            float(output.latency_ms)
            if output is not None and output.latency_ms is not None and not output.from_cache
            else None
        )
        tokens.append((output.input_tokens, output.output_tokens) if output else (0, 0))
    store_answers(candidate, examples, spec, answers, latencies_ms=latencies, tokens=tokens)
    models = Counter(o.run.model for o in by_input.values())
    measured = [x for x in latencies if x is not None]
    performance: dict[str, Any] = {
        "answered": sum(1 for a in answers if a is not None),
        "missing": sum(1 for a in answers if a is None),
        "teacher_models": dict(models),
        "runs": sorted({o.run_id for o in by_input.values()}),
        "imported": any(o.run.mode == TeacherRunMode.IMPORTED for o in by_input.values()),
    }
    if measured:
        from worker.inference import latency_percentiles

        performance["latency"] = {
            **latency_percentiles([m / 1000 for m in measured]),
            "n": len(measured),
            "how": "as measured by the provider's API during the teacher run",
        }
    updates: dict[str, Any] = {"performance": performance}
    if not candidate.teacher_run_id and not candidate.credential_id and len(models) == 1:
        only = next(iter(models))
        imported = performance["imported"]
        updates["name"] = (
            f"{only} ({'imported outputs; no model was called' if imported else 'stored outputs'})"
        )[:200]
    EvalCandidate.objects.filter(pk=candidate.pk).update(**updates)
    progress.add(len(examples))


def _teacher_run_for_missing(
    evaluation: Evaluation, candidate: EvalCandidate, input_ids: list[int]
) -> TeacherRun:
    """Send the inputs that have no stored answer to the teacher, through a normal (metered,
    ledgered, cached) teacher run executed here, inside the evaluation job."""
    from teachers.services import RunSettings, teacher_run_estimate, teacher_run_execute

    project = evaluation.project
    if candidate.teacher_run_id:  # an earlier attempt's run (the worker died): retire it
        job_services.job_fail_running(
            job_ids=list(
                TeacherRun.objects.filter(pk=candidate.teacher_run_id).values_list(
                    "job_id", flat=True
                )
            ),
            error="superseded",
        )
    run_settings = RunSettings(
        model=candidate.model,
        credential=candidate.credential,
        selection={"kind": "evaluation", "evaluation_id": evaluation.pk},
    )
    estimate = teacher_run_estimate(project=project, run_settings=run_settings, input_ids=input_ids)
    with transaction.atomic():
        job = job_services.job_create_running(
            team=project.team,
            project=project,
            kind=JobKind.TEACHER_RUN,
            user=evaluation.created_by,
            worker=f"evaluation #{evaluation.pk}",
            params={"evaluation_id": evaluation.pk},
            total=len(input_ids),
        )
        run = TeacherRun.objects.create(
            job=job,
            project=project,
            credential=candidate.credential,
            provider=run_settings.provider,
            model=estimate["model"],
            mode=TeacherRunMode.LIVE,
            selection=run_settings.selection,
            input_ids=input_ids,
            estimate=estimate,
        )
        job.params = {"teacher_run_id": run.pk, "evaluation_id": evaluation.pk}
        job.save(update_fields=["params"])
        EvalCandidate.objects.filter(pk=candidate.pk).update(teacher_run=run)
    try:
        result = teacher_run_execute(job=job)
    except job_services.JobCancelled:
        job_services.job_mark_cancelled(job=job)
        raise
    except Exception as exc:
        job_services.job_fail(job=job, error=str(exc) or exc.__class__.__name__)
        raise RuntimeError(f"the teacher run for inputs without a stored answer: {exc}") from exc
    job_services.job_succeed(job=job, result=result)
    return run
