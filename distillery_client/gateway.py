"""What the gateway answers (``Distillery.infer`` in distillery_client.client): plain data.

from distillery_client import Distillery

d = Distillery("https://distillery.example.com", token="dst_…")   # a token with `serve`
r = d.infer("ticket-intents", {"text": "my card has not arrived"})
r.answer, r.answered_by, r.latency_ms, r.cost_usd

d.infer_batch("ticket-intents", [{"text": "…"}, …])   # up to 100 inputs
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any


@dataclass(frozen=True)
class InferResult:
    answer: Any  # the parsed answer: a label, a JSON object or text
    answered_by: str  # "teacher" | "student"
    latency_ms: float
    cost_usd: Decimal
    from_cache: bool = False
    reason: str = ""
    confidence: float | None = None
    parse_error: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InferResult:
        return cls(
            answer=data.get("answer"),
            answered_by=str(data.get("answered_by", "")),
            latency_ms=float(data.get("latency_ms") or 0),
            cost_usd=Decimal(str(data.get("cost_usd") or 0)),
            from_cache=bool(data.get("from_cache")),
            reason=str(data.get("reason") or ""),
            confidence=data.get("confidence"),
            parse_error=str(data.get("parse_error") or ""),
        )
