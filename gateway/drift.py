"""Has the input mix moved away from what the student was trained on?

Three signals, each recomputable from stored rows: the teacher's label distribution on recent
traffic vs the training version's (total variation distance), the input length (median
characters, recent vs training), and the share of words in recent inputs that never occur in the
training version's train split (the "unseen vocabulary" share, per request, stored when the
request is recorded).
"""

from __future__ import annotations

import re
import statistics
import threading
import time
from collections import Counter
from typing import Any

from dataset_versions.models import DatasetVersion

WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
VOCAB_TTL_S = 600
# Thresholds the page uses to say "the input mix moved".
LABEL_SHIFT_TVD = 0.2
LENGTH_RATIO = 1.5
UNSEEN_SHARE = 0.25


def words(text: str) -> list[str]:
    return [w.lower() for w in WORD.findall(text)]


class _Profiles:
    """The training version's profile per project (vocabulary, labels, lengths), cached."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.found: dict[int, tuple[float, dict[str, Any] | None]] = {}

    def get(self, project_id: int) -> dict[str, Any] | None:
        with self.lock:
            hit = self.found.get(project_id)
        if hit is not None and time.monotonic() - hit[0] < VOCAB_TTL_S:
            return hit[1]
        profile = training_profile(project_id)
        with self.lock:
            self.found[project_id] = (time.monotonic(), profile)
        return profile


_PROFILES = _Profiles()


def training_profile(project_id: int) -> dict[str, Any] | None:
    version = DatasetVersion.objects.filter(project_id=project_id).order_by("-created_at").first()
    if version is None:
        return None
    vocab: set[str] = set()
    labels: Counter[str] = Counter()
    lengths: list[int] = []
    for inputs, output in version.items.filter(split="train").values_list("inputs", "output"):
        text = " ".join(str(v) for v in (inputs or {}).values())
        vocab.update(words(text))
        lengths.append(len(text))
        labels[output] += 1
    if not lengths:
        return None
    return {
        "version": version.name,
        "vocab": frozenset(vocab),
        "labels": labels,
        "median_chars": statistics.median(lengths),
    }


def unseen_share(project_id: int, inputs: dict[str, Any]) -> float | None:
    profile = _PROFILES.get(project_id)
    if profile is None:
        return None
    seen = words(" ".join(str(v) for v in inputs.values()))
    if not seen:
        return 0.0
    return sum(1 for w in seen if w not in profile["vocab"]) / len(seen)


def label_shift(train: Counter[str], recent: Counter[str]) -> float | None:
    """Total variation distance between two label distributions (0 same, 1 disjoint)."""
    n_train, n_recent = sum(train.values()), sum(recent.values())
    if not n_train or not n_recent:
        return None
    keys = set(train) | set(recent)
    return 0.5 * sum(abs(train[k] / n_train - recent[k] / n_recent) for k in keys)


def drift_signals(
    project_id: int, *, recent_labels: Counter[str], recent_chars: list[int], unseen: list[float]
) -> dict[str, Any]:
    """The page's drift block: each signal, its value, and whether it crossed its threshold."""
    profile = _PROFILES.get(project_id)
    if profile is None:
        return {"version": None, "signals": []}
    signals = []
    shift = label_shift(profile["labels"], recent_labels)
    if shift is not None:
        signals.append(
            {
                "name": "teacher label distribution",
                "value": f"{shift:.2f} total variation distance",
                "moved": shift > LABEL_SHIFT_TVD,
            }
        )
    if recent_chars:
        recent_median = statistics.median(recent_chars)
        ratio = recent_median / max(1.0, float(profile["median_chars"]))
        signals.append(
            {
                "name": "input length",
                "value": f"median {recent_median:.0f} chars vs {profile['median_chars']:.0f} "
                "in training",
                "moved": ratio > LENGTH_RATIO or ratio < 1 / LENGTH_RATIO,
            }
        )
    if unseen:
        share = sum(unseen) / len(unseen)
        signals.append(
            {
                "name": "unseen vocabulary",
                "value": f"{share:.0%} of words not in the training split",
                "moved": share > UNSEEN_SHARE,
            }
        )
    return {"version": profile["version"], "signals": signals}
