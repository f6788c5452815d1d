"""Thread counts follow the cores a process may really use, cgroup quota included."""

from __future__ import annotations

import os

from worker.cores import quota_cores, usable_cores


def test_a_cfs_quota_caps_the_cores():
    assert quota_cores(200_000, 100_000) == 2
    assert quota_cores(150_000, 100_000) == 2  # 1.5 CPUs: two threads, not one
    assert quota_cores(50_000, 100_000) == 1
    assert quota_cores(-1, 100_000) is None  # cgroup v1 "unlimited"


def test_usable_cores_never_exceed_the_affinity_mask():
    assert 1 <= usable_cores() <= len(os.sched_getaffinity(0))
