"""Exact and near-duplicate inputs: the text of an input row, near-duplicate pairs by a
prefix-filtered set-similarity join, and the union-find that groups them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Int64Array = npt.NDArray[np.int64]
    UInt64Array = npt.NDArray[np.uint64]


def input_text(inputs: Mapping[str, Any], fields: Sequence[str] | None = None) -> str:
    """The text of an input row: its field values in ``fields`` order (default: sorted keys)."""
    names = list(fields) if fields is not None else sorted(inputs)
    return "\n".join("" if inputs.get(n) is None else str(inputs.get(n)) for n in names)


#: Slack for float comparisons of Jaccard bounds.
_EPS = 1e-9
#: The word sketch: 4 x 64 bits.
_SKETCH_WORDS = 4
#: Candidate rows per verification step, to bound memory.
_CHUNK = 1_000_000


class _Words(NamedTuple):
    """Every (text, word) entry, row-major, each row's words ranked rarest first."""

    sizes: Int64Array  # words per text
    row: Int64Array  # the text of each entry
    rank: Int64Array  # the word's rank (0 = rarest) of each entry
    starts: Int64Array  # where each text's entries start
    pos: Int64Array  # the entry's position within its text


class _Probes(NamedTuple):
    """Prefix entries that probe, and the index slice each probe reads."""

    i_row: Int64Array  # indexed entries, sorted by (word, set size): their text
    i_pos: Int64Array  # ... and position within it
    p_row: Int64Array  # probing entries: their text
    p_pos: Int64Array  # ... and position within it
    lo: Int64Array  # first indexed entry each probe reads
    reads: Int64Array  # how many indexed entries each probe reads


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
    vocab: dict[str, int] = {}
    token_lists = [
        [vocab.setdefault(w, len(vocab)) for w in dict.fromkeys(t.split())] for t in texts
    ]
    if len(texts) < 2 or not vocab:
        return []
    words = _rank_rarest_first(token_lists, len(vocab))
    sketch = _word_sketches(words)
    probes = _prefix_probes(words, threshold)
    keys = _candidate_keys(words, sketch, probes, threshold)
    if keys is None:
        return []
    return _verified_pairs(keys, token_lists, threshold)


def _rank_rarest_first(token_lists: Sequence[Sequence[int]], vocab_size: int) -> _Words:
    """Replace each word by its rank, rarest first (ties by first appearance), and sort each
    text's words by rank."""
    import numpy as np

    n = len(token_lists)
    sizes = np.fromiter((len(x) for x in token_lists), dtype=np.int64, count=n)
    flat = np.fromiter((w for x in token_lists for w in x), dtype=np.int64, count=int(sizes.sum()))
    row = np.repeat(np.arange(n, dtype=np.int64), sizes)
    freq = np.bincount(flat, minlength=vocab_size)
    rank_of = np.empty(vocab_size, dtype=np.int64)
    rank_of[np.lexsort((np.arange(vocab_size), freq))] = np.arange(vocab_size)
    rank = rank_of[flat]
    # Entries are row-major already (row i's words are contiguous); sort each row's words
    # rarest first with one integer sort.
    rank = np.sort(row * vocab_size + rank) % vocab_size
    starts = np.cumsum(sizes) - sizes
    pos = np.arange(len(rank)) - np.repeat(starts, sizes)
    return _Words(sizes, row, rank, starts, pos)


