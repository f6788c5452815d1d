"""Freeze: validate and canonicalise rows, apply the real/synthetic ratio, group duplicates and
near-duplicates, assign leakage-safe splits, and hash the result.

Splits are deterministic and group-aware. Rows are grouped by their *normalised input text*
(every input field's value, in the task's field order, joined by newlines; then NFKC,
case-folded, punctuation and symbols removed, whitespace collapsed — see
:func:`worker.checks.normalise_text`), so exact and normalised duplicates always land in the same
split. Near-duplicates (token-set Jaccard ≥ ``near_duplicate_threshold`` on those normalised
words) are found with prefix-filtered set-similarity join — exact, not sampled, and far from
O(n²) because candidates only meet on their rarest words — and by default are grouped too.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from worker.checks import normalise_text
from worker.datasets.leakage import LeakageReport, leakage_report
from worker.datasets.near_duplicates import UnionFind, input_text, near_duplicate_pairs
from worker.datasets.rows import (
    FORMAT_VERSION,
    REAL_SOURCES,
    SOURCES,
    SPLITS,
    DatasetError,
    DatasetRow,
    FreezeParams,
    FrozenRow,
    RowId,
    Split,
    id_key,
)
from worker.taskspec import TaskSpec, canonical_output, parse_output


@dataclass(frozen=True)
class SkippedRow:
    row_id: RowId
    reason: str


@dataclass(frozen=True)
class DatasetStats:
    counts: dict[str, int]
    sources: dict[str, dict[str, int]]
    labels: dict[str, dict[str, int]]  # split -> label -> count (label tasks; else empty)
    length_edges: list[float]  # output length histogram, characters; len(edges) = bins + 1
    length_counts: dict[str, list[int]]  # split -> count per bin
    groups: int
    largest_group: int
    real_share: float
    dropped_for_ratio: dict[str, int]
    # Rows whose input a teacher wrote, per split (train only), and those left out by the cap.
    synthetic_inputs: dict[str, int] = field(default_factory=dict)
    dropped_synthetic_over_cap: int = 0


@dataclass(frozen=True)
class FrozenVersion:
    content_hash: str
    params: FreezeParams
    rows: list[FrozenRow]  # in canonical order (by row id)
    stats: DatasetStats
    leakage: LeakageReport
    skipped: list[SkippedRow]

    def manifest(self) -> dict[str, Any]:
        """Everything but the rows, JSON-ready: what the version record stores."""
        return {
            "format": FORMAT_VERSION,
            "content_hash": self.content_hash,
            "params": asdict(self.params),
            "stats": asdict(self.stats),
            "leakage": self.leakage.to_dict(),
            "skipped": [asdict(s) for s in self.skipped],
        }

    def split_rows(self, split: Split) -> list[FrozenRow]:
        return [row for row in self.rows if row.split == split]

    @property
    def row_ids(self) -> list[RowId]:
        return [row.row_id for row in self.rows]

    @property
    def decision_ids(self) -> list[RowId]:
        return sorted({d for row in self.rows for d in row.decision_ids}, key=id_key)


def freeze(
    spec: TaskSpec,
    rows: Iterable[DatasetRow | Sequence[Any]],
    params: FreezeParams | None = None,
) -> FrozenVersion:
    """Build a frozen version. Same rows (in any order) + same params → same hash and splits."""
    params = params or FreezeParams()
    params.validate()
    valid, skipped = _validated_rows(spec, rows, params)
    selected, dropped = _apply_ratio(valid, params)
    if not selected:
        raise DatasetError(
            "rows: nothing to freeze"
            + (
                f" ({len(skipped)} row(s) skipped as invalid)"
                if skipped
                else " (no approved outputs or reference rows)"
                if not valid
                else f" once real_ratio = {params.real_ratio:g} is applied"
            )
        )
    selected.sort(key=lambda r: id_key(r.row_id))
    layout = _layout(spec, selected, params)
    over_cap = 0
    # Dropping synthetic rows can free a group of real rows from train, which lowers the cap:
    # a few passes settle it.
    for _ in range(4):
        kept = _within_synthetic_cap(selected, layout.splits, params)
        if kept is None:
            break
        over_cap += len(selected) - len(kept)
        selected = kept
        layout = _layout(spec, selected, params)
    if not selected:
        raise DatasetError(
            "nothing to freeze: every row has a synthetic input and the cap leaves none",
            field="max_synthetic_train_share",
        )
    exact_text, norm_text, position, pairs, merged, group_of_row, splits = layout
    frozen = [
        FrozenRow(
            r.row_id,
            dict(r.inputs),
            r.output,
            r.source,
            tuple(r.decision_ids),
            split,
            g,
            r.synthetic_input,
            r.rationale,
            _distribution(spec, r),
        )
        for r, split, g in zip(selected, splits, group_of_row, strict=True)
    ]
    leakage = leakage_report(
        [r.row_id for r in selected],
        exact_text,
        norm_text,
        splits,
        position,
        pairs,
        params.near_duplicate_threshold,
        merged,
    )
    return FrozenVersion(
        content_hash=content_hash(spec, frozen, params),
        params=params,
        rows=frozen,
        stats=_stats(spec, frozen, dropped, over_cap),
        leakage=leakage,
        skipped=skipped,
    )


class _Layout(NamedTuple):
    exact_text: list[str]
    norm_text: list[str]
    position: dict[str, int]
    pairs: list[tuple[int, int, float]]
    merged: int
    group_of_row: list[int]
    splits: list[Split]


def _layout(spec: TaskSpec, selected: list[DatasetRow], params: FreezeParams) -> _Layout:
    """Duplicate groups and each row's split; a group holding a synthetic input goes to train."""
    exact_text = [input_text(r.inputs, spec.input_fields) for r in selected]
    norm_text = [normalise_text(t) for t in exact_text]
    unique_norm = sorted(set(norm_text))
    position = {t: k for k, t in enumerate(unique_norm)}
    pairs = near_duplicate_pairs(unique_norm, params.near_duplicate_threshold)
    groups = UnionFind(len(unique_norm))
    merged = 0
    if params.near_duplicates == "group":
        for a, b, _ in pairs:
            merged += groups.union(a, b)
    group_of_row = [groups.find(position[t]) for t in norm_text]
    split_of_group = _assign_splits(spec, selected, group_of_row, params)
    for row, g in zip(selected, group_of_row, strict=True):
        if row.synthetic_input:
            split_of_group[g] = "train"
    splits: list[Split] = [split_of_group[g] for g in group_of_row]
    return _Layout(exact_text, norm_text, position, pairs, merged, group_of_row, splits)


