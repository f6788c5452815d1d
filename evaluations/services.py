"""Evaluation jobs and weekend experiments: candidates answer the same examples, every answer is
stored, and the numbers are computed from what was stored (worker.metrics, worker.economics).

The adapter between the database and the engines:

- examples: a frozen dataset version's test split (or, for a weekend experiment, a seeded sample of
  the project's inputs) copied into EvalExample rows with the prompt every candidate sees and the
  reference: the human reference where the input has one (and it parses), else the approved
  teacher output the version froze. The page says which.
- candidates, in order: the teacher (stored outputs reused; inputs without one are sent to the
  teacher through a metered teacher run when a credential is given; or human references standing
  in for a teacher, labelled so), local students (worker.inference: label tasks by the label trie
  with free-greedy proof, other kinds by length-sorted left-padded batches; single-request latency
  measured separately; the hardware recorded) and OpenAI-compatible endpoints (the teacher engine's
  runner, per-request latency from the provider).
- scoring: ``evaluation_score`` recomputes every metric from the stored outputs; the job calls it
  at the end, and anyone can call it again and get the same numbers.
"""

from __future__ import annotations

import gc
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from dataset_versions.models import DatasetItem, DatasetVersion
from evaluations.models import (
    CandidateRole,
    CandidateSource,
    EvalCandidate,
    EvalExample,
    EvalOutput,
    Evaluation,
    EvaluationKind,
    EvalVote,
    VoteChoice,
)
from finetunes.models import StudentModel
from jobs import services as job_services
from jobs.models import Job, JobKind, JobStatus
from projects.models import InputRow, Project
from teachers.models import TeacherOutput, TeacherRun, TeacherRunMode
from teams.models import ProviderCredential
from worker.taskspec import (
    SpecError,
    TaskSpec,
    TemplateError,
    build_messages,
    canonical_output,
    normalise_label,
    parse_output,
)

logger = logging.getLogger(__name__)

Progress = Callable[[int, int, dict[str, Any]], None]

MAX_EXAMPLES = 20_000
EXPERIMENT_SAMPLE = 100
DEFAULT_LATENCY_REQUESTS = 20
# Rows per inference call between progress reports (and cancel checks).
CHUNK = 64
# A free-text answer counts as "right" (for the comparison filters) at this ROUGE-L or above.
TEXT_RIGHT_AT = 0.5
DEFAULT_MAX_NEW_TOKENS = {"json": 256, "text": 256}


# Choices ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TeacherChoice:
    """Where the teacher's answers come from.

    ``stored``: the answers already stored (from ``run`` if given, else the latest per input);
    inputs without one are sent to ``credential``/``model`` when given (a metered teacher run),
    else they count as missing. ``references``: the inputs' human reference outputs stand in for a
    teacher (nothing is called; the page says so)."""

    source: str = CandidateSource.STORED
    run: TeacherRun | None = None
    credential: ProviderCredential | None = None
    model: str = ""


@dataclass(frozen=True)
class StudentChoice:
    """A local model: the untuned base student or a distilled one."""

    role: str  # CandidateRole.BASE | CandidateRole.DISTILLED
    path: str = ""  # model directory, relative to DATA_DIR or absolute under an allowed root
    name: str = ""
    student_model: StudentModel | None = None  # a registered model (its path is used)


@dataclass(frozen=True)
class EndpointChoice:
    """Any OpenAI-compatible endpoint (vLLM, Ollama, a hosted fine-tune) behind a team credential."""

    credential: ProviderCredential
    model: str
    name: str = ""


@dataclass(frozen=True)
class EvalOptions:
    max_new_tokens: int | None = None  # None: longest label + 4 (label tasks), 256 otherwise
    batch_size: int = 16
    latency_requests: int = DEFAULT_LATENCY_REQUESTS
    concurrency: int = 8  # endpoint calls in flight

    def validate(self) -> None:
        if self.max_new_tokens is not None and not 1 <= self.max_new_tokens <= 4096:
            raise ValidationError({"max_new_tokens": "between 1 and 4,096 tokens"})
        if not 1 <= self.batch_size <= 256:
            raise ValidationError({"batch_size": "a batch size between 1 and 256"})
        if not 0 <= self.latency_requests <= 1000:
            raise ValidationError({"latency_requests": "between 0 and 1,000 single requests"})
        if not 1 <= self.concurrency <= 64:
            raise ValidationError({"concurrency": "between 1 and 64 calls in flight"})

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvalOptions:
        known = {"max_new_tokens", "batch_size", "latency_requests", "concurrency"}
        return cls(**{k: v for k, v in data.items() if k in known})


