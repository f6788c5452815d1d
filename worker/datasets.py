"""Frozen dataset versions: selection, leakage-safe splits, a content hash, stats and exports.

:func:`freeze` takes plain rows (approved teacher outputs, edited ones with the edit, human
reference rows) and returns a :class:`FrozenVersion`: every row with its split, a sha256 content
hash, stats for the stats page and a leakage report. Nothing here touches a database; the web
side stores what comes back.

Splits are deterministic and group-aware. Rows are grouped by their *normalised input text*
(every input field's value, in the task's field order, joined by newlines; then NFKC,
case-folded, punctuation and symbols removed, whitespace collapsed — see
:func:`worker.checks.normalise_text`), so exact and normalised duplicates always land in the same
split. Near-duplicates (token-set Jaccard ≥ ``near_duplicate_threshold`` on those normalised
words) are found with prefix-filtered set-similarity join — exact, not sampled, and far from
O(n²) because candidates only meet on their rarest words — and by default are grouped too.

Exports stream to a text file object: OpenAI chat JSONL, Hugging Face prompt/completion JSONL and
formula-safe CSV, each with a reader for the round trip.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import random
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import IO, Any, Literal

from worker.checks import normalise_text
from worker.taskspec import TaskSpec, build_messages, canonical_output, parse_output

Source = Literal["teacher", "teacher_edited", "human_reference"]
SOURCES: tuple[Source, ...] = ("teacher", "teacher_edited", "human_reference")
#: Rows a person wrote or labelled; the others are synthetic (the teacher's, possibly edited).
REAL_SOURCES: frozenset[str] = frozenset({"human_reference"})
Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")
RowId = str | int

FORMAT_VERSION = "distillery-dataset-v1"


class DatasetError(ValueError):
    """The rows or parameters cannot make a dataset version. ``field`` names the parameter at
    fault (the form field a page shows the error on), or is None when the fault is in the rows
    (the message then names the row or line); ``message`` says what is wrong, without the
    field."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class DatasetRow:
    """One candidate row: the input fields, the output to teach, where it came from, and the
    review decisions that let it in (recorded so a version says exactly what it was made of)."""

    row_id: RowId
    inputs: Mapping[str, Any]
    output: str
    source: Source
    decision_ids: tuple[RowId, ...] = ()

    @classmethod
    def coerce(cls, value: DatasetRow | Sequence[Any]) -> DatasetRow:
        if isinstance(value, DatasetRow):
            return value
        if len(value) not in (4, 5):
            raise DatasetError(
                "row: expected (row_id, inputs, output, source[, decision_ids]), "
                f"got {len(value)} items"
            )
        row_id, inputs, output, source, *rest = value
        decisions = tuple(rest[0]) if rest and rest[0] is not None else ()
        return cls(row_id, inputs, output, source, decisions)


@dataclass(frozen=True)
class FrozenRow:
    row_id: RowId
    inputs: Mapping[str, Any]
    output: str
    source: Source
    decision_ids: tuple[RowId, ...]
    split: Split
    group: int  # rows sharing a group are duplicates or near-duplicates of one another


@dataclass(frozen=True)
class FreezeParams:
    """Everything that shapes a version; all of it goes into the content hash.

    * ``train``/``validation``/``test``: split shares, summing to 1.
    * ``real_ratio``: the share of human-reference ("real") rows among all rows; the side in
      excess is down-sampled with the seed. None keeps every row; 0 drops real rows; 1 keeps
      only real rows.
    * ``stratify``: stratify splits by label (label tasks only).
    * ``near_duplicate_threshold``: token-set Jaccard at or above which inputs are
      near-duplicates. ``near_duplicates``: "group" keeps them in one split; "report" only lists
      the ones that straddle splits.
    * ``on_invalid``: "error" refuses rows whose output does not parse for the task or whose
      input lacks a field; "skip" leaves them out and lists them in ``FrozenVersion.skipped``.
    """

    seed: int = 0
    train: float = 0.8
    validation: float = 0.1
    test: float = 0.1
    real_ratio: float | None = None
    stratify: bool = True
    near_duplicate_threshold: float = 0.8
    near_duplicates: Literal["group", "report"] = "group"
    on_invalid: Literal["error", "skip"] = "error"

    def validate(self) -> None:
        for name in SPLITS:
            share = getattr(self, name)
            if isinstance(share, bool) or not isinstance(share, int | float) or share < 0:
                raise DatasetError("must be a share between 0 and 1", field=name)
        if abs(self.train + self.validation + self.test - 1.0) > 1e-6:
            raise DatasetError("train + validation + test must add up to 1", field="train")
        if self.train <= 0:
            raise DatasetError("the training split cannot be empty", field="train")
        if self.real_ratio is not None and not 0.0 <= self.real_ratio <= 1.0:
            raise DatasetError(
                "must be between 0 and 1 (or empty to keep all rows)", field="real_ratio"
            )
        if not 0.0 < self.near_duplicate_threshold <= 1.0:
            raise DatasetError("must be above 0 and at most 1", field="near_duplicate_threshold")
        if self.near_duplicates not in ("group", "report"):
            raise DatasetError("must be 'group' or 'report'", field="near_duplicates")
        if self.on_invalid not in ("error", "skip"):
            raise DatasetError("must be 'error' or 'skip'", field="on_invalid")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise DatasetError("must be an integer", field="seed")


