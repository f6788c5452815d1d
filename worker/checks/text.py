"""Text helpers shared by the checks: normalisation, token F1, refusal phrases, and the key
under which two answers count as the same."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

from worker.taskspec import TaskSpec, canonical_output, parse_output

_WORD = re.compile(r"\w+", re.UNICODE)


def normalise_text(text: str) -> str:
    """NFKC, case-folded, punctuation and symbols removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(_WORD.findall(text)).replace("_", " ").strip()


def token_f1(a: str, b: str) -> float:
    """Bag-of-words F1 between two texts (SQuAD style) after :func:`normalise_text`."""
    ta = normalise_text(a).split()
    tb = normalise_text(b).split()
    if not ta and not tb:
        return 1.0
    if not ta or not tb:
        return 0.0
    common = sum((Counter(ta) & Counter(tb)).values())
    if common == 0:
        return 0.0
    precision = common / len(ta)
    recall = common / len(tb)
    return 2 * precision * recall / (precision + recall)


# Refusal phrases, matched against the normalised *start* of an output (apologies and "I can't"
# lead a refusal; the same words inside a dialogue summary are not one). Phrases in
# _REFUSAL_ANYWHERE are distinctive enough to match anywhere. Lists cover English plus the
# commonest phrasings in French, German, Spanish, Portuguese, Italian, Dutch, Chinese and
# Japanese; extend them here, in normalised form (lowercase, no punctuation).
REFUSAL_PREFIXES: tuple[str, ...] = (
    # English
    "i m sorry",
    "i am sorry",
    "sorry i can",
    "sorry but",
    "i apologize",
    "i apologise",
    "i can t",
    "i cannot",
    "i can not",
    "i won t",
    "i will not",
    "i m unable",
    "i am unable",
    "i m not able",
    "i am not able",
    "unfortunately i",
    "i must decline",
    "i refuse",
    "as an ai",
    "i don t have access",
    "i do not have access",
    "i m not comfortable",
    # French
    "je suis désolé",
    "je suis désolée",
    "désolé",
    "désolée",
    "je ne peux pas",
    "je ne suis pas en mesure",
    # German
    "es tut mir leid",
    "entschuldigung",
    "ich kann nicht",
    "ich kann ihnen nicht",
    "ich kann dir nicht",
    "leider kann ich",
    # Spanish
    "lo siento",
    "no puedo",
    "lamentablemente no puedo",
    # Portuguese
    "desculpe",
    "sinto muito",
    "não posso",
    "infelizmente não posso",
    # Italian
    "mi dispiace",
    "non posso",
    # Dutch
    "het spijt me",
    "sorry ik kan",
    "ik kan niet",
    # Chinese (normalise_text keeps CJK runs as one "word")
    "抱歉",
    "对不起",
    "很抱歉",
    "我无法",
    "我不能",
    # Japanese
    "申し訳",
    "すみません",
)
REFUSAL_ANYWHERE: tuple[str, ...] = (
    "as an ai language model",
    "as a large language model",
    "i cannot comply",
    "i can t comply",
    "i can t assist with that",
    "i cannot assist with that",
    "i can t help with that",
    "i cannot help with that",
    "against my guidelines",
    "violates my guidelines",
)


def refusal_phrase(text: str) -> str | None:
    """The refusal phrase an output starts with (or contains, for the distinctive ones)."""
    norm = normalise_text(text.replace("\u2019", "'"))
    if not norm:
        return None
    padded = f" {norm} "
    for phrase in REFUSAL_PREFIXES:
        # Whole words ("i can t" must not match "i can take"), except for CJK phrases, which
        # are not separated by spaces.
        if _is_cjk(phrase[-1]) and norm.startswith(phrase):
            return phrase
        if padded.startswith(f" {phrase} "):
            return phrase
    for phrase in REFUSAL_ANYWHERE:
        if f" {phrase} " in padded:
            return phrase
    return None


def _is_cjk(char: str) -> bool:
    return ord(char) >= 0x2E80


def shorten(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def comparable_value(spec: TaskSpec, raw: str) -> str | None:
    """A key under which two answers count as "the same answer" for this task kind: the label,
    canonical JSON, or normalised text; None when the answer does not parse."""
    parsed = parse_output(spec, raw)
    if spec.output_kind == "text":
        return normalise_text(raw) if parsed.ok else None
    if parsed.value is None:
        return None
    if spec.output_kind == "json" and not parsed.ok:
        return None
    return canonical_output(spec, parsed.value)
