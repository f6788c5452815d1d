"""How long an evaluation takes, before it starts and while it runs.

Before: every finished evaluation stored, for each local student it ran (the untuned base and
distilled students), its examples per second, the hardware (``performance.throughput`` and
``performance.hardware``), its load time and single-request latency. Those on the same hardware
with a model of similar size give the time per student for a version's test split
(jobs.throughput); OpenAI-compatible endpoints get their measured rate, whatever the hardware.
While it runs: the time left at the rate of its progress so far.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.utils import timezone

from dataset_versions.models import DatasetVersion
from evaluations.models import CandidateRole, EvalCandidate
from finetunes.estimates import model_parameters, size_label, student_parameters
from finetunes.models import StudentKind, StudentModel
from finetunes.services import split_counts
from jobs.models import Job, JobStatus
from jobs.throughput import Estimate, FirstRunRate, Measurement, about, estimate
from jobs.workers import Hardware, gpu_queue_hardware
from projects.models import Project

#: Finished candidates looked at for measurements (newest first).
RECENT_CANDIDATES = 50
#: Dataset versions and student sizes the start form gives times for.
MAX_VERSIONS = 3
MAX_SIZES = 3
#: The time-left figure waits for this long a run and this many examples before it says one.
TIME_LEFT_AFTER_S = 5.0

#: Hardware no evaluation was measured on. bench/eval_throughput.py's 200 BANKING77 prompts,
#: answered by SmolLM2-135M twice (sequential generation and the label trie), take about 6 min
#: on 2 CPU cores: about 1 example/s per core for each pass. A first run is taken at half that,
#: since the untuned student's full prompt (with the label list) is several times longer.
FIRST_RUN = FirstRunRate(
    per_core_per_s=0.5,
    reference_parameters=135_000_000,
    overhead_s=60.0,
    basis="taken at 0.5 examples/s per CPU core for a 135M-parameter student (half the ~1 per "
    "core bench/eval_throughput.py measures for SmolLM2-135M on short label prompts), slower "
    "in proportion to the student's size, plus a minute to load it and time single requests",
)


def _local_measurement(candidate: EvalCandidate) -> Measurement | None:
    performance = candidate.performance or {}
    hardware = Hardware.of_record(performance.get("hardware"))
    per_s = float((performance.get("throughput") or {}).get("examples_per_s") or 0)
    if hardware is None or per_s <= 0:
        return None
    latency = performance.get("latency") or {}
    timed_s = float(latency.get("n") or 0) * float(latency.get("p50_ms") or 0) / 1000
    parameters = student_parameters(candidate.student_model) or model_parameters(
        candidate.model_path
    )
    return Measurement(
        hardware_key=hardware.key,
        parameters=parameters,
        per_s=per_s,
        overhead_s=float(performance.get("load_s") or 0) + timed_s,
    )


def local_measurements() -> list[Measurement]:
    """The latest local students' runs in finished evaluations, newest first."""
    candidates = (
        EvalCandidate.objects.filter(
            evaluation__job__status=JobStatus.SUCCEEDED,
            role__in=(CandidateRole.BASE, CandidateRole.DISTILLED),
            status="done",
        )
        .select_related("student_model")
        .order_by("-evaluation__job__finished_at", "-pk")[:RECENT_CANDIDATES]
    )
    return [m for m in (_local_measurement(c) for c in candidates) if m is not None]


@dataclass(frozen=True)
class EndpointRate:
    examples_per_s: float
    runs: int


def endpoint_rate() -> EndpointRate | None:
    """OpenAI-compatible endpoints' median examples/s over the latest finished evaluations."""
    rates = sorted(
        float((c.performance.get("throughput") or {}).get("examples_per_s") or 0)
        for c in EvalCandidate.objects.filter(
            evaluation__job__status=JobStatus.SUCCEEDED, role=CandidateRole.ENDPOINT, status="done"
        ).order_by("-evaluation__job__finished_at", "-pk")[:5]
    )
    rates = [r for r in rates if r > 0]
    if not rates:
        return None
    return EndpointRate(examples_per_s=rates[len(rates) // 2], runs=len(rates))


def _sizes(project: Project) -> list[tuple[str, int | None]]:
    students = StudentModel.objects.filter(
        team=project.team, kind__in=(StudentKind.BASE, StudentKind.DISTILLED)
    ).order_by("kind", "-created_at")
    seen: dict[int | None, str] = {}
    for student in students:
        seen.setdefault(student_parameters(student), student.name)
    return [(name, size) for size, name in seen.items()][:MAX_SIZES]


def evaluation_estimates(*, project: Project) -> dict[str, Any]:
    """The start form's estimates: per student size and gpu-queue hardware, the time each
    local student takes on the test split of the project's latest versions."""
    versions = [
        (version, split_counts(version).get("test", 0))
        for version in DatasetVersion.objects.filter(project=project).order_by("-created_at")[
            :MAX_VERSIONS
        ]
    ]
    measurements = local_measurements()
    rows = []
    for name, size in _sizes(project):
        for hardware in gpu_queue_hardware():
            cells: list[Estimate | None] = [
                estimate(
                    items=n,
                    hardware=hardware,
                    parameters=size,
                    measurements=measurements,
                    first_run=FIRST_RUN,
                )
                for _, n in versions
            ]
            rows.append(
                {
                    "student": name,
                    "size": size_label(size),
                    "hardware": hardware,
                    "estimates": cells,
                    "estimate": next((c for c in cells if c), None),
                }
            )
    return {
        "versions": [{"name": v.name, "test": n} for v, n in versions],
        "rows": rows,
        "first_run_basis": FIRST_RUN.basis,
        "endpoint": endpoint_rate(),
    }


def time_left(job: Job) -> dict[str, Any] | None:
    """A running job's time left at the rate of its progress since it was claimed (a resumed
    attempt counts only its own work); None when it is not running or too early to say."""
    if job.status != JobStatus.RUNNING or job.started_at is None or not job.progress_total:
        return None
    elapsed = (timezone.now() - job.started_at).total_seconds()
    done = job.progress_done - job.progress_at_claim
    if elapsed < TIME_LEFT_AFTER_S or done < 1:
        return {"text": "time left: measuring…", "seconds": None, "per_s": None}
    per_s = done / elapsed
    seconds = max(job.progress_total - job.progress_done, 0) / per_s
    return {
        "text": f"{about(seconds)} left at the rate so far ({per_s:.2f} answers/s)",
        "seconds": seconds,
        "per_s": per_s,
    }