def _word_sketches(words: _Words) -> UInt64Array:
    """Each text's 256-bit sketch: one hashed bit per word, as 4 x 64-bit words per text."""
    import numpy as np

    sizes, starts = words.sizes, words.starts
    nonempty = sizes > 0
    bit = (words.rank * np.int64(0x9E3779B1)) % (64 * _SKETCH_WORDS)
    one_bit = np.left_shift(np.uint64(1), (bit % 64).astype(np.uint64))
    sketch = np.zeros((len(sizes), _SKETCH_WORDS), dtype=np.uint64)
    for word in range(_SKETCH_WORDS):
        values = np.where(bit // 64 == word, one_bit, np.uint64(0))
        sketch[nonempty, word] = np.bitwise_or.reduceat(values, starts[nonempty])
    return sketch


def _prefix_probes(words: _Words, threshold: float) -> _Probes:
    """The probe and index prefixes (filter 1), with the slice of the index each probe reads
    under the size filter."""
    import numpy as np

    sizes, row, rank, pos = words.sizes, words.row, words.rank, words.pos
    probe_len = sizes - np.ceil(threshold * sizes - _EPS).astype(np.int64) + 1
    index_len = sizes - np.ceil(2 * threshold / (1 + threshold) * sizes - _EPS).astype(np.int64) + 1
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
    smallest = np.ceil(threshold * p_size - _EPS).astype(np.int64)
    lo = np.searchsorted(i_key, p_rank * width + smallest, "left")
    count = np.searchsorted(i_key, p_rank * width + p_size, "right") - lo
    return _Probes(i_row, i_pos, p_row, p_pos, lo, count)


def _candidate_keys(
    words: _Words, sketch: UInt64Array, probes: _Probes, threshold: float
) -> Int64Array | None:
    """The candidate pairs that pass the positional and sketch filters (2 and 3), as unique keys
    ``i * n + j`` with i < j; None when there are none. Works in chunks to bound memory."""
    import numpy as np

    sizes = words.sizes
    n = len(sizes)
    i_row, i_pos, p_row, p_pos, lo, count = probes
    cumulative = np.cumsum(count)
    found: list[Any] = []
    begin = 0
    while begin < len(p_row):
        done = int(cumulative[begin - 1]) if begin else 0
        end = max(begin + 1, int(np.searchsorted(cumulative, done + _CHUNK, "right")))
        c = count[begin:end]
        k = int(c.sum())
        if k:
            pi = np.repeat(np.arange(begin, end), c)
            ii = np.repeat(lo[begin:end] - (np.cumsum(c) - c), c) + np.arange(k)
            x, y = p_row[pi], i_row[ii]
            sx, sy = sizes[x], sizes[y]
            need = np.ceil(threshold / (1 + threshold) * (sx + sy) - _EPS)
            keep = (sy < sx) | (y < x)  # each pair once: the smaller set is the indexed one
            keep &= 1 + np.minimum(sx - p_pos[pi] - 1, sy - i_pos[ii] - 1) >= need
            x, y, need = x[keep], y[keep], need[keep]
            union_bits = np.bitwise_count(sketch[x] | sketch[y]).sum(axis=1).astype(np.int64)
            keep = sizes[x] + sizes[y] - union_bits >= need
            found.append(np.minimum(x[keep], y[keep]) * n + np.maximum(x[keep], y[keep]))
        begin = end
    if not found:
        return None
    keys: Int64Array = np.unique(np.concatenate(found))
    return keys


def _verified_pairs(
    keys: Int64Array, token_lists: Sequence[Sequence[int]], threshold: float
) -> list[tuple[int, int, float]]:
    """The candidates whose exact Jaccard reaches the threshold (step 4), with it."""
    n = len(token_lists)
    sets: dict[int, frozenset[int]] = {}
    pairs: list[tuple[int, int, float]] = []
    for i, j in zip((keys // n).tolist(), (keys % n).tolist(), strict=True):
        a = sets.get(i) or sets.setdefault(i, frozenset(token_lists[i]))
        b = sets.get(j) or sets.setdefault(j, frozenset(token_lists[j]))
        inter = len(a & b)
        similarity = inter / (len(a) + len(b) - inter)
        if similarity >= threshold - _EPS:
            pairs.append((i, j, round(similarity, 6)))
    return pairs


class UnionFind:
    """Disjoint sets over 0..n-1; joining two sets keeps the smaller root."""

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
