"""Built-in responders of the fake provider, usable by name from the command line."""

from __future__ import annotations

import importlib
import re

from tests.fakes.provider_types import FakeRequest, Responder

_LABELS_LINE = re.compile(r"labels and nothing else:\s*(.+)$", re.MULTILINE)


def echo_responder(request: FakeRequest) -> str:
    return request.last_user_text


def first_label_responder(request: FakeRequest) -> str:
    """For label tasks rendered by worker.taskspec: answer the first label of the set."""
    match = _LABELS_LINE.search(request.last_user_text)
    if not match:
        return "ok"
    return match.group(1).split(",")[0].strip()


def responder_by_name(name: str) -> Responder:
    """``echo``, ``first_label``, ``constant:TEXT`` or ``package.module:function``."""
    if name == "echo":
        return echo_responder
    if name == "first_label":
        return first_label_responder
    if name.startswith("constant:"):
        text = name.split(":", 1)[1]
        return lambda _request: text
    module_name, _, attr = name.partition(":")
    if not attr:
        raise ValueError(f"unknown responder {name!r}")
    function: Responder = getattr(importlib.import_module(module_name), attr)
    return function