# --------------------------------------------------------------------------------------------
# Duplicates and near-duplicates
# --------------------------------------------------------------------------------------------


def input_text(inputs: Mapping[str, Any], fields: Sequence[str] | None = None) -> str:
    """The text of an input row: its field values in ``fields`` order (default: sorted keys)."""
    names = list(fields) if fields is not None else sorted(inputs)
    return "\n".join("" if inputs.get(n) is None else str(inputs.get(n)) for n in names)


def near_duplicate_pairs(
    texts: Sequence[str], threshold: float = 0.8
) -> list[tuple[int, int, float]]:
    """All pairs (i, j, similarity), i < j, of texts whose word sets have Jaccard ≥ threshold.

    Exact (nothing is sampled), and far from O(n²): a set-similarity join with prefix filtering
    (Chaudhuri et al. 2006; Bayardo et al.'s All-Pairs; Xiao et al.'s PPJoin), vectorised:

    1. words are ranked rarest first; two sets with Jaccard ≥ t must share a word among the
       first ``|x| - ceil(t|x|) + 1`` words of the larger one and the first
       ``|y| - ceil(2t/(1+t)|y|) + 1`` of the smaller one, so candidates only meet on rare words;
    2. size filter (``|y| ≥ t|x|``) and positional filter (the words left after the first shared
       one must be able to reach the required overlap);
    3. a 256-bit word sketch gives an upper bound on the overlap (``|x| + |y| - popcount(bits(x) OR
       bits(y))``) that throws out most remaining candidates without touching Python sets;
    4. survivors are verified exactly.
    """
    import numpy as np

    eps = 1e-9
    n = len(texts)
    vocab: dict[str, int] = {}
    token_lists = [
        [vocab.setdefault(w, len(vocab)) for w in dict.fromkeys(t.split())] for t in texts
    ]
    if n < 2 or not vocab:
        return []
    sizes = np.fromiter((len(x) for x in token_lists), dtype=np.int64, count=n)
    flat = np.fromiter((w for x in token_lists for w in x), dtype=np.int64, count=int(sizes.sum()))
    row = np.repeat(np.arange(n, dtype=np.int64), sizes)
    freq = np.bincount(flat, minlength=len(vocab))
    rank_of = np.empty(len(vocab), dtype=np.int64)
    rank_of[np.lexsort((np.arange(len(vocab)), freq))] = np.arange(len(vocab))
    rank = rank_of[flat]

    # Entries are row-major already (row i's words are contiguous); sort each row's words
    # rarest first with one integer sort.
    rank = np.sort(row * len(vocab) + rank) % len(vocab)
    starts = np.cumsum(sizes) - sizes
    nonempty = sizes > 0

    sketch_words = 4  # 4 x 64 bits
    bit = (rank * np.int64(0x9E3779B1)) % (64 * sketch_words)
    one_bit = np.left_shift(np.uint64(1), (bit % 64).astype(np.uint64))
    sketch = np.zeros((n, sketch_words), dtype=np.uint64)
    for word in range(sketch_words):
        values = np.where(bit // 64 == word, one_bit, np.uint64(0))
        sketch[nonempty, word] = np.bitwise_or.reduceat(values, starts[nonempty])

    pos = np.arange(len(rank)) - np.repeat(starts, sizes)
    probe_len = sizes - np.ceil(threshold * sizes - eps).astype(np.int64) + 1
    index_len = sizes - np.ceil(2 * threshold / (1 + threshold) * sizes - eps).astype(np.int64) + 1
    probe = pos < np.repeat(probe_len, sizes)
    index = pos < np.repeat(index_len, sizes)

    # Index entries sorted by (word, set size): a probe reads only the slice of sizes the size
    # filter allows, t|x| <= |y| <= |x|.
    width = int(sizes.max()) + 1
    i_key = rank[index] * width + np.repeat(sizes, sizes)[index]
    order = np.argsort(i_key, kind="stable")
    i_key, i_row, i_pos = i_key[order], row[index][order], pos[index][order]
    p_rank, p_row, p_pos = rank[probe], row[probe], pos[probe]
    p_size = sizes[p_row]
    smallest = np.ceil(threshold * p_size - eps).astype(np.int64)
    lo = np.searchsorted(i_key, p_rank * width + smallest, "left")
    count = np.searchsorted(i_key, p_rank * width + p_size, "right") - lo
    cumulative = np.cumsum(count)

    found: list[Any] = []
    chunk = 1_000_000  # candidate rows per step, to bound memory
    begin = 0
    while begin < len(p_row):
        done = int(cumulative[begin - 1]) if begin else 0
        end = max(begin + 1, int(np.searchsorted(cumulative, done + chunk, "right")))
        c = count[begin:end]
        k = int(c.sum())
        if k:
            pi = np.repeat(np.arange(begin, end), c)
            ii = np.repeat(lo[begin:end] - (np.cumsum(c) - c), c) + np.arange(k)
            x, y = p_row[pi], i_row[ii]
            sx, sy = sizes[x], sizes[y]
            need = np.ceil(threshold / (1 + threshold) * (sx + sy) - eps)
            keep = (sy < sx) | (y < x)  # each pair once: the smaller set is the indexed one
            keep &= 1 + np.minimum(sx - p_pos[pi] - 1, sy - i_pos[ii] - 1) >= need
            x, y, need = x[keep], y[keep], need[keep]
            union_bits = np.bitwise_count(sketch[x] | sketch[y]).sum(axis=1).astype(np.int64)
            keep = sizes[x] + sizes[y] - union_bits >= need
            found.append(np.minimum(x[keep], y[keep]) * n + np.maximum(x[keep], y[keep]))
        begin = end
    if not found:
        return []
    keys = np.unique(np.concatenate(found))
    sets: dict[int, frozenset[int]] = {}
    pairs: list[tuple[int, int, float]] = []
    for i, j in zip((keys // n).tolist(), (keys % n).tolist(), strict=True):
        a = sets.get(i) or sets.setdefault(i, frozenset(token_lists[i]))
        b = sets.get(j) or sets.setdefault(j, frozenset(token_lists[j]))
        inter = len(a & b)
        similarity = inter / (len(a) + len(b) - inter)
        if similarity >= threshold - eps:
            pairs.append((i, j, round(similarity, 6)))
    return pairs


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> bool:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return False
        if rb < ra:
            ra, rb = rb, ra
        self.parent[rb] = ra
        return True


@dataclass(frozen=True)
class Straddle:
    """Rows whose inputs are the same (exactly or once normalised) but sit in different splits."""

    kind: Literal["exact", "normalised"]
    text: str
    rows: dict[str, list[RowId]]  # split -> row ids


@dataclass(frozen=True)
class NearDuplicate:
    """Two rows in different splits whose inputs are near-duplicates."""

    row_a: RowId
    split_a: str
    row_b: RowId
    split_b: str
    similarity: float


@dataclass(frozen=True)
class LeakageReport:
    threshold: float
    exact: list[Straddle] = field(default_factory=list)
    normalised: list[Straddle] = field(default_factory=list)
    near_duplicates: list[NearDuplicate] = field(default_factory=list)
    near_duplicate_pairs: int = 0  # found in all, including those inside one split
    near_duplicate_groups_merged: int = 0  # merges made by freeze when grouping near-duplicates

    @property
    def ok(self) -> bool:
        return not (self.exact or self.normalised or self.near_duplicates)

    def summary(self) -> str:
        if self.ok:
            return (
                "No leakage: no exact, normalised or near-duplicate input (Jaccard ≥ "
                f"{self.threshold:g}) appears in more than one split."
            )
        parts = []
        if self.exact:
            parts.append(f"{len(self.exact)} exact duplicate input(s)")
        if self.normalised:
            parts.append(f"{len(self.normalised)} normalised duplicate input(s)")
        if self.near_duplicates:
            parts.append(f"{len(self.near_duplicates)} near-duplicate pair(s)")
        return "Leakage: " + ", ".join(parts) + " span more than one split."

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        data["summary"] = self.summary()
        return data


def leakage_check(
    items: Iterable[tuple[RowId, Mapping[str, Any] | str, str]],
    *,
    threshold: float = 0.8,
    input_fields: Sequence[str] | None = None,
) -> LeakageReport:
    """Which inputs appear in more than one split: exactly, once normalised, or as
    near-duplicates. ``items`` are (row_id, inputs or input text, split); works on any
    assignment, e.g. an old version's, or a test set brought from elsewhere."""
    rows = [
        (rid, inp if isinstance(inp, str) else input_text(inp, input_fields), split)
        for rid, inp, split in items
    ]
    exact_text = [text for _, text, _ in rows]
    norm_text = [normalise_text(text) for text in exact_text]
    splits = [split for _, _, split in rows]
    ids = [rid for rid, _, _ in rows]
    unique_norm = sorted(set(norm_text))
    position = {t: k for k, t in enumerate(unique_norm)}
    pairs = near_duplicate_pairs(unique_norm, threshold)
    return _leakage_report(ids, exact_text, norm_text, splits, position, pairs, threshold, 0)


def _leakage_report(
    ids: Sequence[RowId],
    exact_text: Sequence[str],
    norm_text: Sequence[str],
    splits: Sequence[str],
    position: Mapping[str, int],
    pairs: Sequence[tuple[int, int, float]],
    threshold: float,
    merged: int,
) -> LeakageReport:
    def straddles(texts: Sequence[str], kind: Literal["exact", "normalised"]) -> list[Straddle]:
        first_split: dict[str, str] = {}
        crossing: set[str] = set()
        for text, split in zip(texts, splits, strict=True):
            seen = first_split.setdefault(text, split)
            if seen != split:
                crossing.add(text)
        if not crossing:
            return []
        by_text: dict[str, dict[str, list[RowId]]] = {t: defaultdict(list) for t in crossing}
        for rid, text, split in zip(ids, texts, splits, strict=True):
            if text in crossing:
                by_text[text][split].append(rid)
        return [
            Straddle(kind, text, {s: list(r) for s, r in sorted(where.items())})
            for text, where in sorted(by_text.items())
        ]

    exact = straddles(exact_text, "exact")
    text_of = dict(zip(ids, exact_text, strict=True))
    # A normalised straddle that is one exact text throughout is already reported as exact.
    normalised = [
        s
        for s in straddles(norm_text, "normalised")
        if len({text_of[rid] for rows in s.rows.values() for rid in rows}) > 1
    ]
    # Representative rows per unique normalised text, per split.
    members: dict[int, dict[str, RowId]] = defaultdict(dict)
    for rid, text, split in zip(ids, norm_text, splits, strict=True):
        members[position[text]].setdefault(split, rid)
    near: list[NearDuplicate] = []
    for a, b, similarity in pairs:
        for split_a, row_a in sorted(members[a].items()):
            for split_b, row_b in sorted(members[b].items()):
                if split_a != split_b:
                    near.append(NearDuplicate(row_a, split_a, row_b, split_b, similarity))
    return LeakageReport(threshold, exact, normalised, near, len(pairs), merged)


# --------------------------------------------------------------------------------------------
# Freeze
# --------------------------------------------------------------------------------------------


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
        return sorted({d for row in self.rows for d in row.decision_ids}, key=_id_key)


def _id_key(value: RowId) -> tuple[int, int, str]:
    if isinstance(value, int):
        return (0, value, "")
    return (1, 0, str(value))


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
    selected.sort(key=lambda r: _id_key(r.row_id))

    exact_text = [input_text(r.inputs, spec.input_fields) for r in selected]
    norm_text = [normalise_text(t) for t in exact_text]
    unique_norm = sorted(set(norm_text))
    position = {t: k for k, t in enumerate(unique_norm)}
    pairs = near_duplicate_pairs(unique_norm, params.near_duplicate_threshold)
    groups = _UnionFind(len(unique_norm))
    merged = 0
    if params.near_duplicates == "group":
        for a, b, _ in pairs:
            merged += groups.union(a, b)
    group_of_row = [groups.find(position[t]) for t in norm_text]

    split_of_group = _assign_splits(spec, selected, group_of_row, params)
    splits: list[Split] = [split_of_group[g] for g in group_of_row]
    frozen = [
        FrozenRow(r.row_id, dict(r.inputs), r.output, r.source, tuple(r.decision_ids), split, g)
        for r, split, g in zip(selected, splits, group_of_row, strict=True)
    ]
    leakage = _leakage_report(
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
        stats=_stats(spec, frozen, dropped),
        leakage=leakage,
        skipped=skipped,
    )


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
            DatasetRow(row.row_id, row.inputs, output, row.source, tuple(row.decision_ids))
        )
    return valid, skipped


def _apply_ratio(
    rows: list[DatasetRow], params: FreezeParams
) -> tuple[list[DatasetRow], dict[str, int]]:
    dropped = {"real": 0, "synthetic": 0}
    if params.real_ratio is None:
        return list(rows), dropped
    real = sorted((r for r in rows if r.source in REAL_SOURCES), key=lambda r: _id_key(r.row_id))
    synthetic = sorted(
        (r for r in rows if r.source not in REAL_SOURCES), key=lambda r: _id_key(r.row_id)
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
    line(asdict(params))
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
            ]
            for row in sorted(rows, key=lambda r: _id_key(r.row_id))
        ]
    )
    return digest.hexdigest()


