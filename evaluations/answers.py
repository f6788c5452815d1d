"""Storing the candidates' answers: one EvalOutput per example (parsed and canonicalised for the
task), and the job's progress as they come in."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from evaluations.models import EvalCandidate, EvalExample, EvalOutput
from jobs import services as job_services
from jobs.models import Job
from worker.storable import storable_text
from worker.taskspec import TaskSpec, canonical_output, parse_output


class Progress:
    def __init__(self, job: Job, total: int) -> None:
        self.job = job
        self.total = total
        self.done = 0

    def add(self, n: int, **figures: Any) -> None:
        self.done += n
        job_services.job_progress(
            job=self.job, done=min(self.done, self.total), total=self.total, figures=figures or None
        )


def store_answers(
    candidate: EvalCandidate,
    examples: Sequence[EvalExample],
    spec: TaskSpec,
    answers: Sequence[str | None],
    *,
    latencies_ms: Sequence[float | None] | None = None,
    tokens: Sequence[tuple[int, int]] | None = None,
    confidences: Sequence[float | None] | None = None,
) -> None:
    rows = []
    for i, (example, answer) in enumerate(zip(examples, answers, strict=True)):
        raw = None if answer is None else storable_text(answer)  # no NUL (worker.storable)
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
                confidence=confidences[i] if confidences is not None else None,
                input_tokens=tokens[i][0] if tokens else 0,
                output_tokens=tokens[i][1] if tokens else 0,
            )
        )
    EvalOutput.objects.bulk_create(rows, batch_size=2000)


def run_references(
    candidate: EvalCandidate, examples: list[EvalExample], spec: TaskSpec, progress: Progress
) -> None:
    store_answers(candidate, examples, spec, [e.reference for e in examples])
    progress.add(len(examples))
