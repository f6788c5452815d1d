"""Reviewers: overlap assignment of items to reviewers, and their agreement (percent and Cohen's
kappa) on the items they both decided."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

from worker.datasets.rows import DatasetError, RowId, id_key


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
    for item in sorted(by_item, key=id_key):
        reviewers = sorted(by_item[item], key=id_key)
        for i, ra in enumerate(reviewers):
            for rb in reviewers[i + 1 :]:
                shared[(ra, rb)].append(item)
    result = []
    for (ra, rb), items in sorted(
        shared.items(), key=lambda kv: (id_key(kv[0][0]), id_key(kv[0][1]))
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
    items = sorted(item_ids, key=id_key)
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
