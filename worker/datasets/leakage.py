"""The leakage report: which inputs appear in more than one split, exactly, once normalised, or
as near-duplicates."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from worker.checks import normalise_text
from worker.datasets.near_duplicates import input_text, near_duplicate_pairs
from worker.datasets.rows import RowId


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
    return leakage_report(ids, exact_text, norm_text, splits, position, pairs, threshold, 0)


def leakage_report(
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
