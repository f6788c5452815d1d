"""The rows and parameters of a dataset version: sources, splits, candidate and frozen rows, the
freeze parameters and the error every part of :mod:`worker.datasets` raises."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Source = Literal["teacher", "teacher_edited", "human_reference"]
SOURCES: tuple[Source, ...] = ("teacher", "teacher_edited", "human_reference")
#: Rows a person wrote or labelled; the others are synthetic (the teacher's, possibly edited).
REAL_SOURCES: frozenset[str] = frozenset({"human_reference"})
Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")
RowId = str | int

FORMAT_VERSION = "distillery-dataset-v1"


class DatasetError(ValueError):
    """The rows or parameters cannot make a dataset version. ``field`` names the parameter at
    fault (the form field a page shows the error on), or is None when the fault is in the rows
    (the message then names the row or line); ``message`` says what is wrong, without the
    field."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class DatasetRow:
    """One candidate row: the input fields, the output to teach, where it came from, and the
    review decisions that let it in (recorded so a version says exactly what it was made of)."""

    row_id: RowId
    inputs: Mapping[str, Any]
    output: str
    source: Source
    decision_ids: tuple[RowId, ...] = ()
    # The input was written by a teacher (synthetic inputs), not taken from production: such
    # rows go to the training split only, up to FreezeParams.max_synthetic_train_share.
    synthetic_input: bool = False
    # Training signals beyond the answer (optional): the teacher's reason, and its distribution
    # over the label set ({label: probability}; None for edited rows and human references).
    rationale: str = ""
    label_distribution: Mapping[str, float] | None = None

    @classmethod
    def coerce(cls, value: DatasetRow | Sequence[Any]) -> DatasetRow:
        if isinstance(value, DatasetRow):
            return value
        if len(value) not in (4, 5):
            raise DatasetError(
                "row: expected (row_id, inputs, output, source[, decision_ids]), "
                f"got {len(value)} items"
            )
        row_id, inputs, output, source, *rest = value
        decisions = tuple(rest[0]) if rest and rest[0] is not None else ()
        return cls(row_id, inputs, output, source, decisions)


@dataclass(frozen=True)
class FrozenRow:
    row_id: RowId
    inputs: Mapping[str, Any]
    output: str
    source: Source
    decision_ids: tuple[RowId, ...]
    split: Split
    group: int  # rows sharing a group are duplicates or near-duplicates of one another
    synthetic_input: bool = False
    rationale: str = ""
    label_distribution: Mapping[str, float] | None = None


@dataclass(frozen=True)
class FreezeParams:
    """Everything that shapes a version; all of it goes into the content hash.

    * ``train``/``validation``/``test``: split shares, summing to 1.
    * ``real_ratio``: the share of human-reference ("real") rows among all rows; the side in
      excess is down-sampled with the seed. None keeps every row; 0 drops real rows; 1 keeps
      only real rows.
    * ``max_synthetic_train_share``: rows whose input a teacher wrote (``synthetic_input``)
      are never in validation or test (a group holding one goes to train), and make at most
      this share of the training split; the excess is down-sampled with the seed. None: no cap
      (still train only); 0: none of them.
    * ``stratify``: stratify splits by label (label tasks only).
    * ``near_duplicate_threshold``: token-set Jaccard at or above which inputs are
      near-duplicates. ``near_duplicates``: "group" keeps them in one split; "report" only lists
      the ones that straddle splits.
    * ``on_invalid``: "error" refuses rows whose output does not parse for the task or whose
      input lacks a field; "skip" leaves them out and lists them in ``FrozenVersion.skipped``.
    """

    seed: int = 0
    train: float = 0.8
    validation: float = 0.1
    test: float = 0.1
    real_ratio: float | None = None
    stratify: bool = True
    near_duplicate_threshold: float = 0.8
    near_duplicates: Literal["group", "report"] = "group"
    on_invalid: Literal["error", "skip"] = "error"
    max_synthetic_train_share: float | None = None

    def validate(self) -> None:
        for name in SPLITS:
            share = getattr(self, name)
            if isinstance(share, bool) or not isinstance(share, int | float) or share < 0:
                raise DatasetError("must be a share between 0 and 1", field=name)
        if abs(self.train + self.validation + self.test - 1.0) > 1e-6:
            raise DatasetError("train + validation + test must add up to 1", field="train")
        if self.train <= 0:
            raise DatasetError("the training split cannot be empty", field="train")
        if self.real_ratio is not None and not 0.0 <= self.real_ratio <= 1.0:
            raise DatasetError(
                "must be between 0 and 1 (or empty to keep all rows)", field="real_ratio"
            )
        share = self.max_synthetic_train_share
        if share is not None and not 0.0 <= share <= 1.0:
            raise DatasetError(
                "must be between 0 and 1 (or empty for no cap)", field="max_synthetic_train_share"
            )
        if not 0.0 < self.near_duplicate_threshold <= 1.0:
            raise DatasetError("must be above 0 and at most 1", field="near_duplicate_threshold")
        if self.near_duplicates not in ("group", "report"):
            raise DatasetError("must be 'group' or 'report'", field="near_duplicates")
        if self.on_invalid not in ("error", "skip"):
            raise DatasetError("must be 'error' or 'skip'", field="on_invalid")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise DatasetError("must be an integer", field="seed")


def id_key(value: RowId) -> tuple[int, int, str]:
    if isinstance(value, int):
        return (0, value, "")
    return (1, 0, str(value))
