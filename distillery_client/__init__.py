"""Distillery's Python client (no Django): ``from distillery_client import Distillery``."""

from distillery_client.gateway import Distillery, DistilleryError, InferResult

__all__ = ["Distillery", "DistilleryError", "InferResult"]
