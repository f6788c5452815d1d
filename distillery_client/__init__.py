"""Distillery's Python client and the `distillery` command line (no Django needed)."""

from distillery_client.client import ApiError, Distillery, JobFailed

__all__ = ["ApiError", "Distillery", "JobFailed"]