def _stats(spec: TaskSpec, rows: Sequence[FrozenRow], dropped: dict[str, int]) -> DatasetStats:
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
    )


# --------------------------------------------------------------------------------------------
# Exports (streaming) and readers
# --------------------------------------------------------------------------------------------


def chat_messages(spec: TaskSpec, row: FrozenRow | DatasetRow) -> list[dict[str, str]]:
    """System (if any) + user from the task spec, then the output as the assistant turn."""
    return [*build_messages(spec, dict(row.inputs)), {"role": "assistant", "content": row.output}]


def write_openai_chat_jsonl(
    spec: TaskSpec, rows: Iterable[FrozenRow | DatasetRow], fp: IO[str]
) -> int:
    """OpenAI fine-tuning format: one ``{"messages": [...]}`` per line. Returns the row count."""
    n = 0
    for row in rows:
        fp.write(json.dumps({"messages": chat_messages(spec, row)}, ensure_ascii=False))
        fp.write("\n")
        n += 1
    return n


def write_prompt_completion_jsonl(
    spec: TaskSpec,
    rows: Iterable[FrozenRow | DatasetRow],
    fp: IO[str],
    *,
    conversational: bool = True,
) -> int:
    """Hugging Face (TRL) prompt/completion format. Conversational by default — ``prompt`` is the
    system + user messages and ``completion`` the assistant message, so the trainer applies the
    student's chat template and computes loss on the completion only. With
    ``conversational=False``, ``prompt`` is the system prompt and user turn as plain text."""
    n = 0
    for row in rows:
        messages = build_messages(spec, dict(row.inputs))
        record: dict[str, Any]
        if conversational:
            record = {
                "prompt": messages,
                "completion": [{"role": "assistant", "content": row.output}],
            }
        else:
            record = {
                "prompt": "\n\n".join(m["content"] for m in messages),
                "completion": row.output,
            }
        fp.write(json.dumps(record, ensure_ascii=False))
        fp.write("\n")
        n += 1
    return n


