"""Synthetic inputs: the prompt that asks a teacher for new inputs in the style of seed rows, the
parser that turns its answer into input rows (or says why it cannot), and the deduplication of
the new rows against the project's inputs and each other (exact, then near duplicates by the
same token-set Jaccard the freeze groups with, ``worker.datasets.near_duplicates``).

Pure and Django-free: the teachers app sends the requests through its one call path and writes
the rows."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from worker.datasets.near_duplicates import input_text, near_duplicate_pairs
from worker.taskspec import TaskSpec

__all__ = [
    "MAX_FIELD_CHARS",
    "MAX_SEEDS_PER_PROMPT",
    "SYSTEM_PROMPT",
    "Deduplicated",
    "GenerationParseError",
    "ParsedAnswer",
    "build_generation_messages",
    "deduplicate",
    "normalised_text",
    "parse_generated_inputs",
]

SYSTEM_PROMPT = (
    "You write new, realistic example inputs for a task, to train a smaller model on. "
    "Answer with JSON only."
)
# Seed rows shown in one prompt: enough for the style, few enough to keep the prompt short.
MAX_SEEDS_PER_PROMPT = 8
# A generated field longer than this is not an input in the seeds' style.
MAX_FIELD_CHARS = 5000
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)
_SPACE = re.compile(r"\s+")


class GenerationParseError(ValueError):
    """A teacher's answer that holds no input rows; ``message`` says why (for the job page)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class ParsedAnswer:
    rows: list[dict[str, str]]
    # Items of the answer that were left out, with why ("item 3: no value for field text").
    rejected: list[str] = field(default_factory=list)


def build_generation_messages(
    spec: TaskSpec,
    *,
    seeds: Sequence[Mapping[str, Any]],
    count: int,
    topic: str = "",
    label: str = "",
    batch_number: int = 1,
) -> list[dict[str, str]]:
    """The conversation asking for ``count`` new inputs like ``seeds`` (optionally about
    ``topic``, or ones whose right answer is ``label``). ``batch_number`` makes each request of
    a job distinct (and tells the teacher to vary), so no two calls ask the same thing."""
    fields = list(spec.input_fields)
    examples = "\n".join(
        json.dumps({f: str(seed.get(f, "")) for f in fields}, ensure_ascii=False)
        for seed in seeds[:MAX_SEEDS_PER_PROMPT]
    )
    lines = [
        "A model will be given inputs with these fields: " + ", ".join(fields) + ".",
        "Its instruction is:",
        spec.instruction_template.strip(),
        "",
        "Real inputs, one JSON object per line:",
        examples,
        "",
        f"Write {count} new inputs in the same style, language and length. Each must be "
        "different from the examples and from each other (batch "
        f"{batch_number}: vary the wording and the situations).",
    ]
    if topic:
        lines.append(f"Topic: {topic}.")
    if label:
        lines.append(f"Write inputs whose correct answer is the label {label!r}.")
    lines.append(
        'Answer with one JSON object and nothing else: {"inputs": [{'
        + ", ".join(f'"{f}": "..."' for f in fields)
        + "}, ...]}"
    )
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "\n".join(lines)},
    ]


def parse_generated_inputs(raw_text: str, input_fields: Sequence[str]) -> ParsedAnswer:
    """The input rows in a teacher's answer: ``{"inputs": [{field: text, ...}, ...]}`` (or the
    bare list), a Markdown code fence allowed. Items missing a field, with a non-text or empty
    value, or too long are left out with the reason; keys that are not input fields are
    dropped. Raises GenerationParseError when the answer is not that JSON at all."""
    text = raw_text.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    try:
        data = json.loads(text)
    except ValueError:
        shown = raw_text.strip()[:80] or "(empty)"
        raise GenerationParseError(f"the answer is not JSON: {shown!r}") from None
    items = data.get("inputs") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise GenerationParseError('the answer has no "inputs" list')
    rows: list[dict[str, str]] = []
    rejected: list[str] = []
    for number, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            rejected.append(f"item {number}: not an object")
            continue
        problem = ""
        row: dict[str, str] = {}
        for name in input_fields:
            value = item.get(name)
            if not isinstance(value, str) or not value.strip():
                problem = f"item {number}: no text for field {name}"
                break
            if len(value) > MAX_FIELD_CHARS:
                problem = f"item {number}: field {name} is over {MAX_FIELD_CHARS} characters"
                break
            row[name] = value.strip()
        if problem:
            rejected.append(problem)
        else:
            rows.append(row)
    if not rows and not rejected:
        raise GenerationParseError('the answer\'s "inputs" list is empty')
    return ParsedAnswer(rows=rows, rejected=rejected)


def normalised_text(data: Mapping[str, Any], input_fields: Sequence[str]) -> str:
    """The text duplicates are compared on: the fields in order, lower-cased, spaces collapsed."""
    return _SPACE.sub(" ", input_text(data, input_fields).lower()).strip()


@dataclass(frozen=True)
class Deduplicated:
    kept: list[dict[str, str]]
    exact_duplicates: int
    near_duplicates: int


def deduplicate(
    candidates: Sequence[Mapping[str, str]],
    existing_texts: Sequence[str],
    input_fields: Sequence[str],
    *,
    threshold: float = 0.8,
) -> Deduplicated:
    """The candidates that are neither an exact nor a near duplicate (token-set Jaccard ≥
    ``threshold``) of an existing input (``existing_texts``: ``normalised_text`` of each) or
    of an earlier candidate (the first of a near-duplicate pair is kept)."""
    seen = set(existing_texts)
    unique: list[dict[str, str]] = []
    texts: list[str] = []
    exact = 0
    for row in candidates:
        text = normalised_text(row, input_fields)
        if text in seen:
            exact += 1
            continue
        seen.add(text)
        unique.append(dict(row))
        texts.append(text)
    n_existing = len(existing_texts)
    pairs = near_duplicate_pairs([*existing_texts, *texts], threshold)
    dropped: set[int] = set()
    # Pairs come as (i, j) with i < j: a candidate j is dropped when it is close to an existing
    # input or to an earlier candidate that is itself kept.
    for i, j, _ in sorted(pairs, key=lambda p: (p[1], p[0])):
        if j < n_existing:
            continue
        if i < n_existing or (i - n_existing) not in dropped:
            dropped.add(j - n_existing)
    kept = [row for k, row in enumerate(unique) if k not in dropped]
    return Deduplicated(kept=kept, exact_duplicates=exact, near_duplicates=len(dropped))
