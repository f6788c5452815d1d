"""Quality metrics for an evaluation, by task kind, computed with well-kept libraries.

Every result is a plain dataclass whose ``to_dict()`` is JSON-serialisable and whose
``metrics_from_dict()`` rebuilds it, so a report can store the numbers and recompute them later
from the stored outputs.

- label: accuracy (with a 95 % Wilson interval and n), macro-F1, per-label precision/recall/F1 and
  a confusion matrix (scikit-learn; interval from scipy's ``binomtest``).
- json: valid-JSON rate, schema-valid rate, per-field exact match and token F1 over dotted paths.
- text: ROUGE-L F (rouge-score) and chrF (sacrebleu), plus an optional LLM-judge win-rate.

Headline numbers (used for "X % of the teacher"): label → accuracy; json → field F1 (micro
average of per-field token F1 over every field of every reference); text → ROUGE-L F.

The package is the public entry point: import names from ``worker.metrics``. Modules: ``rates``
(Wilson intervals, percent of the teacher), ``agreement``, ``labels``, ``json_fields``,
``tokens`` (token F1), ``text`` (ROUGE-L, chrF, judge win-rate), ``dispatch`` (by task kind,
and back from a stored dict).
"""

from __future__ import annotations

from worker.metrics.agreement import Agreement, agreement
from worker.metrics.dispatch import Metrics, evaluate_outputs, metrics_from_dict
from worker.metrics.json_fields import FieldScore, JsonMetrics, flatten_json, json_metrics
from worker.metrics.labels import UNPARSEABLE, LabelMetrics, LabelScore, label_metrics
from worker.metrics.rates import CONFIDENCE, Rate, percent_of_teacher, wilson_rate
from worker.metrics.text import (
    JudgeResult,
    JudgeVerdict,
    TextMetrics,
    UnicodeRougeTokenizer,
    judge_win_rate,
    rouge_scorer,
    text_metrics,
)
from worker.metrics.tokens import text_tokens, token_f1

__all__ = [
    "CONFIDENCE",
    "UNPARSEABLE",
    "Agreement",
    "FieldScore",
    "JsonMetrics",
    "JudgeResult",
    "JudgeVerdict",
    "LabelMetrics",
    "LabelScore",
    "Metrics",
    "Rate",
    "TextMetrics",
    "UnicodeRougeTokenizer",
    "agreement",
    "evaluate_outputs",
    "flatten_json",
    "json_metrics",
    "judge_win_rate",
    "label_metrics",
    "metrics_from_dict",
    "percent_of_teacher",
    "rouge_scorer",
    "text_metrics",
    "text_tokens",
    "token_f1",
    "wilson_rate",
]
