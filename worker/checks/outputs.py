"""What the checks are given: one teacher output (:class:`OutputToCheck`) and the thresholds
(:class:`CheckConfig`)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class OutputToCheck:
    """What the checks know about one teacher output.

    ``input_id`` (or, failing that, ``inputs``) identifies the input row: population checks
    count *different* inputs, and without either every output counts as its own input. ``samples`` are the extra self-consistency samples
    for the same input (the output itself is counted as one more). ``confidence`` is a
    probability in [0, 1]; if it is None and ``token_logprobs`` are given, the confidence is
    their geometric-mean probability, ``exp(mean(logprobs))``.
    """

    output_id: str | int
    raw: str
    inputs: Mapping[str, Any] | None = None
    input_id: str | int | None = None
    samples: tuple[str, ...] = ()
    reference: str | None = None
    token_logprobs: tuple[float, ...] | None = None
    confidence: float | None = None
    judge_score: float | None = None  # normalised 0..1, from judge_output, for rules

    @property
    def effective_confidence(self) -> float | None:
        if self.confidence is not None:
            return self.confidence
        if self.token_logprobs:
            return confidence_from_logprobs(self.token_logprobs)
        return None


def confidence_from_logprobs(token_logprobs: Sequence[float]) -> float | None:
    """Geometric-mean token probability, exp(mean logprob), in [0, 1]; None when there are none.

    The geometric mean does not shrink with length the way the joint probability does, so one
    threshold works for a one-token label and a paragraph alike."""
    values = [float(v) for v in token_logprobs if v is not None and math.isfinite(float(v))]
    if not values:
        return None
    return min(1.0, math.exp(statistics.fmean(values)))


@dataclass(frozen=True)
class CheckConfig:
    """Thresholds, with the reasoning behind each default.

    * ``length_z``: Iglewicz & Hoaglin's modified z-score ``0.6745 * (x - median) / MAD``;
      above 3.5 is their recommended outlier cut-off. Needs ``length_min_population`` outputs.
    * ``repeat_min_inputs``: an identical (normalised) output for this many *different* inputs is
      flagged, for json and text tasks. Label tasks repeat by design and are never flagged, nor
      are json tasks whose schema only allows a finite set of values (enums/booleans: a label in
      disguise).
    * ``consistency_min_share``: the majority answer among the output and its samples must hold
      at least this share (0.6: two of three, three of five). For text, "agree" means token F1 to
      the output of at least ``text_agreement_f1``.
    * ``reference_min_f1``: text outputs whose token F1 with the human reference is below this
      are flagged; label and json outputs must equal the reference (json: after canonicalising).
    * ``min_confidence``: below this (geometric-mean token probability) is low confidence.
    """

    length_z: float = 3.5
    length_min_population: int = 20
    repeat_min_inputs: int = 3
    consistency_min_share: float = 0.6
    text_agreement_f1: float = 0.5
    reference_min_f1: float = 0.5
    min_confidence: float = 0.5
