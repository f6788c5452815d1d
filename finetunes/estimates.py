"""How long a fine-tune takes on the gpu-queue workers, before it starts.

Measured: every finished fine-tune stored where it trained (``FineTune.hardware``), its trained
samples per second (the engine's ``samples_per_s`` in the job's result) and what loading,
tokenizing, saving and merging took (``FineTune.timings``). Those runs, on the same hardware
with a student of similar size and the same method, give the estimate (jobs.throughput).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetunes.models import FineTune, StudentModel
from jobs.models import JobStatus
from jobs.storage import data_path
from jobs.throughput import Estimate, FirstRunRate, Measurement, estimate
from jobs.workers import Hardware, gpu_queue_hardware

#: Finished fine-tunes looked at for measurements (newest first).
RECENT_RUNS = 50
#: Student sizes (and hardware) the start form's preset table gives a time for.
MAX_COLUMNS = 4

#: Hardware no fine-tune was measured on. worker.training notes a 135M student trains about 5
#: samples/s on 2 CPU cores (LoRA, fp32, short prompts): 2.5 per core. A first run is taken at
#: a quarter of that, since long prompts, emulated bf16 and a busy machine train several times
#: slower; a bigger student, slower in proportion to its parameters. On a GPU worker the same
#: per-core rate over its CPU cores is an upper bound on the time (a GPU is usually far faster).
FIRST_RUN = FirstRunRate(
    per_core_per_s=0.6,
    reference_parameters=135_000_000,
    overhead_s=120.0,
    basis="taken at 0.6 samples/s per CPU core for a 135M-parameter student (a quarter of the "
    "~2.5 per core measured for SmolLM2-135M LoRA on short prompts), slower in proportion to "
    "the student's size, plus 2 minutes to load and save",
)


@functools.lru_cache(maxsize=256)
def _parameters_in(folder: str, modified: float) -> int | None:
    from worker.training import count_parameters

    return count_parameters(folder)


def model_parameters(path: str) -> int | None:
    """Parameters in a model folder (read from its safetensors headers; cached per folder)."""
    if not path:
        return None
    folder = Path(data_path(path))
    try:
        modified = folder.stat().st_mtime
    except OSError:
        return None
    return _parameters_in(str(folder), modified)


def student_parameters(student: StudentModel | None) -> int | None:
    return model_parameters(student.path) if student is not None else None


def size_label(parameters: int | None) -> str:
    if parameters is None:
        return "size unknown"
    if parameters >= 1e9:
        return f"{parameters / 1e9:.1f}B parameters"
    if parameters >= 1e6:
        return f"{parameters / 1e6:.0f}M parameters"
    return f"{parameters:,} parameters"


def _measurement(fine_tune: FineTune) -> Measurement | None:
    hardware = Hardware.of_record(fine_tune.hardware)
    result = fine_tune.job.result or {}
    per_s = float(
        result.get("samples_per_s") or (fine_tune.job.figures or {}).get("samples_per_s") or 0
    )
    if hardware is None or per_s <= 0:
        return None
    timings = fine_tune.timings or {}
    overhead = sum(
        float(v) for k, v in timings.items() if k != "train_s" and isinstance(v, int | float)
    )
    return Measurement(
        hardware_key=hardware.key,
        parameters=student_parameters(fine_tune.base_model),
        per_s=per_s,
        overhead_s=overhead,
    )


def training_measurements(*, method: str) -> list[Measurement]:
    """The latest finished fine-tunes of ``method`` as measurements, newest first."""
    runs = (
        FineTune.objects.filter(job__status=JobStatus.SUCCEEDED, method=method)
        .exclude(hardware={})
        .select_related("job", "base_model")
        .order_by("-job__finished_at", "-pk")[:RECENT_RUNS]
    )
    return [m for m in (_measurement(ft) for ft in runs) if m is not None]


def training_estimate(
    *,
    samples: int,
    hardware: Hardware,
    parameters: int | None,
    measurements: Iterable[Measurement],
) -> Estimate | None:
    return estimate(
        items=samples,
        hardware=hardware,
        parameters=parameters,
        measurements=measurements,
        first_run=FIRST_RUN,
    )


def _student_sizes(students: Iterable[StudentModel]) -> list[tuple[str, int | None]]:
    """(the first student's name, its size) for each distinct size, in the given order."""
    seen: dict[int | None, str] = {}
    for student in students:
        seen.setdefault(student_parameters(student), student.name)
    return [(name, size) for size, name in seen.items()]


@dataclass
class Column:
    """One column of times: a size of student on one hardware."""

    student: str
    parameters: int | None
    hardware: Hardware
    estimate: Estimate | None = None  # the first preset's (the column's notes name its basis)

    @property
    def size(self) -> str:
        return size_label(self.parameters)


def preset_estimates(
    *, presets: list[dict[str, Any]], students: Iterable[StudentModel], gpu: bool, method: str
) -> dict[str, Any]:
    """The start form's time column(s): for each student size (and gpu-queue hardware) a
    column, each preset row its estimate there. ``presets`` are services.preset_table's rows
    for the same ``gpu``."""
    hardware = [h for h in gpu_queue_hardware() if h.is_gpu == gpu]
    sizes = _student_sizes(students)
    measurements = training_measurements(method=method)
    columns = [
        Column(student=name, parameters=size, hardware=h) for name, size in sizes for h in hardware
    ][:MAX_COLUMNS]
    rows = []
    for preset in presets:
        cells = [
            training_estimate(
                samples=int(preset["samples"]),
                hardware=column.hardware,
                parameters=column.parameters,
                measurements=measurements,
            )
            for column in columns
        ]
        rows.append({**preset, "estimates": cells})
    for i, column in enumerate(columns):
        column.estimate = next((r["estimates"][i] for r in rows if r["estimates"][i]), None)
    return {"columns": columns, "rows": rows, "first_run_basis": FIRST_RUN.basis}