def _valid_spec(project: Project) -> TaskSpec:
    if not project.has_task:
        raise ValidationError("define the project's task before evaluating")
    spec = project.task_spec()
    try:
        spec.validate()
    except (SpecError, TemplateError) as exc:
        raise ValidationError(f"the task is not valid: {exc}") from None
    return spec


# Building examples ------------------------------------------------------------------------------


def _parses(spec: TaskSpec, text: str | None) -> bool:
    return bool(text and text.strip()) and parse_output(spec, text or "").value is not None


def _reference_label(spec: TaskSpec, reference: str | None) -> str:
    if spec.output_kind != "label" or reference is None:
        return ""
    return (normalise_label(reference, spec.label_set) or reference.strip())[:200]


def _example(
    spec: TaskSpec,
    position: int,
    data: dict[str, Any],
    *,
    reference: str | None,
    reference_source: str,
    input_row_id: int | None,
    dataset_item_id: int | None = None,
) -> EvalExample:
    try:
        messages = build_messages(spec, data)
    except TemplateError as exc:
        raise ValidationError(f"input #{input_row_id or position}: {exc}") from None
    return EvalExample(
        position=position,
        input_row_id=input_row_id,
        dataset_item_id=dataset_item_id,
        inputs=data,
        messages=messages,
        reference=reference,
        reference_source=reference_source if reference is not None else "",
        reference_label=_reference_label(spec, reference),
    )


def _examples_from_version(
    spec: TaskSpec, version: DatasetVersion, split: str
) -> list[EvalExample]:
    items = list(
        DatasetItem.objects.filter(version=version, split=split)
        .order_by("id")
        .values("pk", "inputs", "output", "source", "teacher_output_id", "input_row_id")
    )
    if not items:
        raise ValidationError(
            {"dataset_version": f"version {version.name!r} has no rows in its {split} split"}
        )
    if len(items) > MAX_EXAMPLES:
        raise ValidationError(
            {"dataset_version": f"the {split} split has more than {MAX_EXAMPLES:,} rows"}
        )
    teacher_inputs = dict(
        TeacherOutput.objects.filter(
            pk__in=[i["teacher_output_id"] for i in items if i["teacher_output_id"]]
        ).values_list("pk", "input_id")
    )
    input_ids = {
        i["input_row_id"] or teacher_inputs.get(i["teacher_output_id"] or 0) for i in items
    } - {None}
    human = dict(
        InputRow.objects.filter(pk__in=input_ids, reference_output__isnull=False).values_list(
            "pk", "reference_output"
        )
    )
    examples = []
    for position, item in enumerate(items):
        input_id = item["input_row_id"] or teacher_inputs.get(item["teacher_output_id"] or 0)
        if item["source"] == "human_reference":
            reference, source = item["output"], "human"
        elif _parses(spec, human.get(input_id or 0)):
            reference, source = human[input_id or 0], "human"
        else:
            reference, source = item["output"], "teacher"
        examples.append(
            _example(
                spec,
                position,
                dict(item["inputs"]),
                reference=reference,
                reference_source=source,
                input_row_id=input_id,
                dataset_item_id=item["pk"],
            )
        )
    return examples


def _examples_from_inputs(
    spec: TaskSpec, project: Project, input_ids: list[int]
) -> list[EvalExample]:
    rows = {
        pk: (data, ref)
        for pk, data, ref in InputRow.objects.filter(project=project, pk__in=input_ids).values_list(
            "pk", "data", "reference_output"
        )
    }
    examples = []
    for input_id in input_ids:
        if input_id not in rows:
            continue
        data, ref = rows[input_id]
        good = _parses(spec, ref)
        examples.append(
            _example(
                spec,
                len(examples),
                dict(data),
                reference=ref if good else None,
                reference_source="human",
                input_row_id=input_id,
            )
        )
    if not examples:
        raise ValidationError("no inputs to evaluate on")
    return examples


# Candidates -------------------------------------------------------------------------------------


