"""Endpoint candidates: every example goes to a remote model through the teacher engine
(teachers.calls.teacher_calls_run); the answers are stored, and latency, throughput, tokens and
cost recorded as the candidate's performance."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from evaluations.answers import Progress, store_answers
from evaluations.choices import DEFAULT_MAX_NEW_TOKENS, EvalOptions
from evaluations.models import EvalCandidate, EvalExample
from jobs import services as job_services
from worker.taskspec import TaskSpec

if TYPE_CHECKING:
    from teams.models import ProviderCredential
    from worker.teacher_runner import RunSummary
    from worker.teachers.base import TeacherRequest, TeacherResponse


def run_endpoint(
    candidate: EvalCandidate,
    examples: list[EvalExample],
    spec: TaskSpec,
    options: EvalOptions,
    progress: Progress,
) -> None:
    """Ask the candidate's endpoint about every example, store the answers and record the
    endpoint's performance. Raises JobCancelled when the job is cancelled meanwhile."""
    credential = candidate.credential
    if credential is None:
        raise ValueError("the endpoint's credential was deleted")
    requests = _endpoint_requests(candidate, examples, spec, options)
    responses, summary = _endpoint_ask(candidate, credential, requests, options, progress)
    latencies = _endpoint_store(candidate, examples, spec, responses)
    performance = _endpoint_performance(credential, examples, options, summary, latencies)
    EvalCandidate.objects.filter(pk=candidate.pk).update(performance=performance)
    progress.add(len(examples))


def _endpoint_requests(
    candidate: EvalCandidate, examples: list[EvalExample], spec: TaskSpec, options: EvalOptions
) -> list[TeacherRequest]:
    """One greedy request per example, named by the example's pk."""
    from worker.teachers.base import TeacherRequest

    max_new = options.max_new_tokens or DEFAULT_MAX_NEW_TOKENS.get(spec.output_kind, 64)
    return [
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


def _endpoint_ask(
    candidate: EvalCandidate,
    credential: ProviderCredential,
    requests: list[TeacherRequest],
    options: EvalOptions,
    progress: Progress,
) -> tuple[dict[str, TeacherResponse], RunSummary]:
    """The endpoint's responses by custom_id, and the run's summary. Reports progress while the
    calls run (a cancelled job stops them and raises JobCancelled); raises when the run stopped
    for any other reason."""
    from asgiref.sync import sync_to_async

    from teachers.calls import teacher_calls_run
    from teachers.services import price_for_model
    from worker.pricing import FREE
    from worker.teacher_runner import StopReason

    config = credential.provider_config_dangerously()
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
    return responses, summary


def _endpoint_store(
    candidate: EvalCandidate,
    examples: list[EvalExample],
    spec: TaskSpec,
    responses: dict[str, TeacherResponse],
) -> list[float | None]:
    """Store each example's answer (None where the call failed) with its latency and tokens;
    returns the latencies in milliseconds."""
    answers: list[str | None] = []
    latencies: list[float | None] = []
    tokens: list[tuple[int, int]] = []
    for e in examples:
        r = responses.get(str(e.pk))
        ok = r is not None and r.ok
        answers.append(r.raw_text if ok and r is not None else None)
        latencies.append(float(r.latency_ms) if ok and r and r.latency_ms is not None else None)
        tokens.append((r.input_tokens, r.output_tokens) if ok and r else (0, 0))
    store_answers(candidate, examples, spec, answers, latencies_ms=latencies, tokens=tokens)
    return latencies


def _endpoint_performance(
    credential: ProviderCredential,
    examples: list[EvalExample],
    options: EvalOptions,
    summary: RunSummary,
    latencies: list[float | None],
) -> dict[str, Any]:
    """The candidate's performance record: latency as the API client measured it, throughput
    at the run's concurrency, calls, tokens and cost."""
    from worker.inference import latency_percentiles

    measured = [x / 1000 for x in latencies if x is not None]
    return {
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
