"""Rates with their confidence interval, and the comparisons every task kind shares."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Rate:
    """k of n, with a Wilson score interval (no continuity correction) at ``confidence``."""

    k: int
    n: int
    value: float
    low: float
    high: float
    confidence: float = CONFIDENCE


def wilson_rate(k: int, n: int, confidence: float = CONFIDENCE) -> Rate:
    """k successes out of n with scipy's Wilson interval; n == 0 gives 0 with a [0, 1] interval."""
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return Rate(k=0, n=0, value=0.0, low=0.0, high=1.0, confidence=confidence)
    from scipy.stats import binomtest

    interval = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return Rate(
        k=k,
        n=n,
        value=k / n,
        low=float(interval.low),
        high=float(interval.high),
        confidence=confidence,
    )


def percent_of_teacher(student_metric: float, teacher_metric: float) -> float | None:
    """Student metric divided by teacher metric, times 100, both measured against the same reference.

    None when the teacher scored 0 (the ratio is undefined, not infinite).
    """
    if teacher_metric == 0:
        return None
    return 100.0 * student_metric / teacher_metric


def same_length(a: Sequence[Any], b: Sequence[Any], name_a: str, name_b: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{name_a} has {len(a)} items but {name_b} has {len(b)}")
