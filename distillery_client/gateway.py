"""Calling a task through Distillery's gateway from an application: plain httpx, no Django.

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

import httpx


class DistilleryError(Exception):
    """The API refused or failed: ``status``, ``detail`` and per-field ``errors``."""

    def __init__(
        self, status: int, detail: str, errors: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail
        self.errors = errors or []


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


class Distillery:
    """A client for one Distillery server and team token; reuses its HTTP connections."""

    def __init__(self, url: str, token: str, *, timeout: float = 60.0) -> None:
        self.base = url.rstrip("/")
        if not self.base.endswith("/api/v1"):
            self.base += "/api/v1"
        self.http = httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Distillery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def infer(
        self, project: str, inputs: dict[str, Any], *, deadline_ms: int | None = None
    ) -> InferResult:
        """The answer to one input of the project's task (``project`` is its slug)."""
        return self._post(project, inputs, deadline_ms)[0]

    def infer_batch(
        self, project: str, inputs: list[dict[str, Any]], *, deadline_ms: int | None = None
    ) -> list[InferResult]:
        """Answers to up to 100 inputs, in order."""
        return self._post(project, inputs, deadline_ms)

    def _post(self, project: str, inputs: Any, deadline_ms: int | None) -> list[InferResult]:
        body: dict[str, Any] = {"inputs": inputs}
        if deadline_ms is not None:
            body["deadline_ms"] = deadline_ms
        reply = self.http.post(f"{self.base}/projects/{project}/infer", json=body)
        if reply.status_code != 200:
            try:
                data = reply.json()
            except ValueError:
                data = {"detail": reply.text[:500]}
            raise DistilleryError(
                reply.status_code, str(data.get("detail", "")), data.get("errors")
            )
        return [InferResult.from_json(r) for r in reply.json()["results"]]
