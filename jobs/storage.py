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

from pathlib import Path

from django.conf import settings as django_settings


def data_dir() -> Path:
    return Path(django_settings.DATA_DIR).resolve()


def data_path(stored: str) -> Path:
    """The absolute folder for a path stored on a row (relative to DATA_DIR, or absolute)."""
    path = Path(stored)
    return path if path.is_absolute() else data_dir() / path


def stored_path(path: Path) -> str:
    """What a row stores: relative to DATA_DIR when inside it, else absolute."""
    resolved = Path(path).resolve()
    root = data_dir()
    if resolved == root or root in resolved.parents:
        return str(resolved.relative_to(root))
    return str(resolved)