#: A cell starting with one of these is a formula to a spreadsheet (OWASP "CSV injection").
FORMULA_TRIGGERS = frozenset("=+-@\t\r")


def formula_safe(cell: str) -> str:
    """Neutralise a cell a spreadsheet would run as a formula by prefixing an apostrophe.

    A cell that already starts with apostrophes before a trigger gets one more, so that
    :func:`unformula` can undo exactly what was done: the escaping is reversible."""
    if cell[:1] in FORMULA_TRIGGERS or (
        cell[:1] == "'" and cell.lstrip("'")[:1] in FORMULA_TRIGGERS and cell.lstrip("'")
    ):
        return "'" + cell
    return cell


def unformula(cell: str) -> str:
    """The inverse of :func:`formula_safe`."""
    rest = cell.lstrip("'")
    if cell[:1] == "'" and rest and rest[:1] in FORMULA_TRIGGERS:
        return cell[1:]
    return cell


def csv_columns(spec: TaskSpec) -> list[str]:
    return ["row_id", "split", "source", "decision_ids", *spec.input_fields, "output"]


def write_csv(spec: TaskSpec, rows: Iterable[FrozenRow], fp: IO[str]) -> int:
    """Formula-safe CSV (open ``fp`` with ``newline=""``). ``decision_ids`` is a JSON list;
    input values that are not text are written as JSON. Returns the row count."""
    writer = csv.writer(fp)
    writer.writerow(csv_columns(spec))
    n = 0
    for row in rows:
        values = [
            str(row.row_id),
            row.split,
            row.source,
            json.dumps(list(row.decision_ids)),
            *(_cell(row.inputs.get(f)) for f in spec.input_fields),
            row.output,
        ]
        writer.writerow([formula_safe(v) for v in values])
        n += 1
    return n


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def read_csv(spec: TaskSpec, fp: IO[str]) -> Iterator[FrozenRow]:
    """Read back what :func:`write_csv` wrote. Row ids and input values come back as text."""
    reader = csv.reader(fp)
    header = next(reader, None)
    expected = csv_columns(spec)
    if header != expected:
        raise DatasetError(f"line 1: expected the columns {', '.join(expected)}")
    for line_number, cells in enumerate(reader, start=2):
        if len(cells) != len(expected):
            raise DatasetError(
                f"line {line_number}: expected {len(expected)} cells, got {len(cells)}"
            )
        values = [unformula(c) for c in cells]
        record = dict(zip(expected, values, strict=True))
        split = record["split"]
        source = record["source"]
        if split not in SPLITS:
            raise DatasetError(f"line {line_number}: split {split!r} is not one of {SPLITS}")
        if source not in SOURCES:
            raise DatasetError(f"line {line_number}: source {source!r} is not one of {SOURCES}")
        try:
            decisions = json.loads(record["decision_ids"])
        except ValueError as exc:
            raise DatasetError(f"line {line_number}: decision_ids is not a JSON list") from exc
        yield FrozenRow(
            row_id=record["row_id"],
            inputs={f: record[f] for f in spec.input_fields},
            output=record["output"],
            source=source,  # type: ignore[arg-type]  # checked against SOURCES above
            decision_ids=tuple(decisions),
            split=split,  # type: ignore[arg-type]  # checked against SPLITS above
            group=-1,
        )


