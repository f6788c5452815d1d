"""How long a job takes on a worker, from the throughput measured on earlier runs there.

A measurement is one finished run's rate (training samples/s, evaluation examples/s) with its
fixed cost (loading, saving), the hardware it ran on (jobs.workers.Hardware) and the model's
parameter count. An estimate takes the last MEASURED_RUNS runs on the same hardware with a
model of similar size (rates scaled by the size ratio); with none, the caller's first-run rate
per CPU core, and the estimate says it is one and where that rate comes from.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from jobs.workers import Hardware

#: An estimate is taken from at most this many of the latest matching runs.
MEASURED_RUNS = 5
#: A run on a model within this factor of the size asked about counts as a measurement of it.
SIMILAR_SIZE = 1.5


@dataclass(frozen=True)
class Measurement:
    hardware_key: str
    parameters: int | None
    per_s: float  # samples (training) or examples (evaluation) per second
    overhead_s: float = 0.0  # what the run spent besides (loading, saving, timed requests)


@dataclass(frozen=True)
class FirstRunRate:
    """A stated rate for hardware nothing was measured on: per CPU core, for a model of
    ``reference_parameters`` (slower in proportion to size), and where it comes from."""

    per_core_per_s: float
    reference_parameters: int
    overhead_s: float
    basis: str


@dataclass(frozen=True)
class Estimate:
    seconds: float
    hardware: Hardware
    runs: int  # measured runs it comes from; 0: a first-run estimate
    basis: str = ""  # a first-run estimate: where its rate comes from

    @property
    def first_run(self) -> bool:
        return self.runs == 0

    @property
    def about(self) -> str:
        return about(self.seconds)

    @property
    def source(self) -> str:
        if self.first_run:
            return f"first-run estimate: nothing measured on {self.hardware.describe()} yet"
        runs = f"{self.runs} run{'s' if self.runs != 1 else ''}"
        return f"measured on the last {runs}"

    def __str__(self) -> str:
        return f"{self.about} on {self.hardware.describe()} ({self.source})"


def about(seconds: float) -> str:
    """A duration as a rough figure: "under a minute", "about 12 minutes", "about 3 h 10 min"."""
    minutes = round(seconds / 60)
    if minutes < 1:
        return "under a minute"
    if minutes < 90:
        return f"about {minutes} minute{'s' if minutes != 1 else ''}"
    hours, rest = divmod(minutes, 60)
    return f"about {hours} h {rest:02d} min"


def similar_size(measured: int | None, asked: int | None) -> bool:
    if measured is None or asked is None:
        return measured is None and asked is None
    return max(measured, asked) / max(min(measured, asked), 1) <= SIMILAR_SIZE


def estimate(
    *,
    items: float,
    hardware: Hardware,
    parameters: int | None,
    measurements: Iterable[Measurement],
    first_run: FirstRunRate | None,
) -> Estimate | None:
    """``items`` (samples, examples) on ``hardware`` with a model of ``parameters``.
    ``measurements`` come newest first. None: nothing measured and no first-run rate applies
    (e.g. the model's size is unknown)."""
    matching = [
        m
        for m in measurements
        if m.hardware_key == hardware.key and m.per_s > 0 and similar_size(m.parameters, parameters)
    ][:MEASURED_RUNS]
    if matching:
        rates = [
            m.per_s * (m.parameters / parameters) if m.parameters and parameters else m.per_s
            for m in matching
        ]
        per_s = statistics.median(rates)
        overhead = statistics.median(m.overhead_s for m in matching)
        return Estimate(seconds=overhead + items / per_s, hardware=hardware, runs=len(matching))
    if first_run is None or not parameters:
        return None
    per_s = (
        first_run.per_core_per_s
        * max(hardware.cpu_cores, 1)
        * first_run.reference_parameters
        / parameters
    )
    return Estimate(
        seconds=first_run.overhead_s + items / per_s,
        hardware=hardware,
        runs=0,
        basis=first_run.basis,
    )
