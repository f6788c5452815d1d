"""Distillery's Python client and the `distillery` command line (no Django needed)::

from distillery_client import Distillery

d = Distillery("https://distillery.example.com", token="dst_…")
r = d.infer("ticket-intents", {"text": "my card has not arrived"})
r.answer, r.answered_by, r.latency_ms, r.cost_usd
"""

from distillery_client.client import ApiError, Distillery, JobFailed
from distillery_client.gateway import InferResult

__all__ = ["ApiError", "Distillery", "InferResult", "JobFailed"]