def _within_synthetic_cap(
    selected: list[DatasetRow], splits: list[Split], params: FreezeParams
) -> list[DatasetRow] | None:
    """The rows with the synthetic inputs over ``max_synthetic_train_share`` of the training
    split left out (seeded choice); None when the cap holds already."""
    share = params.max_synthetic_train_share
    synthetic = [r for r in selected if r.synthetic_input]
    if share is None or share >= 1 or not synthetic:
        return None
    real_train = sum(
        1
        for r, split in zip(selected, splits, strict=True)
        if split == "train" and not r.synthetic_input
    )
    allowed = 0 if share <= 0 else math.floor(share * real_train / (1 - share) + 1e-9)
    if len(synthetic) <= allowed:
        return None
    chosen = random.Random(f"{params.seed}:synthetic").sample(synthetic, allowed)
    keep = {id(r) for r in chosen}
    return [r for r in selected if not r.synthetic_input or id(r) in keep]


def _validated_rows(
    spec: TaskSpec, rows: Iterable[DatasetRow | Sequence[Any]], params: FreezeParams
) -> tuple[list[DatasetRow], list[SkippedRow]]:
    valid: list[DatasetRow] = []
    skipped: list[SkippedRow] = []
    seen: set[RowId] = set()
    for number, value in enumerate(rows, start=1):
        row = DatasetRow.coerce(value)
        if not isinstance(row.row_id, str | int) or isinstance(row.row_id, bool):
            raise DatasetError(f"row {number}: row_id must be text or an integer")
        if row.row_id in seen:
            raise DatasetError(f"row {row.row_id!r}: the same row_id appears twice")
        seen.add(row.row_id)
        if row.source not in SOURCES:
            raise DatasetError(
                f"row {row.row_id!r}: source must be one of {', '.join(SOURCES)}, "
                f"not {row.source!r}"
            )
        if not isinstance(row.inputs, Mapping):
            raise DatasetError(f"row {row.row_id!r}: inputs must be a mapping of field to value")
        problem = ""
        missing = [f for f in spec.input_fields if row.inputs.get(f) is None]
        output = row.output if isinstance(row.output, str) else ""
        if missing:
            problem = f"input has no value for field(s): {', '.join(missing)}"
        else:
            parsed = parse_output(spec, output)
            if not parsed.ok:
                problem = f"output: {parsed.error}"
            elif spec.output_kind != "text":
                # Teach one spelling of each label and one layout of JSON.
                output = canonical_output(spec, parsed.value)
            else:
                output = output.strip()
        if problem:
            if params.on_invalid == "error":
                raise DatasetError(f"row {row.row_id!r}: {problem}")
            skipped.append(SkippedRow(row.row_id, problem))
            continue
        valid.append(
            DatasetRow(
                row.row_id,
                row.inputs,
                output,
                row.source,
                tuple(row.decision_ids),
                bool(row.synthetic_input),
                str(row.rationale or "").strip(),
                row.label_distribution,
            )
        )
    return valid, skipped


