"""Tokens and token F1, shared by the JSON field scores and ROUGE."""

from __future__ import annotations

import re
from collections import Counter

_WORD = re.compile(r"[^\W_]+")


def text_tokens(text: str) -> list[str]:
    """Lower-cased runs of letters/digits in any script (for token F1 and ROUGE).

    On ASCII text this is exactly rouge-score's default tokenizer (without stemming); unlike it,
    letters outside a-z (é, ж, 中) stay in the token instead of being deleted.
    """
    return _WORD.findall(text.lower())


def token_f1(prediction: str, reference: str) -> float:
    """Bag-of-tokens F1 (the SQuAD answer F1) between two strings.

    Two strings without tokens (e.g. "-" vs "-") score 1 if equal, else 0.
    """
    pred, ref = text_tokens(prediction), text_tokens(reference)
    if not pred or not ref:
        return 1.0 if prediction.strip() == reference.strip() else 0.0
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision = common / len(pred)
    recall = common / len(ref)
    return 2 * precision * recall / (precision + recall)
