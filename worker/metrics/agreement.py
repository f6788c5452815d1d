"""Agreement between two candidates: the share of inputs with the same canonical output."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from worker.metrics.rates import Rate, same_length, wilson_rate
from worker.taskspec import TaskSpec, canonical_output, parse_output


@dataclass(frozen=True)
class Agreement:
    """Inputs on which two candidates gave the same canonical output."""

    agree: int
    n: int
    rate: Rate


def _canonical_or_none(spec: TaskSpec, raw: str | None) -> str | None:
    parsed = parse_output(spec, raw or "")
    if parsed.value is None:
        return None
    return canonical_output(spec, parsed.value)


def agreement(spec: TaskSpec, outputs_a: Sequence[str], outputs_b: Sequence[str]) -> Agreement:
    """Percent of inputs where both candidates' parsed outputs have the same canonical form.

    An unparseable output agrees with nothing (two garbled answers are not agreement). For a
    json task, a value that parses but breaks the schema still counts by its canonical form.
    """
    same_length(outputs_a, outputs_b, "outputs_a", "outputs_b")
    agree = 0
    for a, b in zip(outputs_a, outputs_b, strict=True):
        ca = _canonical_or_none(spec, a)
        if ca is not None and ca == _canonical_or_none(spec, b):
            agree += 1
    n = len(outputs_a)
    return Agreement(agree=agree, n=n, rate=wilson_rate(agree, n))