def _distribution(spec: TaskSpec, row: DatasetRow) -> dict[str, float] | None:
    """The row's teacher distribution over the labels, kept only where it is a distribution
    over this task's labels that gives the frozen answer some mass (an edited answer the
    teacher never considered is taught one-hot)."""
    given = row.label_distribution
    if spec.output_kind != "label" or not given:
        return None
    labels = set(spec.label_set)
    clean = {
        str(k): float(v)
        for k, v in given.items()
        if str(k) in labels and isinstance(v, int | float) and v > 0
    }
    total = sum(clean.values())
    if total <= 0 or clean.get(row.output, 0.0) <= 0:
        return None
    return {k: v / total for k, v in sorted(clean.items())}


def _apply_ratio(
    rows: list[DatasetRow], params: FreezeParams
) -> tuple[list[DatasetRow], dict[str, int]]:
    dropped = {"real": 0, "synthetic": 0}
    if params.real_ratio is None:
        return list(rows), dropped
    real = sorted((r for r in rows if r.source in REAL_SOURCES), key=lambda r: id_key(r.row_id))
    synthetic = sorted(
        (r for r in rows if r.source not in REAL_SOURCES), key=lambda r: id_key(r.row_id)
    )
    ratio = params.real_ratio
    keep_real, keep_synthetic = len(real), len(synthetic)
    if ratio == 0:
        keep_real = 0
    elif ratio == 1:
        keep_synthetic = 0
    elif len(real) > ratio * (len(real) + len(synthetic)):
        keep_real = min(len(real), math.floor(ratio * len(synthetic) / (1 - ratio) + 1e-9))
    else:
        keep_synthetic = min(len(synthetic), math.floor(len(real) * (1 - ratio) / ratio + 1e-9))
    rng = random.Random(f"{params.seed}:ratio")
    chosen_real = rng.sample(real, keep_real)
    chosen_synthetic = rng.sample(synthetic, keep_synthetic)
    dropped = {"real": len(real) - keep_real, "synthetic": len(synthetic) - keep_synthetic}
    return chosen_real + chosen_synthetic, dropped


def _assign_splits(
    spec: TaskSpec,
    rows: Sequence[DatasetRow],
    group_of_row: Sequence[int],
    params: FreezeParams,
) -> dict[int, Split]:
    """Systematic sampling with a random start, per stratum: groups are shuffled (seeded by
    seed and stratum), laid end to end on a circle of circumference 1 proportional to their row
    counts, rotated by a random offset, and each group goes to the split whose arc holds its
    midpoint. Every stratum gets its share to within one group, small strata are not all pushed
    into train, and a group is never split."""
    size: Counter[int] = Counter(group_of_row)
    labels: dict[int, Counter[str]] = defaultdict(Counter)
    for row, g in zip(rows, group_of_row, strict=True):
        labels[g][row.output] += 1
    stratified = params.stratify and spec.output_kind == "label"
    strata: dict[str, list[int]] = defaultdict(list)
    for g in sorted(size):
        # Stratum: the group's commonest label; ties go to the alphabetically first.
        stratum = min(labels[g].items(), key=lambda kv: (-kv[1], kv[0]))[0] if stratified else ""
        strata[stratum].append(g)
    bounds = (params.train, params.train + params.validation)
    assignment: dict[int, Split] = {}
    for stratum in sorted(strata):
        members = strata[stratum]
        rng = random.Random(f"{params.seed}:split:{stratum}")
        rng.shuffle(members)
        total = sum(size[g] for g in members)
        offset = rng.random()
        cumulative = 0
        for g in members:
            point = ((cumulative + size[g] / 2) / total + offset) % 1.0
            cumulative += size[g]
            if point < bounds[0]:
                assignment[g] = "train"
            elif point < bounds[1]:
                assignment[g] = "validation"
            else:
                assignment[g] = "test"
    return assignment


