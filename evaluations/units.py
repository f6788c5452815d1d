"""Figures for reading: each in the unit that fits its size, so nobody reads minute-long latencies
in milliseconds, a slow machine's throughput as "0.0/s", or a negative saving as "$-452.80"."""

from __future__ import annotations

from decimal import Decimal

from worker.economics import dollars

DASH = "\u2013"  # between an interval's ends: "79\u201392 %"
TIMES = "\u00d7"
MS_PER_S = 1000.0
S_PER_MIN = 60.0
MIN_PER_H = 60.0


def _sig(value: float, digits: int = 3) -> str:
    """``value`` to ``digits`` significant figures, without an exponent: 0.0123, 1.23, 123."""
    if value == 0:
        return "0"
    text = f"{value:.{digits}g}"
    if "e" in text:
        return f"{value:,.0f}"
    return text


def duration(ms: float) -> str:
    """A duration measured in milliseconds: ms below 1 s, s below 60 s, min below 60 min, h."""
    if ms < MS_PER_S:
        return f"{ms:.0f} ms"
    seconds = ms / MS_PER_S
    if seconds < S_PER_MIN:
        return f"{_sig(seconds)} s"
    minutes = seconds / S_PER_MIN
    if minutes < MIN_PER_H:
        return f"{_sig(minutes)} min"
    return f"{_sig(minutes / MIN_PER_H)} h"


def throughput(per_second: float) -> str:
    """Requests a second, three significant figures; per minute or per hour when below 1/s."""
    if per_second >= 1:
        return f"{_sig(per_second)} requests/s"
    per_minute = per_second * 60
    if per_minute >= 1:
        return f"{_sig(per_minute)} requests/min"
    return f"{_sig(per_minute * 60)} requests/h"


def savings(monthly: Decimal) -> str:
    """A month's saving as words when it is not one: "$11.50", or "costs $452.80 more"."""
    if monthly < 0:
        return f"costs {dollars(-monthly)} more"
    return dollars(monthly)


def savings_sentence(monthly: Decimal) -> str:
    """The same inside a sentence: "saving $11.50 a month" / "costing $452.80 more a month"."""
    if monthly < 0:
        return f"the student costs {dollars(-monthly)} more a month than the teacher"
    return f"saving {dollars(monthly)} a month"
