"""What a fine-tune of each registered student will use on the gpu-queue workers' GPU, and why:
worker.gpu_sizing's plan (LoRA or QLoRA, rank, batch x accumulation, checkpointing, max length)
for the smallest GPU a gpu-queue worker reported, so the start form can say it before the run and
"Automatic" can pick LoRA or QLoRA. The training child plans again on the GPU it lands on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from finetunes.models import FineTuneMethod, StudentModel
from jobs.storage import data_path
from jobs.workers import gpu_workers
from worker.gpu_sizing import GpuPlan

AUTO = "auto"
# nvidia-smi reports MiB; the worker registry stores them /1024, as GiB.
GIB = 2**30


@dataclass(frozen=True)
class GpuTarget:
    """The GPU a plan is made for: the smallest one a running gpu-queue worker reported."""

    name: str
    memory_bytes: int

    def describe(self) -> str:
        return f"{self.name} ({self.memory_bytes / GIB:.0f} GB)"


@dataclass(frozen=True)
class StudentPlan:
    student: str
    plan: GpuPlan | None
    why_none: str = ""


def gpu_target() -> GpuTarget | None:
    """The smallest GPU among running gpu-queue workers (a job may land on any of them); None
    when no worker reported a GPU with its memory."""
    found: list[GpuTarget] = []
    for worker in gpu_workers():
        for device in worker.cuda_devices or []:
            memory_gb = device.get("memory_gb")
            if isinstance(memory_gb, int | float) and memory_gb > 0:
                found.append(GpuTarget(str(device.get("name") or "GPU"), int(memory_gb * GIB)))
    return min(found, key=lambda t: t.memory_bytes) if found else None


def plan_for_folder(
    folder: Path,
    *,
    target: GpuTarget,
    method: str = AUTO,
    preset_rank: int = 16,
    samples_to_train: float | None = None,
    max_length: int | None = None,
) -> GpuPlan | None:
    """The plan for the model in ``folder`` (its config.json and safetensors headers); None
    when its shape cannot be read."""
    from worker.gpu_sizing import plan_gpu_training
    from worker.model_loading import read_model_shape
    from worker.training import count_parameters

    shape = read_model_shape(folder)
    if shape is None:
        return None
    return plan_gpu_training(
        shape=shape,
        n_parameters=count_parameters(folder),
        gpu_memory_bytes=target.memory_bytes,
        method=method,
        preset_rank=preset_rank,
        samples_to_train=samples_to_train,
        max_length=max_length or 1024,
    )


def student_plans(
    students: list[StudentModel], *, target: GpuTarget, samples_to_train: float | None
) -> list[StudentPlan]:
    """Each student's automatic plan (balanced preset) on ``target``."""
    plans = []
    for student in students:
        plan = plan_for_folder(
            data_path(student.path), target=target, samples_to_train=samples_to_train
        )
        why = "" if plan else "its config.json could not be read"
        plans.append(StudentPlan(student=student.name, plan=plan, why_none=why))
    return plans


def resolve_method(method: str, *, folder: Path, target: GpuTarget | None) -> tuple[str, list[str]]:
    """ "auto" → LoRA or QLoRA by the plan for ``target`` (LoRA without a GPU or a readable
    config.json), with the plan's reasons; any other method as it is."""
    if method != AUTO:
        return method, []
    if target is None:
        return FineTuneMethod.LORA, ["LoRA: no GPU worker has reported in (QLoRA needs one)."]
    plan = plan_for_folder(folder, target=target)
    if plan is None:
        return FineTuneMethod.LORA, ["LoRA: the student's config.json could not be read."]
    return plan.method, [f"On {target.describe()}: {r}" for r in plan.reasons]
