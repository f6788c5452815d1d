"""Shared pytest fixtures. Register them in tests/conftest.py with
``pytest_plugins = ["tests.helpers.fixtures"]``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers.tiny_model import build_tiny_model

# Nothing in the test suite may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama causal LM + ChatML tokenizer, built once per test session.

    Read-only by convention: tests that change weights save to their own tmp_path.
    """
    return build_tiny_model(tmp_path_factory.mktemp("tiny_model") / "model")
