"""Frozen dataset versions: selection, leakage-safe splits, a content hash, stats and exports.

:func:`freeze` takes plain rows (approved teacher outputs, edited ones with the edit, human
reference rows) and returns a :class:`FrozenVersion`: every row with its split, a sha256 content
hash, stats for the stats page and a leakage report. Nothing here touches a database; the web
side stores what comes back.

The package is split by responsibility; every public name is re-exported here:

* :mod:`~worker.datasets.rows` — sources, splits, rows, :class:`FreezeParams`, :class:`DatasetError`;
* :mod:`~worker.datasets.near_duplicates` — input text and near-duplicate pairs;
* :mod:`~worker.datasets.leakage` — the leakage report;
* :mod:`~worker.datasets.freezing` — :func:`freeze`, splits, the content hash and stats;
* :mod:`~worker.datasets.exports` — streaming exports (chat JSONL, prompt/completion JSONL,
  formula-safe CSV) and their readers;
* :mod:`~worker.datasets.reviewers` — reviewer assignment and agreement.
"""

from worker.datasets.exports import (
    FORMULA_TRIGGERS,
    chat_messages,
    csv_columns,
    formula_safe,
    read_csv,
    read_openai_chat_jsonl,
    read_prompt_completion_jsonl,
    unformula,
    write_csv,
    write_openai_chat_jsonl,
    write_prompt_completion_jsonl,
)
from worker.datasets.freezing import (
    DatasetStats,
    FrozenVersion,
    SkippedRow,
    content_hash,
    freeze,
)
from worker.datasets.leakage import LeakageReport, NearDuplicate, Straddle, leakage_check
from worker.datasets.near_duplicates import input_text, near_duplicate_pairs
from worker.datasets.reviewers import (
    Agreement,
    PairAgreement,
    agreement,
    assign_reviewers,
    overlap_agreement,
)
from worker.datasets.rows import (
    FORMAT_VERSION,
    REAL_SOURCES,
    SOURCES,
    SPLITS,
    DatasetError,
    DatasetRow,
    FreezeParams,
    FrozenRow,
    RowId,
    Source,
    Split,
)

__all__ = [
    "FORMAT_VERSION",
    "FORMULA_TRIGGERS",
    "REAL_SOURCES",
    "SOURCES",
    "SPLITS",
    "Agreement",
    "DatasetError",
    "DatasetRow",
    "DatasetStats",
    "FreezeParams",
    "FrozenRow",
    "FrozenVersion",
    "LeakageReport",
    "NearDuplicate",
    "PairAgreement",
    "RowId",
    "SkippedRow",
    "Source",
    "Split",
    "Straddle",
    "agreement",
    "assign_reviewers",
    "chat_messages",
    "content_hash",
    "csv_columns",
    "formula_safe",
    "freeze",
    "input_text",
    "leakage_check",
    "near_duplicate_pairs",
    "overlap_agreement",
    "read_csv",
    "read_openai_chat_jsonl",
    "read_prompt_completion_jsonl",
    "unformula",
    "write_csv",
    "write_openai_chat_jsonl",
    "write_prompt_completion_jsonl",
]
