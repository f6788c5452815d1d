"""What a dataset version offers beyond its answers - the teacher's rationales and its label
distributions - and whether a fine-tune may train on them (worker.training_signals)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ValidationError

from dataset_versions.models import DatasetItem, DatasetVersion
from worker.training_signals import soft_label_unavailable_reason


@dataclass(frozen=True)
class TrainingSignals:
    n_train: int
    with_rationale: int
    with_distribution: int
    rationale_unavailable: str  # "" when the option can be used, else why not
    soft_labels_unavailable: str


def training_signals(*, version: DatasetVersion) -> TrainingSignals:
    train = DatasetItem.objects.filter(version=version, split="train")
    n_train = train.count()
    with_rationale = train.exclude(rationale="").count()
    with_distribution = train.filter(label_distribution__isnull=False).count()
    rationale_reason = (
        ""
        if with_rationale
        else "no training row carries a rationale: ask the teacher for one in the task "
        "(“answer first line, short reason after”) or import logs with a rationale column, "
        "then freeze a new version"
    )
    return TrainingSignals(
        n_train=n_train,
        with_rationale=with_rationale,
        with_distribution=with_distribution,
        rationale_unavailable=rationale_reason,
        soft_labels_unavailable=soft_label_unavailable_reason(
            output_kind=version.project.output_kind,
            n_train=n_train,
            n_with_distribution=with_distribution,
        ),
    )


def check_training_signals(*, version: DatasetVersion, chosen: dict[str, Any]) -> None:
    """Refuse an option the version cannot feed (the form disables it; this is the service's
    own check), naming the field."""
    signals = training_signals(version=version)
    if chosen.get("rationale_training", "off") != "off" and signals.rationale_unavailable:
        raise ValidationError({"rationale_training": signals.rationale_unavailable})
    if float(chosen.get("soft_label_weight") or 0) > 0 and signals.soft_labels_unavailable:
        raise ValidationError({"soft_label_weight": signals.soft_labels_unavailable})
