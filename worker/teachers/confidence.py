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
from collections.abc import Sequence
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


def _position_json(position: TokenLogprob) -> dict[str, Any]:
    return {
        "token": position.token,
        "logprob": position.logprob,
        "top": [{"token": t, "logprob": lp} for t, lp in position.top],
    }
