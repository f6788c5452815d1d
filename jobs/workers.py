"""Fine-tuning jobs and the student model registry: rows → worker.training specs, events → rows.

A fine-tune trains a registered base student on a frozen dataset version's train split (its
validation split is the eval set), in a subprocess the gpu-queue worker spawns
(worker.training). The subprocess reports events; ``_Recorder`` turns them into TrainingPoint
rows (the live chart) and the job's figures (step, loss, tokens/s, elapsed, remaining) and
heartbeats the job while it trains, including while a big model loads or merges.

Stopping: a user's cancel → the engine's cooperative cancel (the child stops after the step it
is in and writes a checkpoint) → CANCELLED. SIGTERM (a worker shutting down) → the child
checkpoints → the job goes back to QUEUED and the next worker resumes from that checkpoint. A
worker killed outright leaves the job RUNNING with no heartbeat → the reaper re-queues it → the
next attempt resumes from the latest complete checkpoint (the output folder is the job's).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
from typing import Any

from django.utils import timezone

from jobs.models import WorkerInfo


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
        "cpu_cores": len(os.sched_getaffinity(0)),
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
