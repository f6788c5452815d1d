"""Label tasks' answers without a generation loop: label token sequences as a prefix tree
(``LabelTrie``), greedy choices among a node's children read off gathered logits (``choose``,
with the margins that say whether a choice is clear of a near-tie), and the LogitsProcessors
that record margins or constrain ``generate`` to the label set. Used by worker.inference."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Choice",
    "LabelTrie",
    "Scores",
    "Walk",
    "choose",
    "length_sorted_batches",
    "margin_recorder",
    "scores_at",
    "trie_processor",
]


def length_sorted_batches(encoded: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar prompt length (longest first)."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@dataclass
class LabelTrie:
    """Label token sequences as a prefix tree. Node 0 is the root (the end of the prompt)."""

    labels: tuple[str, ...]
    tokens: list[int]  # token of each node (root: -1)
    parent: list[int]
    depth: list[int]
    children: list[dict[int, int]]  # token -> child node
    label_at: list[str | None]  # the label that ends at this node
    label_paths: list[list[int]]  # per label, its nodes from depth 1 down
    max_depth: int

    @classmethod
    def build(cls, labels: tuple[str, ...], sequences: list[list[int]]) -> LabelTrie:
        trie = cls(labels, [-1], [0], [0], [{}], [None], [], 0)
        for label, seq in zip(labels, sequences, strict=True):
            if not seq:
                raise ValueError(f"label {label!r} encodes to no tokens")
            node, path = 0, []
            for token in seq:
                child = trie.children[node].get(token)
                if child is None:
                    child = len(trie.tokens)
                    trie.tokens.append(token)
                    trie.parent.append(node)
                    trie.depth.append(trie.depth[node] + 1)
                    trie.children.append({})
                    trie.label_at.append(None)
                    trie.children[node][token] = child
                node = child
                path.append(node)
            trie.label_at[node] = label
            trie.label_paths.append(path)
            trie.max_depth = max(trie.max_depth, len(seq))
        return trie

    def subtree(self, node: int) -> list[int]:
        out, stack = [], [node]
        while stack:
            current = stack.pop()
            out.append(current)
            stack.extend(sorted(self.children[current].values(), reverse=True))
        return out


@dataclass
class Walk:
    tokens: list[int]
    constrained_ok: bool  # every constrained choice was clear of a near-tie
    free_path_ok: bool  # every token was also the clear arg-max of the whole vocabulary
    free_stop_ok: bool = False  # ...and so was ending the turn after the label
    # log P(these tokens, then the end-of-turn token chosen after them | prompt)
    logprob: float = 0.0

    def free_greedy_gives_this(self, max_new_tokens: int) -> bool:
        """Unconstrained greedy with this token budget would answer exactly this label: it
        takes the same tokens, then stops (end of turn, or the budget runs out right there)."""
        if not self.free_path_ok or len(self.tokens) > max_new_tokens:
            return False
        return self.free_stop_ok or len(self.tokens) == max_new_tokens


@dataclass(frozen=True)
class Choice:
    node: int  # chosen child node, or -1 for end of turn
    clear: bool  # margin to the best other allowed token >= tolerance
    is_free: bool  # also the whole-vocabulary arg-max, by >= tolerance
    logprob: float = 0.0  # the chosen token's log-probability (whole-vocabulary softmax)


@dataclass(frozen=True)
class Scores:
    """One position's logits, as far as a greedy choice over a label trie needs them."""

    values: dict[int, float]  # logit of each label token and end-of-turn token
    top_ids: tuple[int, int]  # the whole vocabulary's best two tokens
    top_values: tuple[float, float]
    # log of the sum of exp(logit) over the whole vocabulary: a token's log-probability is its
    # logit minus this (the full softmax, as the serving engine's confidence uses).
    log_total: float = 0.0


