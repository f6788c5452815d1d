"""Label confidence from token logprobs.

Method (documented for reviewers; the number is shown next to each label):

The answer is a label, written as a few tokens. At each output position we have the chosen token's
logprob and the top-k alternatives. We walk the answer from its first token while more than one
label is still possible given the text so far. At each such position the alternatives are split
into those that continue *some still-possible label* and those that do not (free text, other
words). The position contributes

    p(chosen token) / sum of p(alternative) over the label-continuing alternatives

(the chosen token always counts in the denominator). The confidence is the product over those
positions: the probability that the model picks this label *given that it answers with one of the
labels*, truncated to the top-k alternatives that the API returns. Once only one label remains
possible the rest of its tokens are forced and add nothing. For a label whose first token already
sets it apart (the common case) this is simply its first token's share of the label mass.

If the answer is not exactly one of the labels (after trimming whitespace), there is no confidence.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...]  # (token, logprob), most likely first


def label_confidence(
    tokens: Sequence[TokenLogprob], label_set: Sequence[str]
) -> tuple[float | None, list[dict[str, Any]]]:
    """Return (confidence or None, the positions used, as JSON-ready dicts)."""
    labels = [label for label in label_set if label]
    tokens = answer_line(tokens)
    full = "".join(t.token for t in tokens).strip()
    if not tokens or full not in labels:
        return None, [_position_json(t) for t in tokens[:5]]

    text = ""
    confidence = 1.0
    used: list[dict[str, Any]] = []
    for position in tokens:
        prefix = text.lstrip()
        possible = [label for label in labels if label.startswith(prefix)]
        if prefix and len(possible) <= 1:
            break

        def continues(candidate: str, prefix: str = prefix, possible: list[str] = possible) -> bool:
            extended = (prefix + candidate).lstrip() if not prefix else prefix + candidate
            return any(
                label.startswith(extended)
                or (extended.startswith(label) and not extended[len(label) :].strip())
                for label in possible
            )

        chosen_p = math.exp(position.logprob)
        mass = 0.0
        seen_chosen = False
        for token, logprob in position.top:
            if token == position.token:
                seen_chosen = True
            if continues(token):
                mass += math.exp(logprob)
        if not seen_chosen:
            mass += chosen_p
        if mass > 0:
            confidence *= min(1.0, chosen_p / mass)
        used.append(_position_json(position))
        text += position.token
    return confidence, used


def answer_line(tokens: Sequence[TokenLogprob]) -> list[TokenLogprob]:
    """The tokens of the first line (the answer, when a rationale follows it on the next)."""
    kept: list[TokenLogprob] = []
    text = ""
    for token in tokens:
        if "\n" in token.token and text.strip():
            before = token.token.split("\n", 1)[0]
            if before.strip():
                kept.append(TokenLogprob(before, token.logprob, token.top))
            break
        kept.append(token)
        text += token.token
    return kept


def _position_json(position: TokenLogprob) -> dict[str, Any]:
    return {
        "token": position.token,
        "logprob": position.logprob,
        "top": [{"token": t, "logprob": lp} for t, lp in position.top],
    }


def label_distribution(
    positions: Sequence[Mapping[str, Any]] | None, label_set: Sequence[str]
) -> dict[str, float] | None:
    """The teacher's distribution over the label set, from the positions ``label_confidence``
    used (stored as ``top_logprobs``), or None when the answer was not exactly a label.

    Method: walking the chosen answer as ``label_confidence`` does, at each position where
    more than one label is still possible, every top-k alternative that continues some label
    takes its share of the label-continuing mass (times the probability of the chosen path so
    far) to the labels it leads to - split evenly when it leads to several, since the API says
    nothing about what would have followed it. The chosen label keeps the chosen path's
    probability (and what alternatives spelling it another way lead to). Labels no top-k
    alternative reaches get 0. The result sums to 1; the chosen label's entry equals the
    confidence when every alternative leads to one other label (the common case: a label's
    first token sets it apart), and is at least the confidence otherwise.
    """
    if not positions:
        return None
    tokens = [
        TokenLogprob(
            token=str(p.get("token", "")),
            logprob=float(p.get("logprob", 0.0)),
            top=tuple(
                (str(t.get("token", "")), float(t.get("logprob", 0.0))) for t in p.get("top", [])
            ),
        )
        for p in positions
    ]
    labels = [label for label in label_set if label]
    text = "".join(t.token for t in tokens)
    # The stored positions stop once one label remains: finish the chosen path by prefix.
    prefix_all = text.strip()
    chosen = [label for label in labels if label.startswith(prefix_all)]
    exact = [label for label in chosen if label == prefix_all]
    if exact:
        chosen = exact
    if len(chosen) != 1:
        return None
    mass: dict[str, float] = dict.fromkeys(labels, 0.0)
    path = 1.0
    text = ""
    for position in tokens:
        prefix = text.lstrip()
        possible = [label for label in labels if label.startswith(prefix)]
        if prefix and len(possible) <= 1:
            break
        options = dict(position.top)
        options.setdefault(position.token, position.logprob)
        leads: dict[str, tuple[float, list[str]]] = {}
        for token, logprob in options.items():
            extended = (prefix + token).lstrip()
            reached = [
                label
                for label in possible
                if label.startswith(extended)
                or (extended.startswith(label) and not extended[len(label) :].strip())
            ]
            if reached:
                leads[token] = (math.exp(logprob), reached)
        total = sum(p for p, _ in leads.values())
        if total <= 0 or position.token not in leads:
            break
        for token, (p, reached) in leads.items():
            if token == position.token:
                continue
            for label in reached:
                mass[label] += path * p / total / len(reached)
        path *= leads[position.token][0] / total
        text += position.token
    mass[chosen[0]] += path
    norm = sum(mass.values())
    return {label: p / norm for label, p in mass.items() if p > 0} if norm > 0 else None
