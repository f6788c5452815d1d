"""Label metrics: accuracy with its interval, macro-F1, per-label scores and a confusion
matrix (scikit-learn)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from worker.metrics.rates import Rate, same_length, wilson_rate
from worker.taskspec import TaskSpec, normalise_label, parse_output

UNPARSEABLE = "(unparseable)"
"""Confusion-matrix column for predictions that are not a label of the set."""


@dataclass(frozen=True)
class LabelScore:
    label: str
    precision: float
    recall: float
    f1: float
    support: int  # reference rows with this label


@dataclass(frozen=True)
class LabelMetrics:
    n: int
    accuracy: Rate
    macro_f1: float
    macro_f1_labels: list[str]  # labels the macro average is over (seen in refs or predictions)
    per_label: list[LabelScore]
    confusion_rows: list[str]  # reference labels, label-set order, then unknown references
    confusion_columns: list[str]  # predicted labels: the rows, then UNPARSEABLE
    confusion_matrix: list[list[int]]  # [row = reference][column = prediction]
    unparseable: int
    predictions: list[str]  # parsed prediction per row (UNPARSEABLE when it did not parse)
    reference_source: str = ""
    kind: Literal["label"] = "label"

    @property
    def headline_name(self) -> str:
        return "accuracy"

    @property
    def headline(self) -> float:
        return self.accuracy.value

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def label_metrics(
    spec: TaskSpec,
    outputs: Sequence[str],
    references: Sequence[str],
    *,
    reference_source: str = "",
) -> LabelMetrics:
    """Metrics of raw model outputs against reference labels.

    Outputs are parsed with the task spec (so "Card arrival." counts as ``card_arrival``);
    anything that does not parse goes to the UNPARSEABLE column and counts as wrong. References
    are normalised the same way; a reference outside the label set is kept as its own row
    rather than dropped, so the matrix still adds up to n.

    Macro-F1 averages over the labels seen in the references or the predictions (scikit-learn's
    default set), excluding UNPARSEABLE: a label nobody used and nobody needed does not pull the
    average to zero, while unparseable answers still cost recall of the true label.
    """
    from sklearn.metrics import confusion_matrix, f1_score

    same_length(outputs, references, "outputs", "references")
    y_true, extra = _reference_labels(spec, references)
    y_pred = _predicted_labels(spec, outputs)
    rows = list(spec.label_set) + extra
    columns = [*rows, UNPARSEABLE]
    n = len(y_true)
    if n == 0:
        return _empty_label_metrics(rows, columns, reference_source)
    correct = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == p)
    seen = set(y_true) | set(y_pred)
    macro_labels = [label for label in rows if label in seen]
    macro = f1_score(y_true, y_pred, labels=macro_labels, average="macro", zero_division=0)
    # Square over rows + UNPARSEABLE; the UNPARSEABLE reference row is always empty: drop it.
    matrix = confusion_matrix(y_true, y_pred, labels=columns)[: len(rows)]
    return LabelMetrics(
        n=n,
        accuracy=wilson_rate(correct, n),
        macro_f1=float(macro),
        macro_f1_labels=macro_labels,
        per_label=_per_label_scores(y_true, y_pred, rows),
        confusion_rows=rows,
        confusion_columns=columns,
        confusion_matrix=[[int(c) for c in row] for row in matrix],
        unparseable=sum(1 for p in y_pred if p == UNPARSEABLE),
        predictions=y_pred,
        reference_source=reference_source,
    )


def _reference_labels(spec: TaskSpec, references: Sequence[str]) -> tuple[list[str], list[str]]:
    """The normalised reference label per row, and the references outside the label set (each
    once, in first-seen order), which become extra confusion-matrix rows."""
    y_true: list[str] = []
    extra: list[str] = []
    for ref in references:
        label = normalise_label(ref or "", spec.label_set)
        if label is None:
            label = (ref or "").strip()
            if label not in extra:
                extra.append(label)
        y_true.append(label)
    return y_true, extra


def _predicted_labels(spec: TaskSpec, outputs: Sequence[str]) -> list[str]:
    """The parsed label per output, UNPARSEABLE where it did not parse."""
    y_pred: list[str] = []
    for out in outputs:
        parsed = parse_output(spec, out or "")
        y_pred.append(parsed.value if parsed.ok else UNPARSEABLE)
    return y_pred


def _empty_label_metrics(
    rows: list[str], columns: list[str], reference_source: str
) -> LabelMetrics:
    """The metrics of zero rows: every score 0, the matrix all zeros, accuracy's interval [0, 1]."""
    return LabelMetrics(
        n=0,
        accuracy=wilson_rate(0, 0),
        macro_f1=0.0,
        macro_f1_labels=[],
        per_label=[LabelScore(label, 0.0, 0.0, 0.0, 0) for label in rows],
        confusion_rows=rows,
        confusion_columns=columns,
        confusion_matrix=[[0] * len(columns) for _ in rows],
        unparseable=0,
        predictions=[],
        reference_source=reference_source,
    )


def _per_label_scores(y_true: list[str], y_pred: list[str], rows: list[str]) -> list[LabelScore]:
    """Precision, recall, F1 and support of every row label (scikit-learn)."""
    from sklearn.metrics import precision_recall_fscore_support

    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=rows, average=None, zero_division=0
    )
    return [
        LabelScore(
            label=label,
            precision=float(precision[i]),
            recall=float(recall[i]),
            f1=float(f1[i]),
            support=int(support[i]),
        )
        for i, label in enumerate(rows)
    ]