def scores_at(logits: Any, wanted: Sequence[int]) -> Any:
    """``Scores`` for every position of a (..., vocab) logits tensor, in nested lists of the
    same leading shape; one gather and one top-2 on the device, one copy back."""
    import torch

    index = torch.tensor(list(wanted), device=logits.device)
    picked = logits.index_select(-1, index).cpu().tolist()
    top = torch.topk(logits, 2, dim=-1)
    top_values, top_ids = top.values.cpu().tolist(), top.indices.cpu().tolist()
    totals = torch.logsumexp(logits.float(), dim=-1).cpu().tolist()

    def build(p: Any, v: Any, i: Any, t: Any) -> Any:
        if p and isinstance(p[0], list):
            return [build(a, b, c, d) for a, b, c, d in zip(p, v, i, t, strict=True)]
        return Scores(
            values=dict(zip(wanted, p, strict=True)),
            top_ids=(int(i[0]), int(i[1])),
            top_values=(float(v[0]), float(v[1])),
            log_total=float(t),
        )

    return build(picked, top_values, top_ids, totals)


def choose(
    scores: Scores, children: list[tuple[int, int]], eos: Sequence[int], tolerance: float
) -> Choice:
    """Greedy among allowed tokens (ties to the lowest id, like torch.argmax over a mask)."""
    allowed = sorted([(token, node) for token, node in children] + [(e, -1) for e in eos])
    values = [scores.values[t] for t, _ in allowed]
    best = max(range(len(values)), key=lambda k: (values[k], -k))
    token, node = allowed[best]
    best_value = values[best]
    if len(allowed) > 1:
        clear = best_value - max(v for k, v in enumerate(values) if k != best) >= tolerance
    else:
        clear = True
    free_best = scores.top_ids[0]
    is_free = (free_best == token or (node == -1 and free_best in eos)) and (
        best_value - scores.top_values[1] >= tolerance
    )
    return Choice(node=node, clear=clear, is_free=is_free, logprob=best_value - scores.log_total)


def margin_recorder(eos: Sequence[int] = ()) -> Any:
    """A LogitsProcessor that records each step's top-1 minus top-2 logit, per row. Given the
    end-of-turn ids, it also keeps (on the device) each step's log-probability of the arg-max
    token and of the best end-of-turn token: greedy's answer's log-probability, stop included,
    without another pass. It must be the only processor (greedy then takes the arg-max)."""
    import torch
    from transformers import LogitsProcessor

    class MarginRecorder(LogitsProcessor):
        def __init__(self) -> None:
            self.margins: list[torch.Tensor] = []
            self.best_logprobs: list[torch.Tensor] = []
            self.stop_logprobs: list[torch.Tensor] = []

        def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
            top = torch.topk(scores, 2, dim=-1).values
            self.margins.append((top[:, 0] - top[:, 1]).float().cpu())
            if eos:
                total = torch.logsumexp(scores.float(), dim=-1)
                stop = scores[:, list(eos)].float().max(dim=-1).values
                self.best_logprobs.append(top[:, 0].float() - total)
                self.stop_logprobs.append(stop - total)
            return scores

        def logprobs(self) -> tuple[list[list[float]], list[list[float]]]:
            """Per row, per step: the arg-max token's and the best stop token's log-prob."""
            if not self.best_logprobs:
                return [], []
            best = torch.stack(self.best_logprobs, dim=1).cpu().tolist()
            return best, torch.stack(self.stop_logprobs, dim=1).cpu().tolist()

    return MarginRecorder()


def trie_processor(trie: LabelTrie, prompt_length: int, eos: Sequence[int]) -> Any:
    """A LogitsProcessor that allows only tokens continuing a label (or end of turn after a
    complete label): greedy decoding constrained to the label set."""
    import torch
    from transformers import LogitsProcessor

    class TrieConstraint(LogitsProcessor):
        def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
            masked = torch.full_like(scores, float("-inf"))
            for row in range(input_ids.shape[0]):
                node = 0
                for token in input_ids[row, prompt_length:].tolist():
                    node = trie.children[node].get(int(token), -1)
                    if node < 0:
                        break
                if node < 0:  # already ended: let the generator pad
                    allowed = list(eos)
                else:
                    allowed = list(trie.children[node])
                    if trie.label_at[node] is not None:
                        allowed += list(eos)
                masked[row, allowed] = scores[row, allowed]
            return masked

    return TrieConstraint()
