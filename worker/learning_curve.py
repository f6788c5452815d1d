"""How quality grows with training data: a saturating power law fitted to measured points, and
what it forecasts, with a bootstrap over the test examples for the uncertainty.

The model is the usual learning-curve form (e.g. Hestness et al. 2017; Figueroa et al. 2012):

    quality(n) = a - b * n ** (-c)      a <= ceiling, b >= 0, c > 0

``a`` is where more data levels off, ``b`` and ``c`` how fast it gets there. For a given ``c``
the model is linear in (a, b), so the fit is an exact least-squares solve on a grid of exponents
(no optimiser, no starting point, the same answer every time). Three points are needed for three
parameters; with exactly three the curve passes through them, so its interval reflects only the
noise of the test set, not whether the power-law form is right: callers say so.

Uncertainty: a paired bootstrap over test examples. Every resample draws the same examples for
every subset's student (and the teacher), refits, and forecasts again; percentiles of those
forecasts are the interval. Everything is a function of the stored per-example scores and a
seed, so anyone can recompute it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MIN_POINTS",
    "CurveFit",
    "CurveForecast",
    "fit_power_law",
    "forecast",
]

MIN_POINTS = 3  # three parameters
# Exponents tried: measured learning curves of neural models sit around 0.05-1 (Hestness et al.
# 2017); steeper than 2 would be a curve that is flat by the second point.
_EXPONENTS = tuple(0.05 * 1.025**i for i in range(150))  # 0.05 … ~2.0
BOOTSTRAP_RESAMPLES = 1000


@dataclass(frozen=True)
class CurveFit:
    """quality(n) = a - b * n**-c, and how far the points are from it (root-mean-square)."""

    a: float
    b: float
    c: float
    rmse: float

    def predict(self, n: float) -> float:
        return float(self.a - self.b * float(n) ** (-self.c))

    def examples_for(self, quality: float) -> float | None:
        """Training examples at which the curve reaches ``quality``; None where it never does
        (at or above the level it settles at)."""
        if quality >= self.a:
            return None
        if self.b <= 0:
            return 1.0  # flat: already there
        return float((self.b / (self.a - quality)) ** (1.0 / self.c))

    def to_json(self) -> dict[str, float]:
        return {"a": self.a, "b": self.b, "c": self.c, "rmse": self.rmse}


def _fit_arrays(ns: Any, ys: Any, ceiling: float) -> tuple[Any, Any, Any, Any]:
    """Vectorised fit: ``ys`` is (R, K) — R resamples of K points at sizes ``ns`` (K,).
    Returns (a, b, c, sse), each (R,)."""
    import numpy as np

    cs = np.asarray(_EXPONENTS)  # (C,)
    x = np.power(np.asarray(ns, dtype=float)[None, :], -cs[:, None])  # (C, K)
    y = np.asarray(ys, dtype=float)  # (R, K)
    xm = x.mean(axis=1)  # (C,)
    ym = y.mean(axis=1)  # (R,)
    sxx = ((x - xm[:, None]) ** 2).sum(axis=1)  # (C,)
    sxy = np.einsum("ck,rk->rc", x - xm[:, None], y)  # (R, C)
    slope = sxy / np.where(sxx > 0, sxx, np.inf)[None, :]  # y = a + slope*x → b = -slope
    b = np.maximum(-slope, 0.0)
    a = ym[:, None] + b * xm[None, :]
    # Above the ceiling (e.g. accuracy 1): pin a there and refit b alone, through it.
    over = a > ceiling
    if over.any():
        gap = ceiling - y  # (R, K) = b * x
        b_pinned = np.einsum("ck,rk->rc", x, gap) / (x**2).sum(axis=1)[None, :]
        b = np.where(over, np.maximum(b_pinned, 0.0), b)
        a = np.where(over, ceiling, a)
    pred = a[:, :, None] - b[:, :, None] * x[None, :, :]  # (R, C, K)
    sse = ((pred - y[:, None, :]) ** 2).sum(axis=2)  # (R, C)
    best = sse.argmin(axis=1)
    rows = np.arange(y.shape[0])
    return a[rows, best], b[rows, best], cs[best], sse[rows, best]


def fit_power_law(
    ns: Sequence[float], quality: Sequence[float], *, ceiling: float = 1.0
) -> CurveFit:
    """The least-squares curve through (n, quality) points. Raises ValueError with fewer than
    MIN_POINTS distinct sizes."""
    if len(ns) != len(quality):
        raise ValueError("one quality per training size")
    if len(set(ns)) < MIN_POINTS:
        raise ValueError(f"a curve needs at least {MIN_POINTS} different training sizes")
    a, b, c, sse = _fit_arrays(ns, [list(quality)], ceiling)
    return CurveFit(
        a=float(a[0]), b=float(b[0]), c=float(c[0]), rmse=math.sqrt(float(sse[0]) / len(ns))
    )


@dataclass
class CurveForecast:
    """The fit on the measured points and the bootstrap's view of what it forecasts.

    Qualities are shares of the teacher's quality (1.0 = the teacher's) when a teacher score
    was given, else the metric itself."""

    fit: CurveFit
    sizes: list[int]
    measured: list[float]
    resamples: int
    seed: int
    # Bootstrap fits (a, b, c) of each resample, for intervals at any size or target.
    boot_a: list[float] = field(default_factory=list)
    boot_b: list[float] = field(default_factory=list)
    boot_c: list[float] = field(default_factory=list)

    def predict_interval(self, n: float) -> tuple[float, float, float]:
        """(forecast, low, high) at ``n`` training examples (95 % percentile interval)."""
        import numpy as np

        boots = np.asarray(self.boot_a) - np.asarray(self.boot_b) * float(n) ** (
            -np.asarray(self.boot_c)
        )
        low, high = np.percentile(boots, [2.5, 97.5]) if len(boots) else (math.nan, math.nan)
        return self.fit.predict(n), float(low), float(high)

    def plateau_interval(self) -> tuple[float, float, float]:
        """(level the curve settles at, low, high)."""
        import numpy as np

        boots = np.asarray(self.boot_a)
        low, high = np.percentile(boots, [2.5, 97.5]) if len(boots) else (math.nan, math.nan)
        return self.fit.a, float(low), float(high)

    def examples_needed(self, target: float) -> dict[str, Any]:
        """How many training examples the target needs: the fit's answer, the share of
        resamples in which more data reaches it at all, and the 95 % interval of the size among
        those that do (None where too few do for an interval)."""
        import numpy as np

        needed = self.fit.examples_for(target)
        reach = []
        for a, b, c in zip(self.boot_a, self.boot_b, self.boot_c, strict=True):
            n = CurveFit(a, b, c, 0.0).examples_for(target)
            if n is not None:
                reach.append(n)
        share = len(reach) / len(self.boot_a) if self.boot_a else 0.0
        low = high = None
        if reach and share >= 0.8:
            low, high = (float(v) for v in np.percentile(reach, [2.5, 97.5]))
        return {"n": needed, "reachable_share": share, "low": low, "high": high}

    def to_json(self) -> dict[str, Any]:
        return {
            "fit": self.fit.to_json(),
            "sizes": self.sizes,
            "measured": self.measured,
            "resamples": self.resamples,
            "seed": self.seed,
        }


def forecast(
    sizes: Sequence[int],
    scores: Sequence[Sequence[float]],
    *,
    weights: Sequence[float] | None = None,
    teacher: Sequence[float] | None = None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> CurveForecast:
    """Fit the curve to per-example scores and bootstrap it.

    ``scores[i][j]``: the student trained on ``sizes[i]`` examples, on test example ``j`` (for
    accuracy 1.0/0.0). ``weights``: each example's weight in the metric (None: 1 each).
    ``teacher``: the teacher's per-example scores; with them quality is the share of the
    teacher's (the ceiling is then 1 / the teacher's metric, since a student can beat a teacher
    that is not perfect). Raises ValueError with fewer than MIN_POINTS sizes or no examples.
    """
    import numpy as np

    s = np.asarray(scores, dtype=float)  # (K, M)
    if s.ndim != 2 or s.shape[1] == 0:
        raise ValueError("no scored test examples")
    if s.shape[0] != len(sizes):
        raise ValueError("one row of scores per training size")
    w = np.ones(s.shape[1]) if weights is None else np.asarray(weights, dtype=float)
    t = None if teacher is None else np.asarray(teacher, dtype=float)

    def quality(idx: Any) -> Any:  # idx: (R, M) example indices → (R, K) qualities
        ww = w[idx]  # (R, M)
        total = ww.sum(axis=1)
        q = np.einsum("krm,rm->rk", s[:, idx], ww) / total[:, None]
        if t is not None:
            q = q / np.maximum((t[idx] * ww).sum(axis=1) / total, 1e-12)[:, None]
        return q

    whole = quality(np.arange(s.shape[1])[None, :])[0]
    ceiling = 1.0
    if t is not None:
        ceiling = 1.0 / max(float((t * w).sum() / w.sum()), 1e-12)
    fit = fit_power_law(list(sizes), whole.tolist(), ceiling=ceiling)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, s.shape[1], size=(resamples, s.shape[1]))
    a, b, c, _ = _fit_arrays(list(sizes), quality(idx), ceiling)
    return CurveForecast(
        fit=fit,
        sizes=[int(n) for n in sizes],
        measured=[float(v) for v in whole],
        resamples=resamples,
        seed=seed,
        boot_a=a.tolist(),
        boot_b=b.tolist(),
        boot_c=c.tolist(),
    )