def _read_jsonl(fp: IO[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    for line_number, line in enumerate(fp, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise DatasetError(f"line {line_number}: not valid JSON ({exc})") from exc
        if not isinstance(record, dict):
            raise DatasetError(f"line {line_number}: expected a JSON object")
        yield line_number, record


def _check_messages(line_number: int, key: str, messages: Any) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise DatasetError(f"line {line_number}: {key} must be a non-empty list of messages")
    for message in messages:
        if (
            not isinstance(message, dict)
            or message.get("role") not in ("system", "user", "assistant")
            or not isinstance(message.get("content"), str)
        ):
            raise DatasetError(
                f"line {line_number}: {key} has a message without a valid role and text content"
            )
    return messages


def read_openai_chat_jsonl(fp: IO[str]) -> Iterator[list[dict[str, str]]]:
    """Each line's messages; the last one must be the assistant's answer."""
    for line_number, record in _read_jsonl(fp):
        messages = _check_messages(line_number, "messages", record.get("messages"))
        if messages[-1]["role"] != "assistant":
            raise DatasetError(f"line {line_number}: the last message must be the assistant's")
        yield messages


def read_prompt_completion_jsonl(fp: IO[str]) -> Iterator[dict[str, Any]]:
    """Each line's ``{"prompt": ..., "completion": ...}`` (conversational or plain text)."""
    for line_number, record in _read_jsonl(fp):
        prompt, completion = record.get("prompt"), record.get("completion")
        if isinstance(prompt, str) and isinstance(completion, str):
            yield {"prompt": prompt, "completion": completion}
            continue
        yield {
            "prompt": _check_messages(line_number, "prompt", prompt),
            "completion": _check_messages(line_number, "completion", completion),
        }


# --------------------------------------------------------------------------------------------
# Reviewer agreement and overlap assignment
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Agreement:
    """Agreement between two reviewers on the items both decided. ``kappa`` is Cohen's kappa
    (scikit-learn's); None when there is nothing to compare or it is undefined (both
    reviewers gave one and the same decision to everything: expected agreement is 1)."""

    n: int
    agreed: int
    percent: float | None
    kappa: float | None


def agreement(a: Sequence[Hashable], b: Sequence[Hashable]) -> Agreement:
    """Percent agreement and Cohen's kappa between two parallel lists of decisions."""
    if len(a) != len(b):
        raise DatasetError("decisions: the two reviewers' lists must have the same length")
    n = len(a)
    if n == 0:
        return Agreement(0, 0, None, None)
    agreed = sum(1 for x, y in zip(a, b, strict=True) if x == y)
    kappa: float | None = None
    if len(set(a) | set(b)) > 1:
        import warnings

        from sklearn.metrics import cohen_kappa_score

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            value = float(cohen_kappa_score([str(x) for x in a], [str(y) for y in b]))
        kappa = None if math.isnan(value) else round(value, 6)
    return Agreement(n, agreed, round(100.0 * agreed / n, 4), kappa)


@dataclass(frozen=True)
class PairAgreement:
    reviewer_a: RowId
    reviewer_b: RowId
    agreement: Agreement
    conflicts: list[RowId]  # items the two decided differently, for an owner to resolve


def overlap_agreement(
    decisions: Iterable[tuple[RowId, RowId, Hashable]],
) -> list[PairAgreement]:
    """From (item_id, reviewer_id, decision) triples, the agreement of every pair of reviewers
    on the items both decided, with the items they disagree on. A reviewer's later decision on
    the same item replaces the earlier one (pass decisions in time order)."""
    by_item: dict[RowId, dict[RowId, Hashable]] = defaultdict(dict)
    for item, reviewer, decision in decisions:
        by_item[item][reviewer] = decision
    shared: dict[tuple[RowId, RowId], list[RowId]] = defaultdict(list)
    for item in sorted(by_item, key=_id_key):
        reviewers = sorted(by_item[item], key=_id_key)
        for i, ra in enumerate(reviewers):
            for rb in reviewers[i + 1 :]:
                shared[(ra, rb)].append(item)
    result = []
    for (ra, rb), items in sorted(
        shared.items(), key=lambda kv: (_id_key(kv[0][0]), _id_key(kv[0][1]))
    ):
        a = [by_item[i][ra] for i in items]
        b = [by_item[i][rb] for i in items]
        conflicts = [i for i, x, y in zip(items, a, b, strict=True) if x != y]
        result.append(PairAgreement(ra, rb, agreement(a, b), conflicts))
    return result


def assign_reviewers(
    item_ids: Sequence[RowId], reviewers: Sequence[RowId], overlap: float, seed: int = 0
) -> dict[RowId, list[RowId]]:
    """Split items among reviewers round-robin (after a seeded shuffle); a share ``overlap``
    (0..1) of the items also goes to a second reviewer, the next in the rotation, so agreement
    can be measured. Deterministic for the same items, reviewers and seed."""
    if not reviewers:
        raise DatasetError("reviewers: give at least one reviewer")
    if len(set(reviewers)) != len(reviewers):
        raise DatasetError("reviewers: a reviewer is listed twice")
    if not 0.0 <= overlap <= 1.0:
        raise DatasetError("overlap: must be between 0 and 1")
    items = sorted(item_ids, key=_id_key)
    random.Random(f"{seed}:assign").shuffle(items)
    n_overlap = round(overlap * len(items)) if len(reviewers) > 1 else 0
    assignment: dict[RowId, list[RowId]] = {}
    for k, item in enumerate(items):
        first = k % len(reviewers)
        chosen = [reviewers[first]]
        if k < n_overlap:
            # Pair with a different reviewer each lap so every pair gets overlap items.
            step = 1 + (k // len(reviewers)) % (len(reviewers) - 1)
            chosen.append(reviewers[(first + step) % len(reviewers)])
        assignment[item] = chosen
    return assignment
