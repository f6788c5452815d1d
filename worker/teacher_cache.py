"""Content-addressed cache keys for teacher calls, and a small in-memory cache.

The key is the SHA-256 of canonical JSON over everything that changes the answer: the provider
kind, the endpoint (base URL, or the local model path), the model, the generation parameters,
the rendered messages, the sample index and the output schema/labels. It deliberately leaves out
the credential (two keys for the same account get the same answers) and the caller's
``custom_id``. A second run over the same inputs and settings finds every answer here; a run
resumed after a crash finds everything that was answered before it.
"""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any

from worker.teachers.base import ProviderConfig, TeacherRequest, TeacherResponse

CACHE_KEY_VERSION = "distillery.teacher-cache.v1"


def _normalise_base_url(config: ProviderConfig) -> str:
    if config.kind == "local_hf":
        return f"local:{config.local_model_path}"
    url = config.base_url.strip().rstrip("/")
    if not url:
        return ""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    host, slash, path = rest.partition("/")
    return f"{scheme.lower()}://{host.lower()}{slash}{path}"


def cache_material(config: ProviderConfig, request: TeacherRequest) -> dict[str, Any]:
    """The exact structure that is hashed (useful to show why two keys differ)."""
    return {
        "v": CACHE_KEY_VERSION,
        "provider": config.kind,
        "endpoint": _normalise_base_url(config),
        "model": request.model,
        "params": {
            # 0 and 0.0 must hash the same
            "temperature": float(request.temperature),
            "max_tokens": int(request.max_tokens),
            "logprobs": bool(request.want_logprobs),
        },
        "messages": [
            {"role": str(m.get("role", "")), "content": str(m.get("content", ""))}
            for m in request.messages
        ],
        "sample_index": int(request.sample_index),
        "output": {
            "kind": request.output_kind,
            "schema": request.json_schema if request.output_kind == "json" else None,
            "labels": list(request.label_set) if request.output_kind == "label" else None,
        },
    }


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def cache_key(config: ProviderConfig, request: TeacherRequest) -> str:
    """64 hex characters."""
    material = canonical_json(cache_material(config, request))
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


class InMemoryTeacherCache:
    """A thread-safe dict cache with the runner's callback shapes (``lookup``, ``store``).

    The Django side uses a database table with the same two operations."""

    def __init__(self) -> None:
        self._data: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def lookup(self, key: str) -> TeacherResponse | None:
        with self._lock:
            data = self._data.get(key)
        return None if data is None else TeacherResponse.from_json(data)

    def store(self, key: str, response: TeacherResponse) -> None:
        if response.error is not None:
            return
        with self._lock:
            self._data[key] = response.to_json()

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)