def content_hash(spec: TaskSpec, rows: Sequence[FrozenRow], params: FreezeParams) -> str:
    """sha256 over the format version, the task spec (it shapes every prompt), the params and
    the rows in canonical order, each with its split. Group numbers are derived, so left out."""
    digest = hashlib.sha256()

    def line(value: Any) -> None:
        digest.update(
            json.dumps(
                value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str
            ).encode("utf-8")
        )
        digest.update(b"\n")

    line(FORMAT_VERSION)
    line(
        {
            "instruction_template": spec.instruction_template,
            "output_kind": spec.output_kind,
            "input_fields": list(spec.input_fields),
            "system_prompt": spec.system_prompt,
            "label_set": list(spec.label_set),
            "json_schema": spec.json_schema,
        }
    )
    params_line = asdict(params)
    if params.max_synthetic_train_share is None:
        # Versions frozen before the cap existed keep their hash.
        del params_line["max_synthetic_train_share"]
    line(params_line)
    # One encoder call for all rows: the same canonical text as line by line, much faster.
    line(
        [
            [
                row.row_id,
                dict(row.inputs),
                row.output,
                row.source,
                list(row.decision_ids),
                row.split,
                *(["synthetic_input"] if row.synthetic_input else []),
                # Only rows that carry them add these: versions without stay hashed as before.
                *([row.rationale] if row.rationale else []),
                *([row.label_distribution] if row.label_distribution else []),
            ]
            for row in sorted(rows, key=lambda r: id_key(r.row_id))
        ]
    )
    return digest.hexdigest()


def _stats(
    spec: TaskSpec, rows: Sequence[FrozenRow], dropped: dict[str, int], over_cap: int = 0
) -> DatasetStats:
    import numpy as np

    counts: dict[str, int] = dict.fromkeys(SPLITS, 0)
    sources: dict[str, dict[str, int]] = {s: {} for s in SPLITS}
    labels: dict[str, dict[str, int]] = (
        {s: {} for s in SPLITS} if spec.output_kind == "label" else {}
    )
    lengths: dict[str, list[int]] = {s: [] for s in SPLITS}
    for row in rows:
        counts[row.split] += 1
        sources[row.split][row.source] = sources[row.split].get(row.source, 0) + 1
        if labels:
            labels[row.split][row.output] = labels[row.split].get(row.output, 0) + 1
        lengths[row.split].append(len(row.output))
    longest = max((max(v) for v in lengths.values() if v), default=0)
    bins = max(1, min(20, longest))
    edges = np.linspace(0, max(longest, 1), bins + 1)
    length_counts = {
        s: [int(c) for c in np.histogram(np.asarray(v, dtype=np.int64), bins=edges)[0]]
        for s, v in lengths.items()
    }
    group_sizes = Counter(row.group for row in rows)
    real = sum(1 for row in rows if row.source in REAL_SOURCES)
    return DatasetStats(
        counts=counts,
        sources={s: dict(sorted(v.items())) for s, v in sources.items()},
        labels={s: dict(sorted(v.items())) for s, v in labels.items()},
        length_edges=[round(float(e), 3) for e in edges],
        length_counts=length_counts,
        groups=len(group_sizes),
        largest_group=max(group_sizes.values(), default=0),
        real_share=round(real / len(rows), 6) if rows else 0.0,
        dropped_for_ratio=dropped,
        synthetic_inputs={
            s: sum(1 for r in rows if r.split == s and r.synthetic_input) for s in SPLITS
        },
        dropped_synthetic_over_cap=over_cap,
    )
