"""One heavy job per machine (per GPU on a GPU worker, the whole CPU on a CPU worker).

A heavy job (training, evaluation) holds an exclusive lock on a file of this machine for as
long as it runs; the kernel releases it when the process ends, however it ends, so a crashed
job never leaves the machine locked. A job that finds every slot taken goes back to the queue
and says how many are ahead of it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from django.conf import settings


@lru_cache(maxsize=1)
def compute_slots() -> tuple[str, ...]:
    """This machine's slots: one per CUDA GPU, else one for the CPU."""
    from jobs.workers import hardware_probe

    gpus = len(hardware_probe()["cuda_devices"])
    return tuple(f"gpu{i}" for i in range(gpus)) or ("cpu",)


def lock_dir() -> Path:
    folder = Path(
        getattr(settings, "COMPUTE_LOCK_DIR", "")
        or Path(tempfile.gettempdir()) / "distillery-compute"
    )
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _holder_path(slot: str) -> Path:
    return lock_dir() / f"{slot}.holder"


@contextlib.contextmanager
def compute_lease(holder: str) -> Iterator[str | None]:
    """Yield the slot this process now holds, or None when every slot is taken. `holder`
    (e.g. "host:pid job 12") is written next to the lock for the waiting jobs' message."""
    for slot in compute_slots():
        fd = os.open(lock_dir() / f"{slot}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        previous = os.environ.get("CUDA_VISIBLE_DEVICES")
        if slot.startswith("gpu"):
            os.environ["CUDA_VISIBLE_DEVICES"] = slot.removeprefix("gpu")
        _holder_path(slot).write_text(holder)
        try:
            yield slot
        finally:
            if slot.startswith("gpu"):
                if previous is None:
                    os.environ.pop("CUDA_VISIBLE_DEVICES", None)
                else:
                    os.environ["CUDA_VISIBLE_DEVICES"] = previous
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        return
    yield None


def current_holder() -> str:
    """Who holds this machine's compute (the first slot's holder), for a waiting job's message."""
    with contextlib.suppress(OSError):
        return _holder_path(compute_slots()[0]).read_text()
    return ""
