"""How many CPU cores this process may really use: its affinity mask, capped by a cgroup CPU
quota (a container limited to 2 CPUs on a 64-core host must not start 64 threads each)."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_V2_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def quota_cores(quota_us: int, period_us: int) -> int | None:
    """Whole cores a CFS quota allows (rounded up, at least 1); None when unlimited."""
    if quota_us <= 0 or period_us <= 0:
        return None
    return max(1, math.ceil(quota_us / period_us))


def cgroup_cores() -> int | None:
    try:
        quota, _, period = CGROUP_V2_CPU_MAX.read_text().strip().partition(" ")
        return None if quota == "max" else quota_cores(int(quota), int(period or 100000))
    except (OSError, ValueError):
        pass
    try:
        return quota_cores(
            int(CGROUP_V1_QUOTA.read_text().strip()), int(CGROUP_V1_PERIOD.read_text().strip())
        )
    except (OSError, ValueError):
        return None


def usable_cores() -> int:
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        affinity = os.cpu_count() or 1
    quota = cgroup_cores()
    return min(affinity, quota) if quota else affinity
