"""The worker registry: which Celery workers run, on which queues and hardware.

A worker reports in when it starts (its CPU cores, CUDA GPUs and library versions) and out when
it stops. ``Hardware`` is what a job's speed depends on; measured throughput is filed under it
(finetunes.estimates, evaluations.estimates) so a form can say how long a job takes there.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

from django.utils import timezone

from jobs.models import WorkerInfo
from worker.cores import usable_cores


def hardware_probe() -> dict[str, Any]:
    """This machine's CPU cores and CUDA GPUs. nvidia-smi is asked, never CUDA itself: a worker
    that initialised CUDA could not safely fork its pool processes afterwards."""
    devices: list[dict[str, Any]] = []
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=15,
                check=True,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        for line in out.splitlines():
            name, _, memory = line.rpartition(",")
            if name.strip():
                try:
                    memory_gb = round(float(memory) / 1024, 1)
                except ValueError:
                    memory_gb = None
                devices.append({"name": name.strip(), "memory_gb": memory_gb})
    versions = {}
    for package in ("torch", "transformers", "trl", "peft", "bitsandbytes"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        "cpu_cores": usable_cores(),
        "cuda_devices": devices,
        "versions": versions,
    }


def worker_report_ready(*, hostname: str, queues: list[str]) -> WorkerInfo:
    """Called when a Celery worker starts (the worker_ready signal)."""
    probe = hardware_probe()
    info, _ = WorkerInfo.objects.update_or_create(
        hostname=hostname,
        defaults={
            "queues": sorted(queues),
            "cuda_devices": probe["cuda_devices"],
            "cpu_cores": probe["cpu_cores"],
            "versions": probe["versions"],
            "started_at": timezone.now(),
            "stopped_at": None,
        },
    )
    return info


def worker_report_stopped(*, hostname: str) -> None:
    WorkerInfo.objects.filter(hostname=hostname).update(stopped_at=timezone.now())


def gpu_workers() -> list[WorkerInfo]:
    """Running workers that take gpu-queue jobs and reported a CUDA GPU."""
    return [
        w
        for w in WorkerInfo.objects.filter(stopped_at__isnull=True)
        if "gpu" in (w.queues or []) and w.cuda_devices
    ]


@dataclass(frozen=True)
class Hardware:
    """What a job's speed on a worker depends on: the GPU it runs on, else its CPU cores.
    Measured throughput is filed under ``key``; ``describe()`` is how pages name it."""

    gpu: str  # the CUDA device's name; "" on a CPU-only worker
    cpu_cores: int

    @property
    def key(self) -> str:
        return f"gpu:{self.gpu}" if self.gpu else f"cpu:{self.cpu_cores}"

    @property
    def is_gpu(self) -> bool:
        return bool(self.gpu)

    def describe(self) -> str:
        if self.gpu:
            return f"{self.gpu} (GPU)"
        return f"{self.cpu_cores} CPU core{'s' if self.cpu_cores != 1 else ''}"

    @classmethod
    def of_worker(cls, info: WorkerInfo) -> Hardware:
        devices = info.cuda_devices or []
        gpu = str(devices[0].get("name") or "GPU") if devices else ""
        return cls(gpu=gpu, cpu_cores=int(info.cpu_cores or 0))

    @classmethod
    def of_record(cls, record: dict[str, Any] | None) -> Hardware | None:
        """From what a finished job stored: a fine-tune's ``hardware`` (device, cpu_cores,
        cuda_devices) or a local evaluation candidate's (device, name, cores). None when it
        says too little."""
        if not isinstance(record, dict) or not record.get("device"):
            return None
        cores = int(record.get("cpu_cores") or record.get("cores") or 0)
        if record["device"] == "cuda":
            devices = record.get("cuda_devices") or []
            name = devices[0].get("name") if devices else record.get("name")
            return cls(gpu=str(name or "GPU"), cpu_cores=cores) if name else None
        return cls(gpu="", cpu_cores=cores) if cores else None


def gpu_queue_hardware() -> list[Hardware]:
    """The distinct hardware of the running workers that take gpu-queue jobs (training and
    evaluations), GPUs first: where a job started now would run."""
    found: dict[str, Hardware] = {}
    for info in WorkerInfo.objects.filter(stopped_at__isnull=True):
        if "gpu" in (info.queues or []):
            hardware = Hardware.of_worker(info)
            found.setdefault(hardware.key, hardware)
    return sorted(found.values(), key=lambda h: (not h.is_gpu, h.key))
