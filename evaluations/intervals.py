"""95 % intervals for the report's quality figures, each of the metric it stands next to.

- accuracy (label tasks) and agreement are shares of k in n: their Wilson interval is stored with
  the metrics (worker.metrics.wilson_rate) and read back as it is.
- field F1 (json) is a micro average over every (example, reference field): a percentile
  bootstrap over examples, each example weighing its number of reference fields, so the point
  estimate is exactly the stored headline.
- ROUGE-L (text) is a mean over examples: the same bootstrap with equal weights.
- the share of the teacher's quality is a ratio of two such figures on the same examples: a paired
  bootstrap of the ratio.

The bootstrap is seeded, so the same stored rows give the same interval every time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from evaluations.units import DASH

RESAMPLES = 2000
SEED = 20240611
CELLS_PER_CHUNK = 2_000_000  # resamples x examples held in memory at once
LOW_PERCENTILE, HIGH_PERCENTILE = 2.5, 97.5


@dataclass(frozen=True)
class Interval:
    """A figure with its own 95 % interval: ``score`` (0..1, three decimals) or ``percent``."""

    value: float
    low: float
    high: float
    n: int
    how: str  # "Wilson" | "bootstrap"
    scale: Literal["score", "percent"] = "score"

    def _fmt(self, value: float) -> str:
        return f"{value:.3f}" if self.scale == "score" else f"{value:.0f}"

    @property
    def value_shown(self) -> str:
        return self._fmt(self.value) + (" %" if self.scale == "percent" else "")

    @property
    def range_shown(self) -> str:
        unit = " %" if self.scale == "percent" else ""
        return f"{self._fmt(self.low)}{DASH}{self._fmt(self.high)}{unit}"

    @property
    def shown(self) -> str:
        """E.g. "0.705 (95 % interval 0.652 to 0.757)", with an en dash."""
        return f"{self.value_shown} (95 % interval {self.range_shown})"


def from_rate(rate: dict[str, float], *, scale: Literal["score", "percent"]) -> Interval:
    """A stored Wilson rate ({k, n, value, low, high}) as an Interval."""
    factor = 100.0 if scale == "percent" else 1.0
    return Interval(
        value=factor * rate["value"],
        low=factor * rate["low"],
        high=factor * rate["high"],
        n=int(rate["n"]),
        how="Wilson",
        scale=scale,
    )


def bootstrap_ratio(
    numerators: Sequence[float],
    denominators: Sequence[float],
    *,
    factor: float = 1.0,
    scale: Literal["score", "percent"] = "score",
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> Interval | None:
    """factor x sum(numerators) / sum(denominators), with a percentile bootstrap over the rows
    (rows resampled with replacement; a resample whose denominator is 0 is left out). None when
    there are no rows or the denominator is 0."""
    import numpy as np

    num = np.asarray(numerators, dtype=float)
    den = np.asarray(denominators, dtype=float)
    n = len(num)
    if n == 0 or len(den) != n or den.sum() == 0:
        return None
    rng = np.random.default_rng(seed)
    chunk = max(1, CELLS_PER_CHUNK // n)
    stats: list[np.ndarray] = []
    left = resamples
    while left > 0:
        rows = rng.integers(0, n, size=(min(chunk, left), n))
        top, bottom = num[rows].sum(axis=1), den[rows].sum(axis=1)
        stats.append(top[bottom > 0] / bottom[bottom > 0])
        left -= len(rows)
    values = np.concatenate(stats) * factor
    low, high = (
        (
            float(np.percentile(values, LOW_PERCENTILE)),
            float(np.percentile(values, HIGH_PERCENTILE)),
        )
        if len(values)
        else (0.0, 0.0)
    )
    return Interval(
        value=factor * float(num.sum() / den.sum()),
        low=low,
        high=high,
        n=n,
        how="bootstrap",
        scale=scale,
    )
