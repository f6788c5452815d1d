"""Per-output checks: a pure function of one output (plus its self-consistency samples, human
reference and logprobs), run as each output arrives."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from worker.checks.flags import (
    EMPTY,
    LABEL_OUTSIDE_SET,
    LOW_CONFIDENCE,
    REFERENCE_DISAGREEMENT,
    REFUSAL,
    SCHEMA_INVALID,
    SELF_INCONSISTENT,
    UNPARSEABLE,
    Flag,
)
from worker.checks.outputs import CheckConfig, OutputToCheck
from worker.checks.text import comparable_value, normalise_text, refusal_phrase, shorten, token_f1
from worker.taskspec import ParsedOutput, TaskSpec, canonical_output, parse_output


def check_output(
    spec: TaskSpec, output: OutputToCheck, config: CheckConfig | None = None
) -> list[Flag]:
    """All per-output flags for one output, in a stable order."""
    config = config or CheckConfig()
    flags: list[Flag] = []
    parsed = parse_output(spec, output.raw)
    flags.extend(_shape_flags(spec, output.raw, parsed))
    if output.samples:
        flag = _consistency_flag(spec, output, config)
        if flag:
            flags.append(flag)
    if output.reference is not None and output.reference.strip():
        flag = _reference_flag(spec, output.raw, parsed, output.reference, config)
        if flag:
            flags.append(flag)
    confidence = output.effective_confidence
    if confidence is not None and confidence < config.min_confidence:
        flags.append(
            Flag(
                LOW_CONFIDENCE,
                f"confidence {confidence:.2f} is below {config.min_confidence:.2f}",
                round(confidence, 6),
            )
        )
    return flags


def _shape_flags(spec: TaskSpec, raw: str, parsed: ParsedOutput) -> list[Flag]:
    text = (raw or "").strip()
    if not text:
        return [Flag(EMPTY, "the output is empty")]
    flags: list[Flag] = []
    if spec.output_kind == "label" and parsed.value is None:
        flags.append(
            Flag(
                LABEL_OUTSIDE_SET,
                f"{shorten(text)!r} is not one of the {len(spec.label_set)} labels",
            )
        )
    elif spec.output_kind == "json" and parsed.value is None:
        flags.append(Flag(UNPARSEABLE, parsed.error))
    elif spec.output_kind == "json" and not parsed.ok:
        flags.append(Flag(SCHEMA_INVALID, parsed.error))
    # A label that parsed is an answer, whatever its words; anything else may be a refusal.
    if not (spec.output_kind == "label" and parsed.ok):
        text_for_refusal = text
        if spec.output_kind == "json" and parsed.value is not None:
            # Only look at JSON string values that lead the object: a refusal wrapped in JSON
            # ({"error": "I'm sorry, I can't..."}) still starts the first string value.
            text_for_refusal = next(iter(_iter_strings(parsed.value)), "")
        phrase = refusal_phrase(text_for_refusal)
        if phrase:
            flags.append(Flag(REFUSAL, f"reads like a refusal ({phrase!r}): {shorten(text)!r}"))
    return flags


def _iter_strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _iter_strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _iter_strings(v)


def _consistency_flag(spec: TaskSpec, output: OutputToCheck, config: CheckConfig) -> Flag | None:
    answers = [output.raw, *output.samples]
    n = len(answers)
    if spec.output_kind == "text":
        # Free text never repeats verbatim; count samples that say roughly the same thing.
        agreeing = 1 + sum(
            1 for s in output.samples if token_f1(output.raw, s) >= config.text_agreement_f1
        )
        share = agreeing / n
        if share < config.consistency_min_share:
            return Flag(
                SELF_INCONSISTENT,
                f"only {agreeing} of {n} samples agree with this output",
                round(share, 6),
            )
        return None
    keys = [comparable_value(spec, a) for a in answers]
    counts = Counter(k if k is not None else f"\x00unparseable{i}" for i, k in enumerate(keys))
    top_key, top = max(counts.items(), key=lambda kv: (kv[1], kv[0] == keys[0]))
    share = top / n
    if share < config.consistency_min_share:
        return Flag(
            SELF_INCONSISTENT,
            f"samples disagree: the commonest answer has only {top} of {n}",
            round(share, 6),
        )
    if keys[0] != top_key:
        shown = shorten(top_key)
        return Flag(
            SELF_INCONSISTENT,
            f"this output is not the majority answer ({top} of {n} samples say {shown!r})",
            round(share, 6),
        )
    return None


def _reference_flag(
    spec: TaskSpec, raw: str, parsed: ParsedOutput, reference: str, config: CheckConfig
) -> Flag | None:
    ref_shown = shorten(reference)
    if spec.output_kind == "text":
        f1 = token_f1(raw, reference)
        if f1 < config.reference_min_f1:
            return Flag(
                REFERENCE_DISAGREEMENT,
                f"token F1 with the human reference is {f1:.2f} (below {config.reference_min_f1:.2f})",
                round(f1, 6),
            )
        return None
    mine = comparable_value(spec, raw)
    ref_parsed = parse_output(spec, reference)
    if spec.output_kind == "label":
        theirs = ref_parsed.value if ref_parsed.ok else normalise_text(reference)
        if mine != theirs:
            return Flag(REFERENCE_DISAGREEMENT, f"the human reference says {ref_shown!r}", 0.0)
        return None
    # json: compare canonical values; the score is the share of leaf fields that match.
    if ref_parsed.value is None:
        return None  # a reference that is not JSON cannot be compared; nothing to say about ours
    if parsed.value is None:
        return Flag(
            REFERENCE_DISAGREEMENT, "not valid JSON, so it cannot match the human reference", 0.0
        )
    if canonical_output(spec, parsed.value) == canonical_output(spec, ref_parsed.value):
        return None
    mine_leaves = _leaves(parsed.value)
    ref_leaves = _leaves(ref_parsed.value)
    paths = sorted(set(mine_leaves) | set(ref_leaves))
    differing = [p for p in paths if mine_leaves.get(p, _MISSING) != ref_leaves.get(p, _MISSING)]
    share = 1 - len(differing) / len(paths) if paths else 0.0
    shown = ", ".join(p or "(root)" for p in differing[:3]) + (" …" if len(differing) > 3 else "")
    return Flag(
        REFERENCE_DISAGREEMENT,
        f"differs from the human reference at {shown}",
        round(share, 6),
    )


_MISSING = object()


def _leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_leaves(v, f"{prefix}/{k}" if prefix else str(k)))
        return out
    if isinstance(value, list):
        out = {}
        for i, v in enumerate(value):
            out.update(_leaves(v, f"{prefix}/{i}" if prefix else str(i)))
        return out or {prefix: []}
    return {prefix: value}
