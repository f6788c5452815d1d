"""Exact and near-duplicate inputs: the text of an input row, near-duplicate pairs by a
prefix-filtered set-similarity join, and the union-find that groups them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


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


class UnionFind:
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
