"""Population checks: flags that need all of a project's outputs (length outliers, the same
output repeated for many inputs), run in a batch whenever the population changes enough."""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from worker.checks.flags import LENGTH_OUTLIER, REPEATED_OUTPUT, Flag
from worker.checks.outputs import CheckConfig, OutputToCheck
from worker.checks.per_output import check_output
from worker.checks.text import comparable_value, normalise_text, shorten
from worker.taskspec import TaskSpec


def check_population(
    spec: TaskSpec, outputs: Sequence[OutputToCheck], config: CheckConfig | None = None
) -> dict[str | int, list[Flag]]:
    """Flags that need all of a project's outputs: length outliers and repeated outputs.

    Returns only the outputs that got a flag, keyed by ``output_id``."""
    config = config or CheckConfig()
    flags: dict[str | int, list[Flag]] = defaultdict(list)
    for output_id, flag in _length_outliers(spec, outputs, config):
        flags[output_id].append(flag)
    for output_id, flag in _repeated_outputs(spec, outputs, config):
        flags[output_id].append(flag)
    return dict(flags)


def robust_z_scores(values: Sequence[float], min_mad: float = 0.0) -> list[float]:
    """Modified z-scores ``0.6745 (x - median) / MAD``, with MAD raised to at least ``min_mad``.

    When MAD is 0 (more than half the values equal) and no floor is given, the mean absolute
    deviation stands in (scaled by 1.2533 to match a normal's sigma); when that is 0 too, every
    value is equal and every score is 0."""
    if not values:
        return []
    med = statistics.median(values)
    deviations = [abs(v - med) for v in values]
    mad = max(statistics.median(deviations), min_mad)
    if mad > 0:
        return [0.6745 * (v - med) / mad for v in values]
    mean_ad = statistics.fmean(deviations)
    if mean_ad > 0:
        return [(v - med) / (1.253314 * mean_ad) for v in values]
    return [0.0 for _ in values]


def _length_outliers(
    spec: TaskSpec, outputs: Sequence[OutputToCheck], config: CheckConfig
) -> Iterable[tuple[str | int, Flag]]:
    # A label's length is the label's, not the teacher's; a wrong label is flagged elsewhere.
    if spec.output_kind == "label":
        return
    measured = [o for o in outputs if o.raw.strip()]
    if len(measured) < config.length_min_population:
        return
    lengths = [len(o.raw.strip()) for o in measured]
    median = statistics.median(lengths)
    # Outputs of a template-like task can share one length (MAD 0); a floor of 5 % of the
    # median (at least one character) keeps a few characters' difference from looking extreme.
    scores = robust_z_scores(lengths, min_mad=max(1.0, 0.05 * median))
    for output, length, z in zip(measured, lengths, scores, strict=True):
        if abs(z) > config.length_z:
            side = "longer" if z > 0 else "shorter"
            yield (
                output.output_id,
                Flag(
                    LENGTH_OUTLIER,
                    f"much {side} than usual: {length} characters against a median of "
                    f"{median:g} (robust z = {z:.1f})",
                    round(z, 4),
                ),
            )


def finite_output_space(schema: Mapping[str, Any] | None) -> bool:
    """True when a JSON Schema only admits finitely many values (enums, consts, booleans,
    objects of those): its outputs repeat by design, like labels."""
    if not isinstance(schema, Mapping):
        return False
    if "enum" in schema or "const" in schema:
        return True
    kind = schema.get("type")
    if kind == "boolean" or kind == "null":
        return True
    if kind == "object":
        props = schema.get("properties")
        if not isinstance(props, Mapping) or not props:
            return False
        if schema.get("additionalProperties", True) is not False:
            return False
        return all(finite_output_space(p) for p in props.values())
    return False


def _repeated_outputs(
    spec: TaskSpec, outputs: Sequence[OutputToCheck], config: CheckConfig
) -> Iterable[tuple[str | int, Flag]]:
    if spec.output_kind == "label":
        return
    if spec.output_kind == "json" and finite_output_space(spec.json_schema):
        return
    by_value: dict[str, list[OutputToCheck]] = defaultdict(list)
    for output in outputs:
        key = comparable_value(spec, output.raw) if spec.output_kind == "json" else None
        if key is None:
            key = normalise_text(output.raw)
        if key:
            by_value[key].append(output)
    for group in by_value.values():
        if len(group) < config.repeat_min_inputs:
            continue
        inputs = {_input_key(o) for o in group}
        if len(inputs) < config.repeat_min_inputs:
            continue
        for output in group:
            yield (
                output.output_id,
                Flag(
                    REPEATED_OUTPUT,
                    f"the same output was given for {len(inputs)} different inputs: "
                    f"{shorten(output.raw)!r}",
                    float(len(inputs)),
                ),
            )


def _input_key(output: OutputToCheck) -> str:
    if output.input_id is not None:
        return f"input:{output.input_id!r}"
    if output.inputs is None:
        return f"id:{output.output_id!r}"
    return json.dumps(output.inputs, sort_keys=True, default=str, ensure_ascii=False)


def run_checks(
    spec: TaskSpec, outputs: Sequence[OutputToCheck], config: CheckConfig | None = None
) -> dict[str | int, list[Flag]]:
    """Per-output and population flags for every output (an empty list when unflagged)."""
    config = config or CheckConfig()
    population = check_population(spec, outputs, config)
    return {
        o.output_id: check_output(spec, o, config) + population.get(o.output_id, [])
        for o in outputs
    }
