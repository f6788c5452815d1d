"""What local inference returns: generations, classifications, label scores, and the latency
percentiles computed from them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["Classification", "Generation", "LabelScores", "latency_percentiles"]


@dataclass
class Generation:
    outputs: list[str]  # decoded answer per prompt, stripped, in the prompts' order
    token_ids: list[list[int]]  # the answer's token ids (without the end-of-turn token)
    seconds: float  # wall time of the whole call
    latencies: list[float] = field(default_factory=list)  # per request (sequential only)
    reruns: int = 0  # rows recomputed one at a time because of a near-tie

    @property
    def examples_per_second(self) -> float:
        return len(self.outputs) / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Classification(Generation):
    fallbacks: int = 0  # rows answered by generation (unconstrained mode only)
    # Per row: free (unconstrained) greedy decoding provably gives this same label.
    free_greedy_verified: list[bool] = field(default_factory=list)
    # Per row: log P(the answer's tokens, then end of turn | prompt), whole-vocabulary softmax
    # at every step; exp() of it is the serving engine's confidence for the same answer.
    logprobs: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class LabelScores:
    labels: list[str]
    log_likelihoods: list[list[float]]  # [prompt][label], natural log
    best: list[str]  # the most likely whole label per prompt


def latency_percentiles(latencies: Sequence[float]) -> dict[str, float]:
    """p50 and p95 in milliseconds (numpy's linear interpolation)."""
    import numpy as np

    if not latencies:
        return {"p50_ms": 0.0, "p95_ms": 0.0}
    arr = np.asarray(latencies, dtype=float) * 1000.0
    return {"p50_ms": float(np.percentile(arr, 50)), "p95_ms": float(np.percentile(arr, 95))}
