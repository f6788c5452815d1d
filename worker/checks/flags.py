"""Flag codes and the :class:`Flag` a check raises: the reasons a reviewer sees in the queue."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

UNPARSEABLE = "unparseable"
SCHEMA_INVALID = "schema_invalid"
LABEL_OUTSIDE_SET = "label_outside_set"
EMPTY = "empty"
REFUSAL = "refusal"
LENGTH_OUTLIER = "length_outlier"
REPEATED_OUTPUT = "repeated_output"
SELF_INCONSISTENT = "self_inconsistent"
REFERENCE_DISAGREEMENT = "reference_disagreement"
LOW_CONFIDENCE = "low_confidence"
JUDGE_LOW_SCORE = "judge_low_score"
JUDGE_ERROR = "judge_error"

#: Every flag code, with the short title the queue can show in its filter.
FLAG_CODES: dict[str, str] = {
    UNPARSEABLE: "Unparseable output",
    SCHEMA_INVALID: "JSON fails the task schema",
    LABEL_OUTSIDE_SET: "Label outside the label set",
    EMPTY: "Empty output",
    REFUSAL: "Refusal-like output",
    LENGTH_OUTLIER: "Unusual length",
    REPEATED_OUTPUT: "Same output for many inputs",
    SELF_INCONSISTENT: "Samples disagree",
    REFERENCE_DISAGREEMENT: "Disagrees with the human reference",
    LOW_CONFIDENCE: "Low confidence",
    JUDGE_LOW_SCORE: "Low judge score",
    JUDGE_ERROR: "Judge could not score",
}


@dataclass(frozen=True)
class Flag:
    """One reason to look at an output. ``score`` is the number behind the flag, if any
    (robust z-score, majority share, similarity, confidence, normalised judge score)."""

    code: str
    message: str
    score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "score": self.score}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Flag:
        score = data.get("score")
        return cls(
            code=str(data["code"]),
            message=str(data.get("message", "")),
            score=None if score is None else float(score),
        )
