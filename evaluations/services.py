"""Evaluation jobs and weekend experiments: candidates answer the same examples, every answer is
stored, and the numbers are computed from what was stored (worker.metrics, worker.economics).

The public entry point of the app's writes; the work is in modules named by what they do:

- ``choices``: what is compared (teacher, students, endpoints) and the run's options;
- ``examples`` and ``candidates``: the rows every evaluation starts from; ``start`` creates them
  with the job, ``experiment`` does so for the weekend experiment;
- ``answers``, ``run_teacher``, ``run_local`` and ``run_endpoint``: each candidate answers every
  example and the answers are stored;
- ``learning_curve``: one fine-tune's recipe retrained on nested subsets, its students trained
  inside the job before they answer, and the curve fitted to their stored scores;
- ``scoring``: ``evaluation_score`` recomputes every metric from the stored outputs; the job calls
  it at the end, and anyone can call it again and get the same numbers.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError

from evaluations.answers import Progress, run_references
from evaluations.choices import (
    EndpointChoice,
    EvalOptions,
    StudentChoice,
    TeacherChoice,
)
from evaluations.experiment import EXPERIMENT_SAMPLE, experiment_input_ids, experiment_start
from evaluations.learning_curve import curve_train, learning_curve_start
from evaluations.models import (
    CandidateSource,
    EvalCandidate,
    EvalExample,
    EvalOutput,
    Evaluation,
    EvaluationKind,
    EvalVote,
    VoteChoice,
)
from evaluations.run_endpoint import run_endpoint
from evaluations.run_local import run_local
from evaluations.run_teacher import run_stored_teacher
from evaluations.scoring import evaluation_score, primary_student, reference_sentence
from evaluations.start import evaluation_start
from jobs import services as job_services
from jobs.models import Job, JobStatus

__all__ = [
    "EXPERIMENT_SAMPLE",
    "EndpointChoice",
    "EvalOptions",
    "StudentChoice",
    "TeacherChoice",
    "evaluation_job_run",
    "evaluation_score",
    "evaluation_start",
    "experiment_input_ids",
    "experiment_start",
    "learning_curve_start",
    "primary_student",
    "reference_sentence",
    "vote_cast",
]

logger = logging.getLogger(__name__)


def evaluation_job_run(*, job: Job) -> dict[str, Any]:
    """The work of the ``jobs.evaluation`` / ``jobs.experiment`` tasks. A re-claimed job (after a
    worker died) keeps the candidates already done and redoes the others."""
    evaluation = Evaluation.objects.select_related("project__team").get(job=job)
    project = evaluation.project
    spec = project.task_spec()
    options = EvalOptions.from_json(evaluation.options)
    examples = list(evaluation.examples.order_by("position"))
    if evaluation.kind == EvaluationKind.CURVE:
        # The students of a learning curve are trained first, inside this job.
        planned = len(evaluation.options["curve"]["sizes"]) + evaluation.candidates.count()
        curve_train(evaluation=evaluation, progress=Progress(job, len(examples) * planned))
    candidates = list(evaluation.candidates.order_by("position"))
    progress = Progress(job, len(examples) * len(candidates))
    timings: dict[str, float] = {}
    for candidate in candidates:
        if candidate.status == "done":
            progress.add(len(examples))
            continue
        started = time.perf_counter()
        EvalOutput.objects.filter(candidate=candidate).delete()
        EvalCandidate.objects.filter(pk=candidate.pk).update(status="running", error="")
        progress.add(0, phase=f"running {candidate.name}")
        try:
            if candidate.source == CandidateSource.LOCAL:
                run_local(candidate, examples, spec, options, progress)
            elif candidate.source == CandidateSource.API:
                run_endpoint(candidate, examples, spec, options, progress)
            elif candidate.source == CandidateSource.REFERENCES:
                run_references(candidate, examples, spec, progress)
            else:
                run_stored_teacher(evaluation, candidate, examples, spec, progress)
        except job_services.JobCancelled:
            EvalCandidate.objects.filter(pk=candidate.pk).update(status="pending")
            raise
        except Exception as exc:
            EvalCandidate.objects.filter(pk=candidate.pk).update(
                status="failed", error=(str(exc) or exc.__class__.__name__)[:5000]
            )
            raise RuntimeError(f"{candidate.name}: {exc}") from exc
        EvalCandidate.objects.filter(pk=candidate.pk).update(status="done")
        timings[candidate.name] = round(time.perf_counter() - started, 3)
    progress.add(0, phase="scoring")
    started = time.perf_counter()
    summary = evaluation_score(evaluation=evaluation)
    timings["scoring"] = round(time.perf_counter() - started, 3)
    logger.info(
        "evaluation %s project=%s examples=%d %s",
        evaluation.pk,
        project.pk,
        len(examples),
        " ".join(f"{k!r}={v:.2f}s" for k, v in timings.items()),
    )
    result = {"examples": len(examples), "candidates": len(candidates)}
    for key in ("headline_quality", "headline_agreement", "verdict_sentence"):
        if summary.get(key):
            result[key] = summary[key]
    return result


# Votes ------------------------------------------------------------------------------------------


def vote_cast(
    *,
    evaluation: Evaluation,
    example: EvalExample,
    user: User,
    candidate_a: EvalCandidate,
    candidate_b: EvalCandidate,
    choice: str,
) -> EvalVote:
    """Record (or change) the user's judgement of A vs B on one example. Any role may vote."""
    if choice not in VoteChoice.values:
        raise ValidationError(
            {"choice": "choose A better, B better, both acceptable or both wrong"}
        )
    if example.evaluation_id != evaluation.pk:
        raise ValidationError("this example is not part of the evaluation")
    if candidate_a.evaluation_id != evaluation.pk or candidate_b.evaluation_id != evaluation.pk:
        raise ValidationError("compare two candidates of this evaluation")
    if candidate_a.pk == candidate_b.pk:
        raise ValidationError("compare two different candidates")
    if evaluation.job.status != JobStatus.SUCCEEDED:
        raise ValidationError("votes open once the evaluation has finished")
    vote, _ = EvalVote.objects.update_or_create(
        example=example,
        user=user,
        candidate_a=candidate_a,
        candidate_b=candidate_b,
        defaults={"choice": choice, "evaluation": evaluation},
    )
    return vote