def _teacher_candidate(project: Project, teacher: TeacherChoice) -> EvalCandidate:
    if teacher.source == CandidateSource.REFERENCES:
        return EvalCandidate(
            role=CandidateRole.TEACHER,
            source=CandidateSource.REFERENCES,
            name="Human references (stand-in for a teacher; no model was called)",
        )
    if teacher.source != CandidateSource.STORED:
        raise ValidationError({"teacher": f"unknown teacher source {teacher.source!r}"})
    run = teacher.run
    if run is not None and run.project_id != project.pk:
        raise ValidationError({"teacher_run": "choose one of this project's teacher runs"})
    credential = teacher.credential
    if credential is not None:
        if credential.team_id != project.team_id:
            raise ValidationError({"teacher_credential": "choose one of this team's credentials"})
        if not teacher.model.strip():
            raise ValidationError({"teacher_model": "name the teacher model to call"})
    if run is not None:
        if run.mode == TeacherRunMode.IMPORTED:
            name = f"{run.model} (imported from {run.source}; no model was called)"
        else:
            name = f"{run.model} (stored outputs of teacher run #{run.pk})"
    elif credential is not None:
        name = f"{teacher.model.strip()} via {credential.name}"
    else:
        name = "Teacher (stored outputs)"
    return EvalCandidate(
        role=CandidateRole.TEACHER,
        source=CandidateSource.STORED,
        name=name[:200],
        teacher_run=run,
        credential=credential,
        model=teacher.model.strip()[:200],
    )


def _student_candidate(project: Project, student: StudentChoice) -> EvalCandidate:
    from finetunes.services import resolve_local_model
    from jobs.storage import data_path, stored_path

    if student.role not in (CandidateRole.BASE, CandidateRole.DISTILLED):
        raise ValidationError({"students": f"unknown student role {student.role!r}"})
    field = "base_model" if student.role == CandidateRole.BASE else "students"
    registered = student.student_model
    if registered is not None:
        if registered.team_id != project.team_id:
            raise ValidationError({field: "choose one of this team's student models"})
        path = data_path(registered.path)
        if not (path / "config.json").is_file():
            raise ValidationError({field: f"{registered.name}: its model folder is missing"})
    else:
        path = resolve_local_model(student.path, field_name=field)
    default = "Untuned student" if student.role == CandidateRole.BASE else "Distilled student"
    name = student.name.strip() or (
        f"{default} ({registered.name})" if registered else f"{default} ({path.name})"
    )
    return EvalCandidate(
        role=student.role,
        source=CandidateSource.LOCAL,
        name=name[:200],
        model_path=stored_path(path),
        student_model=registered,
    )


def _endpoint_candidate(project: Project, endpoint: EndpointChoice) -> EvalCandidate:
    if endpoint.credential.team_id != project.team_id:
        raise ValidationError({"endpoint_credential": "choose one of this team's credentials"})
    if not endpoint.model.strip():
        raise ValidationError({"endpoint_model": "name the model the endpoint serves"})
    return EvalCandidate(
        role=CandidateRole.ENDPOINT,
        source=CandidateSource.API,
        name=(endpoint.name.strip() or f"{endpoint.model.strip()} via {endpoint.credential.name}")[
            :200
        ],
        credential=endpoint.credential,
        model=endpoint.model.strip()[:200],
    )


# Starting ---------------------------------------------------------------------------------------


def _create(
    *,
    project: Project,
    user: Any,
    kind: str,
    examples: list[EvalExample],
    candidates: list[EvalCandidate],
    options: EvalOptions,
    name: str,
    dataset_version: DatasetVersion | None = None,
    split: str = "",
    extra_options: dict[str, Any] | None = None,
) -> Evaluation:
    job_kind = JobKind.EVALUATION if kind == EvaluationKind.EVALUATION else JobKind.EXPERIMENT
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
            created_by=user if getattr(user, "pk", None) else None,
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
    user: Any,
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
    spec = _valid_spec(project)
    if (dataset_version is None) == (input_ids is None):
        raise ValidationError({"dataset_version": "choose the dataset version to evaluate on"})
    candidates = [_teacher_candidate(project, teacher)]
    candidates += [_student_candidate(project, s) for s in students]
    candidates += [_endpoint_candidate(project, e) for e in endpoints]
    if len(candidates) < 2:
        raise ValidationError({"students": "choose at least one student or endpoint to evaluate"})
    if dataset_version is not None:
        if dataset_version.project_id != project.pk:
            raise ValidationError({"dataset_version": "choose one of this project's versions"})
        examples = _examples_from_version(spec, dataset_version, split)
        default_name = f"{dataset_version.name} · {split}"
    else:
        examples = _examples_from_inputs(spec, project, list(input_ids or []))
        default_name = f"{len(examples)} inputs"
    if teacher.source == CandidateSource.REFERENCES and any(e.reference is None for e in examples):
        missing = sum(1 for e in examples if e.reference is None)
        raise ValidationError(
            {
                "teacher": f"{missing} of {len(examples)} examples have no human reference to "
                "stand in for the teacher"
            }
        )
    return _create(
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


def experiment_input_ids(
    *, project: Project, teacher: TeacherChoice, sample_size: int, seed: int
) -> list[int]:
    """The inputs a weekend experiment samples: those the teacher can answer without a call
    (stored outputs, or references standing in), or any input when a credential is given."""
    rows = InputRow.objects.filter(project=project)
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
    user: Any,
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
    spec = _valid_spec(project)
    if not 1 <= sample_size <= 1000:
        raise ValidationError({"sample_size": "sample between 1 and 1,000 inputs"})
    teacher_candidate = _teacher_candidate(project, teacher)
    base_candidate = _student_candidate(
        project, StudentChoice(CandidateRole.BASE, base.path, base.name, base.student_model)
    )
    ids = experiment_input_ids(project=project, teacher=teacher, sample_size=sample_size, seed=seed)
    if not ids:
        if teacher.source == CandidateSource.REFERENCES:
            why = "no input has a human reference output to stand in for the teacher"
        else:
            why = "no input has a stored teacher output: choose a credential and a model to call"
        raise ValidationError({"teacher": why})
    examples = _examples_from_inputs(spec, project, ids)
    return _create(
        project=project,
        user=user,
        kind=EvaluationKind.EXPERIMENT,
        examples=examples,
        candidates=[teacher_candidate, base_candidate],
        options=options,
        name=f"Weekend experiment · {len(examples)} inputs",
        extra_options={"sample_size": sample_size, "seed": seed},
    )


# Running ----------------------------------------------------------------------------------------


class _Progress:
    def __init__(self, job: Job, total: int) -> None:
        self.job = job
        self.total = total
        self.done = 0

    def add(self, n: int, **figures: Any) -> None:
        self.done += n
        job_services.job_progress(
            job=self.job, done=min(self.done, self.total), total=self.total, figures=figures or None
        )


def evaluation_job_run(*, job: Job) -> dict[str, Any]:
    """The work of the ``jobs.evaluation`` / ``jobs.experiment`` tasks. A re-claimed job (after a
    worker died) keeps the candidates already done and redoes the others."""
    evaluation = Evaluation.objects.select_related("project__team").get(job=job)
    project = evaluation.project
    spec = project.task_spec()
    options = EvalOptions.from_json(evaluation.options)
    examples = list(evaluation.examples.order_by("position"))
    candidates = list(evaluation.candidates.order_by("position"))
    progress = _Progress(job, len(examples) * len(candidates))
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
                _run_local(candidate, examples, spec, options, progress)
            elif candidate.source == CandidateSource.API:
                _run_endpoint(candidate, examples, spec, options, progress)
            elif candidate.source == CandidateSource.REFERENCES:
                _run_references(candidate, examples, spec, progress)
            else:
                _run_stored_teacher(evaluation, candidate, examples, spec, progress)
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


def _store(
    candidate: EvalCandidate,
    examples: Sequence[EvalExample],
    spec: TaskSpec,
    answers: Sequence[str | None],
    *,
    latencies_ms: Sequence[float | None] | None = None,
    tokens: Sequence[tuple[int, int]] | None = None,
) -> None:
    rows = []
    for i, (example, answer) in enumerate(zip(examples, answers, strict=True)):
        # PostgreSQL text cannot hold NUL; an untuned model can emit it. Shown as U+FFFD.
        raw = None if answer is None else answer.replace("\x00", "\ufffd")
        parsed = parse_output(spec, raw or "")
        rows.append(
            EvalOutput(
                example=example,
                candidate=candidate,
                raw_text=raw or "",
                parsed=parsed.value,
                parse_error=parsed.error if raw is not None else "no answer",
                canonical=canonical_output(spec, parsed.value)
                if parsed.value is not None
                else None,
                missing=raw is None,
                latency_ms=latencies_ms[i] if latencies_ms is not None else None,
                input_tokens=tokens[i][0] if tokens else 0,
                output_tokens=tokens[i][1] if tokens else 0,
            )
        )
    EvalOutput.objects.bulk_create(rows, batch_size=2000)


def _run_references(
    candidate: EvalCandidate, examples: list[EvalExample], spec: TaskSpec, progress: _Progress
) -> None:
    _store(candidate, examples, spec, [e.reference for e in examples])
    progress.add(len(examples))


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


def _run_stored_teacher(
    evaluation: Evaluation,
    candidate: EvalCandidate,
    examples: list[EvalExample],
    spec: TaskSpec,
    progress: _Progress,
) -> None:
    by_input = _stored_teacher_outputs(evaluation, candidate, examples)
    missing = sorted(
        {e.input_row_id for e in examples if e.input_row_id and e.input_row_id not in by_input}
    )
    if missing and candidate.credential_id:
        run = _teacher_run_for_missing(evaluation, candidate, missing)
        for output in TeacherOutput.objects.filter(run=run, sample_index=0).select_related("run"):
            by_input[output.input_id] = output
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
    _store(candidate, examples, spec, answers, latencies_ms=latencies, tokens=tokens)
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


def _label_token_depth(tokenizer: Any, labels: Sequence[str]) -> int:
    return max(len(tokenizer(label, add_special_tokens=False)["input_ids"]) for label in labels)


def _run_local(
    candidate: EvalCandidate,
    examples: list[EvalExample],
    spec: TaskSpec,
    options: EvalOptions,
    progress: _Progress,
) -> None:
    from jobs.storage import data_path
    from worker.inference import latency_percentiles, load_model

    path = data_path(candidate.model_path)
    loaded = time.perf_counter()
    model = load_model(path)
    load_s = time.perf_counter() - loaded
    try:
        prompts = [model.prompt(e.messages) for e in examples]
        if spec.output_kind == "label":
            max_new = (
                options.max_new_tokens or _label_token_depth(model.tokenizer, spec.label_set) + 4
            )
            how = "label trie, free greedy verified (generation where it could not be proved)"
        else:
            max_new = options.max_new_tokens or DEFAULT_MAX_NEW_TOKENS[spec.output_kind]
            how = "greedy generation, length-sorted left-padded batches"
        answers: list[str] = []
        seconds = 0.0
        fallbacks = reruns = 0
        for start in range(0, len(prompts), CHUNK):
            chunk = prompts[start : start + CHUNK]
            if spec.output_kind == "label":
                out = model.classify(
                    chunk,
                    spec.label_set,
                    constrained=False,
                    max_new_tokens=max_new,
                    batch_size=options.batch_size,
                )
                fallbacks += out.fallbacks
            else:
                out = model.generate_batched(
                    chunk, max_new_tokens=max_new, batch_size=options.batch_size
                )
            reruns += out.reruns
            answers.extend(out.outputs)
            seconds += out.seconds
            progress.add(len(chunk), phase=f"{candidate.name}: {len(answers)} answered")
        latencies: list[float | None] = [None] * len(examples)
        latency: dict[str, Any] = {}
        k = min(options.latency_requests, len(prompts))
        if k:
            single = model.generate_sequential(prompts[:k], max_new_tokens=max_new)
            for i, seconds_i in enumerate(single.latencies):
                latencies[i] = seconds_i * 1000
            latency = {
                **latency_percentiles(single.latencies),
                "n": k,
                "how": "single requests, one at a time (model.generate, greedy)",
                "same_answers": sum(
                    1 for a, b in zip(single.outputs, answers[:k], strict=True) if a == b
                ),
            }
            job_services.job_progress(job=progress.job, figures={"phase": "latency measured"})
        _store(candidate, examples, spec, answers, latencies_ms=latencies)
        performance = {
            "throughput": {
                "examples_per_s": len(answers) / seconds if seconds > 0 else 0.0,
                "n": len(answers),
                "seconds": seconds,
                "batch_size": options.batch_size,
                "how": how,
                "fallbacks": fallbacks,
                "reruns": reruns,
            },
            "latency": latency,
            "hardware": {**asdict(model.hardware), "description": model.hardware.describe()},
            "load_s": load_s,
            "max_new_tokens": max_new,
            "prompt": {
                "label_list": model.label_list_in_prompt,
                "mean_tokens": (
                    sum(len(model.encode(p)) for p in prompts) / len(prompts) if prompts else 0.0
                ),
            },
        }
        EvalCandidate.objects.filter(pk=candidate.pk).update(performance=performance)
    finally:
        device = model.device
        del model
        gc.collect()
        if str(device).startswith("cuda"):
            import torch

            torch.cuda.empty_cache()


def _run_endpoint(
    candidate: EvalCandidate,
    examples: list[EvalExample],
    spec: TaskSpec,
    options: EvalOptions,
    progress: _Progress,
) -> None:
    from asgiref.sync import sync_to_async

    from teachers.calls import teacher_calls_run
    from teachers.services import price_for_model
    from worker.inference import latency_percentiles
    from worker.pricing import FREE
    from worker.teacher_runner import StopReason
    from worker.teachers.base import TeacherRequest, TeacherResponse

    credential = candidate.credential
    if credential is None:
        raise ValueError("the endpoint's credential was deleted")
    config = credential.provider_config_dangerously()
    max_new = options.max_new_tokens or DEFAULT_MAX_NEW_TOKENS.get(spec.output_kind, 64)
    requests = [
        TeacherRequest(
            custom_id=str(e.pk),
            messages=list(e.messages),
            model=candidate.model,
            temperature=0.0,
            max_tokens=max_new,
            output_kind=spec.output_kind,
            json_schema=spec.json_schema,
            label_set=tuple(spec.label_set),
        )
        for e in examples
    ]
    team = candidate.evaluation.project.team
    price = price_for_model(team=team, model=candidate.model, provider=credential.provider) or FREE
    responses: dict[str, TeacherResponse] = {}

    def on_result(request: Any, key: str, response: TeacherResponse, cost: Any) -> None:
        responses[request.custom_id] = response

    def check_stop() -> StopReason | None:
        try:
            progress.add(0, phase=f"{candidate.name}: {len(responses)} answered")
        except job_services.JobCancelled:
            return StopReason.CANCELLED
        return None

    summary = teacher_calls_run(
        requests,
        config,
        price=price,
        concurrency=options.concurrency,
        on_result=on_result,
        should_stop=sync_to_async(check_stop, thread_sensitive=True),
    )
    if summary.stopped is StopReason.CANCELLED:
        raise job_services.JobCancelled
    if summary.stopped is not None:
        raise RuntimeError(summary.stopped_reason)
    answers: list[str | None] = []
    latencies: list[float | None] = []
    tokens: list[tuple[int, int]] = []
    for e in examples:
        r = responses.get(str(e.pk))
        ok = r is not None and r.ok
        answers.append(r.raw_text if ok and r is not None else None)
        latencies.append(float(r.latency_ms) if ok and r and r.latency_ms is not None else None)
        tokens.append((r.input_tokens, r.output_tokens) if ok and r else (0, 0))
    _store(candidate, examples, spec, answers, latencies_ms=latencies, tokens=tokens)
    measured = [x / 1000 for x in latencies if x is not None]
    performance = {
        "latency": {
            **latency_percentiles(measured),
            "n": len(measured),
            "how": "per request, as measured by the API client",
        },
        "throughput": {
            "examples_per_s": len(examples) / summary.wall_s if summary.wall_s > 0 else 0.0,
            "n": len(examples),
            "seconds": summary.wall_s,
            "how": f"{options.concurrency} requests in flight",
        },
        "calls": summary.calls,
        "failed": summary.failed,
        "input_tokens": summary.input_tokens,
        "output_tokens": summary.output_tokens,
        "cost_usd": str(summary.cost_usd),
        "hardware": {"description": f"remote endpoint ({credential.get_provider_display()})"},
    }
    EvalCandidate.objects.filter(pk=candidate.pk).update(performance=performance)
    progress.add(len(examples))


# Scoring ----------------------------------------------------------------------------------------


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


def evaluation_score(*, evaluation: Evaluation) -> dict[str, Any]:
    """(Re)compute every metric from the stored outputs, store it, and return the summary."""
    from worker import metrics
    from worker.economics import weekend_verdict

    spec = evaluation.project.task_spec()
    examples = list(evaluation.examples.order_by("position"))
    candidates = list(evaluation.candidates.order_by("position"))
    outputs: dict[tuple[int, int], EvalOutput] = {
        (o.example_id, o.candidate_id): o
        for o in EvalOutput.objects.filter(example__evaluation=evaluation)
    }
    counts = Counter(e.reference_source if e.reference is not None else "none" for e in examples)
    scored = [e for e in examples if e.reference is not None]
    source = (
        "human"
        if counts.get("human") and not counts.get("teacher")
        else "teacher"
        if counts.get("teacher") and not counts.get("human")
        else "mixed"
    )
    teacher = next((c for c in candidates if c.role == CandidateRole.TEACHER), None)

    def raw(example: EvalExample, candidate: EvalCandidate) -> str:
        output = outputs.get((example.pk, candidate.pk))
        return output.raw_text if output is not None else ""

    results: dict[int, Any] = {}
    for candidate in candidates:
        if not any((e.pk, candidate.pk) in outputs for e in examples):
            continue
        answers = [raw(e, candidate) for e in scored]
        result = metrics.evaluate_outputs(
            spec, answers, [e.reference for e in scored], reference_source=source
        )
        results[candidate.pk] = result
        per_example = _per_example_scores(spec, result, scored)
        teacher_canonical = {
            e.pk: outputs[(e.pk, teacher.pk)].canonical
            for e in examples
            if teacher is not None and (e.pk, teacher.pk) in outputs
        }
        changed = []
        for e in examples:
            output = outputs.get((e.pk, candidate.pk))
            if output is None:
                continue
            score = per_example.get(e.pk)
            output.score = score
            output.correct = None if score is None else _is_right(spec, score)
            if teacher is None or candidate.pk == teacher.pk:
                output.agrees_with_teacher = None
            else:
                theirs = teacher_canonical.get(e.pk)
                output.agrees_with_teacher = (
                    output.canonical is not None and output.canonical == theirs
                )
            changed.append(output)
        EvalOutput.objects.bulk_update(
            changed, ["score", "correct", "agrees_with_teacher"], batch_size=2000
        )
    teacher_result = results.get(teacher.pk) if teacher is not None else None
    for candidate in candidates:
        result = results.get(candidate.pk)
        if result is None:
            continue
        data: dict[str, Any] = {"quality": result.to_dict(), "headline_name": result.headline_name}
        if teacher is not None and candidate.pk != teacher.pk:
            agree = metrics.agreement(
                spec,
                [raw(e, candidate) for e in examples],
                [raw(e, teacher) for e in examples],
            )
            data["agreement"] = asdict(agree)
            if teacher_result is not None:
                data["percent_of_teacher"] = metrics.percent_of_teacher(
                    result.headline, teacher_result.headline
                )
        candidate.metrics = data
        candidate.headline = result.headline
        EvalCandidate.objects.filter(pk=candidate.pk).update(metrics=data, headline=result.headline)
    summary = _summary(evaluation, spec, candidates, counts, len(scored), teacher)
    if evaluation.kind == EvaluationKind.EXPERIMENT:
        student = next((c for c in candidates if c.role == CandidateRole.BASE), None)
        agreement = (student.metrics or {}).get("agreement") if student else None
        if agreement:
            verdict = weekend_verdict(agreement["agree"], agreement["n"])
            summary["verdict"] = {"level": verdict.level, "sentence": verdict.sentence}
            summary["verdict_sentence"] = verdict.sentence
    Evaluation.objects.filter(pk=evaluation.pk).update(summary=summary)
    evaluation.summary = summary
    return summary


def _per_example_scores(spec: TaskSpec, result: Any, scored: list[EvalExample]) -> dict[int, float]:
    if spec.output_kind == "label":
        scores = {}
        for e, predicted in zip(scored, result.predictions, strict=True):
            wanted = (
                normalise_label(e.reference or "", spec.label_set) or (e.reference or "").strip()
            )
            scores[e.pk] = 1.0 if predicted == wanted else 0.0
        return scores
    if spec.output_kind == "json":
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
    spec: TaskSpec,
    candidates: list[EvalCandidate],
    counts: Counter[str],
    n_scored: int,
    teacher: EvalCandidate | None,
) -> dict[str, Any]:
    metric = {"label": "accuracy", "json": "field F1", "text": "ROUGE-L"}[spec.output_kind]
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
    who = {
        CandidateRole.DISTILLED: "The distilled student",
        CandidateRole.BASE: "The untuned student",
    }.get(student.role, student.name)
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


# Votes ------------------------------------------------------------------------------------------


def vote_cast(
    *,
    evaluation: Evaluation,
    example: EvalExample,
    user: Any,
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
