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
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from worker.taskspec import TaskSpec, canonical_output, normalise_label, parse_output

UNPARSEABLE = "(unparseable)"
"""Confusion-matrix column for predictions that are not a label of the set."""

CONFIDENCE = 0.95

JudgeVerdict = Literal["win", "loss", "tie"]


# ---------------------------------------------------------------------------------------------
# Shared pieces


@dataclass(frozen=True)
class Rate:
    """k of n, with a Wilson score interval (no continuity correction) at ``confidence``."""

    k: int
    n: int
    value: float
    low: float
    high: float
    confidence: float = CONFIDENCE


def wilson_rate(k: int, n: int, confidence: float = CONFIDENCE) -> Rate:
    """k successes out of n with scipy's Wilson interval; n == 0 gives 0 with a [0, 1] interval."""
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return Rate(k=0, n=0, value=0.0, low=0.0, high=1.0, confidence=confidence)
    from scipy.stats import binomtest

    interval = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return Rate(
        k=k,
        n=n,
        value=k / n,
        low=float(interval.low),
        high=float(interval.high),
        confidence=confidence,
    )


def percent_of_teacher(student_metric: float, teacher_metric: float) -> float | None:
    """Student metric divided by teacher metric, times 100, both measured against the same reference.

    None when the teacher scored 0 (the ratio is undefined, not infinite).
    """
    if teacher_metric == 0:
        return None
    return 100.0 * student_metric / teacher_metric


@dataclass(frozen=True)
class Agreement:
    """Inputs on which two candidates gave the same canonical output."""

    agree: int
    n: int
    rate: Rate


def _canonical_or_none(spec: TaskSpec, raw: str | None) -> str | None:
    parsed = parse_output(spec, raw or "")
    if parsed.value is None:
        return None
    return canonical_output(spec, parsed.value)


def agreement(spec: TaskSpec, outputs_a: Sequence[str], outputs_b: Sequence[str]) -> Agreement:
    """Percent of inputs where both candidates' parsed outputs have the same canonical form.

    An unparseable output agrees with nothing (two garbled answers are not agreement). For a
    json task, a value that parses but breaks the schema still counts by its canonical form.
    """
    _same_length(outputs_a, outputs_b, "outputs_a", "outputs_b")
    agree = 0
    for a, b in zip(outputs_a, outputs_b, strict=True):
        ca = _canonical_or_none(spec, a)
        if ca is not None and ca == _canonical_or_none(spec, b):
            agree += 1
    n = len(outputs_a)
    return Agreement(agree=agree, n=n, rate=wilson_rate(agree, n))


def _same_length(a: Sequence[Any], b: Sequence[Any], name_a: str, name_b: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{name_a} has {len(a)} items but {name_b} has {len(b)}")


# ---------------------------------------------------------------------------------------------
# label


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
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    _same_length(outputs, references, "outputs", "references")
    labels = list(spec.label_set)
    y_true: list[str] = []
    extra: list[str] = []
    for ref in references:
        label = normalise_label(ref or "", spec.label_set)
        if label is None:
            label = (ref or "").strip()
            if label not in extra:
                extra.append(label)
        y_true.append(label)
    y_pred: list[str] = []
    for out in outputs:
        parsed = parse_output(spec, out or "")
        y_pred.append(parsed.value if parsed.ok else UNPARSEABLE)

    rows = labels + extra
    columns = [*rows, UNPARSEABLE]
    n = len(y_true)
    correct = sum(1 for t, p in zip(y_true, y_pred, strict=True) if t == p)
    if n == 0:
        empty_matrix = [[0] * len(columns) for _ in rows]
        return LabelMetrics(
            n=0,
            accuracy=wilson_rate(0, 0),
            macro_f1=0.0,
            macro_f1_labels=[],
            per_label=[LabelScore(label, 0.0, 0.0, 0.0, 0) for label in rows],
            confusion_rows=rows,
            confusion_columns=columns,
            confusion_matrix=empty_matrix,
            unparseable=0,
            predictions=[],
            reference_source=reference_source,
        )

    seen = set(y_true) | set(y_pred)
    macro_labels = [label for label in rows if label in seen]
    macro = f1_score(y_true, y_pred, labels=macro_labels, average="macro", zero_division=0)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=rows, average=None, zero_division=0
    )
    per_label = [
        LabelScore(
            label=label,
            precision=float(precision[i]),
            recall=float(recall[i]),
            f1=float(f1[i]),
            support=int(support[i]),
        )
        for i, label in enumerate(rows)
    ]
    # Square over rows + UNPARSEABLE; the UNPARSEABLE reference row is always empty: drop it.
    matrix = confusion_matrix(y_true, y_pred, labels=columns)[: len(rows)]
    return LabelMetrics(
        n=n,
        accuracy=wilson_rate(correct, n),
        macro_f1=float(macro),
        macro_f1_labels=macro_labels,
        per_label=per_label,
        confusion_rows=rows,
        confusion_columns=columns,
        confusion_matrix=[[int(c) for c in row] for row in matrix],
        unparseable=sum(1 for p in y_pred if p == UNPARSEABLE),
        predictions=y_pred,
        reference_source=reference_source,
    )


# ---------------------------------------------------------------------------------------------
# json


@dataclass(frozen=True)
class FieldScore:
    field: str  # dotted path: "total", "address.city", "items.0.name"
    n: int  # references that have this field
    exact_match: float
    token_f1: float


@dataclass(frozen=True)
class JsonMetrics:
    n: int
    valid_json: Rate
    schema_valid: Rate
    exact_match: Rate  # the whole object equals the reference
    field_exact_match: float  # micro average over every (row, reference field)
    field_f1: float  # micro average of token F1 over every (row, reference field)
    fields: list[FieldScore]
    per_example_field_f1: list[float]  # mean token F1 over the row's reference fields
    reference_source: str = ""
    kind: Literal["json"] = "json"

    @property
    def headline_name(self) -> str:
        return "field_f1"

    @property
    def headline(self) -> float:
        return self.field_f1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_MISSING = object()


def flatten_json(value: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves of a JSON value keyed by dotted path; list items by index ("items.0.name").

    Empty objects and arrays are leaves themselves, so ``{"a": {}}`` has the field ``a``.
    A bare scalar at the root is the field "" .
    """
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, child in value.items():
            out.update(flatten_json(child, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and value:
        out = {}
        for index, child in enumerate(value):
            out.update(flatten_json(child, f"{prefix}.{index}" if prefix else str(index)))
        return out
    if not prefix and isinstance(value, (dict, list)):
        return {}  # {} or [] at the root has no fields
    return {prefix: value}


def _leaf_key(value: Any) -> str:
    """Canonical form for exact match: 1 == 1.0, but True != 1 and "1" != 1."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return json.dumps(value, ensure_ascii=False, sort_keys=True)


def _leaf_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return _leaf_key(value)


_WORD = re.compile(r"[^\W_]+")


def text_tokens(text: str) -> list[str]:
    """Lower-cased runs of letters/digits in any script (for token F1 and ROUGE).

    On ASCII text this is exactly rouge-score's default tokenizer (without stemming); unlike it,
    letters outside a-z (é, ж, 中) stay in the token instead of being deleted.
    """
    return _WORD.findall(text.lower())


def token_f1(prediction: str, reference: str) -> float:
    """Bag-of-tokens F1 (the SQuAD answer F1) between two strings.

    Two strings without tokens (e.g. "-" vs "-") score 1 if equal, else 0.
    """
    pred, ref = text_tokens(prediction), text_tokens(reference)
    if not pred or not ref:
        return 1.0 if prediction.strip() == reference.strip() else 0.0
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision = common / len(pred)
    recall = common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _reference_value(ref: Any) -> Any:
    if isinstance(ref, str):
        text = ref.strip()
        fenced = re.match(r"^```(?:json)?\s*(.*?)\s*```$", text, re.DOTALL)
        return json.loads(fenced.group(1) if fenced else text)
    return ref


def json_metrics(
    spec: TaskSpec,
    outputs: Sequence[str],
    references: Sequence[Any],
    *,
    reference_source: str = "",
) -> JsonMetrics:
    """Metrics of raw model outputs against reference JSON values (objects or JSON strings).

    Fields are the reference's leaves; a field the prediction lacks (or an unparseable
    prediction) scores 0 on it. Fields only the prediction has are not scored here (the
    schema-valid rate is where extra keys show, if the schema forbids them).
    """
    _same_length(outputs, references, "outputs", "references")
    valid = schema_ok = whole = 0
    totals: dict[str, list[float]] = {}  # field -> [n, exact, f1]
    all_exact: list[float] = []
    all_f1: list[float] = []
    per_example: list[float] = []
    for row, (out, ref) in enumerate(zip(outputs, references, strict=True)):
        try:
            ref_value = _reference_value(ref)
        except json.JSONDecodeError as exc:
            raise ValueError(f"reference at row {row} is not valid JSON: {exc}") from exc
        parsed = parse_output(spec, out or "")
        pred_value = parsed.value
        if pred_value is not None:
            valid += 1
            if parsed.ok:
                schema_ok += 1
            if _leaf_key(pred_value) == _leaf_key(ref_value):
                whole += 1
        ref_fields = flatten_json(ref_value)
        pred_fields = flatten_json(pred_value) if pred_value is not None else {}
        row_f1: list[float] = []
        for name, ref_leaf in ref_fields.items():
            pred_leaf = pred_fields.get(name, _MISSING)
            if pred_leaf is _MISSING:
                exact, f1 = 0.0, 0.0
            else:
                exact = 1.0 if _leaf_key(pred_leaf) == _leaf_key(ref_leaf) else 0.0
                f1 = 1.0 if exact else token_f1(_leaf_text(pred_leaf), _leaf_text(ref_leaf))
            acc = totals.setdefault(name, [0.0, 0.0, 0.0])
            acc[0] += 1
            acc[1] += exact
            acc[2] += f1
            all_exact.append(exact)
            all_f1.append(f1)
            row_f1.append(f1)
        if row_f1:
            per_example.append(sum(row_f1) / len(row_f1))
        else:  # an empty reference object: right only if the prediction is empty too
            per_example.append(1.0 if pred_value is not None and not pred_fields else 0.0)
    n = len(outputs)
    fields = [
        FieldScore(field=name, n=int(acc[0]), exact_match=acc[1] / acc[0], token_f1=acc[2] / acc[0])
        for name, acc in sorted(totals.items())
    ]
    return JsonMetrics(
        n=n,
        valid_json=wilson_rate(valid, n),
        schema_valid=wilson_rate(schema_ok, n),
        exact_match=wilson_rate(whole, n),
        field_exact_match=sum(all_exact) / len(all_exact) if all_exact else 0.0,
        field_f1=sum(all_f1) / len(all_f1) if all_f1 else 0.0,
        fields=fields,
        per_example_field_f1=per_example,
        reference_source=reference_source,
    )


# ---------------------------------------------------------------------------------------------
# text


@dataclass(frozen=True)
class JudgeResult:
    """Pairwise LLM-judge verdicts from the candidate's side (candidate vs teacher)."""

    wins: int
    ties: int
    losses: int
    n: int
    win_rate: float  # (wins + ties / 2) / n
    not_worse: Rate  # (wins + ties) of n, with its interval


def judge_win_rate(verdicts: Sequence[str]) -> JudgeResult:
    """Win-rate from judgements already made: each is "win", "loss" or "tie"."""
    counts = Counter(verdicts)
    unknown = sorted(set(counts) - {"win", "loss", "tie"})
    if unknown:
        raise ValueError(f"judge verdicts must be win, loss or tie; got {', '.join(unknown)}")
    wins, ties, losses = counts["win"], counts["tie"], counts["loss"]
    n = wins + ties + losses
    return JudgeResult(
        wins=wins,
        ties=ties,
        losses=losses,
        n=n,
        win_rate=(wins + ties / 2) / n if n else 0.0,
        not_worse=wilson_rate(wins + ties, n),
    )


@dataclass(frozen=True)
class TextMetrics:
    n: int
    rouge_l: float  # mean ROUGE-L F over rows, 0..1
    chrf: float  # corpus chrF, 0..100 (sacrebleu's scale)
    per_example_rouge_l: list[float]
    per_example_chrf: list[float]  # sentence chrF
    empty_outputs: int
    judge: JudgeResult | None = None
    reference_source: str = ""
    kind: Literal["text"] = "text"

    @property
    def headline_name(self) -> str:
        return "rouge_l"

    @property
    def headline(self) -> float:
        return self.rouge_l

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class UnicodeRougeTokenizer:
    """rouge-score tokenizer that keeps non-ASCII letters (see ``text_tokens``)."""

    def tokenize(self, text: str) -> list[str]:
        return text_tokens(text)


def rouge_scorer() -> Any:
    """The ROUGE-L scorer used for every text metric (no stemming, Unicode-aware tokens)."""
    from rouge_score import rouge_scorer as rs

    return rs.RougeScorer(["rougeL"], use_stemmer=False, tokenizer=UnicodeRougeTokenizer())


def text_metrics(
    outputs: Sequence[str],
    references: Sequence[str],
    *,
    judge_verdicts: Sequence[str] | None = None,
    reference_source: str = "",
) -> TextMetrics:
    """ROUGE-L F (mean over rows) and chrF (corpus) of outputs against references."""
    from sacrebleu.metrics.chrf import CHRF

    _same_length(outputs, references, "outputs", "references")
    hyps = [(o or "").strip() for o in outputs]
    refs = [(r or "").strip() for r in references]
    scorer = rouge_scorer()
    rouge = [float(scorer.score(r, h)["rougeL"].fmeasure) for h, r in zip(hyps, refs, strict=True)]
    chrf = CHRF()
    per_chrf = [float(chrf.sentence_score(h, [r]).score) for h, r in zip(hyps, refs, strict=True)]
    corpus = float(chrf.corpus_score(hyps, [refs]).score) if hyps else 0.0
    return TextMetrics(
        n=len(hyps),
        rouge_l=sum(rouge) / len(rouge) if rouge else 0.0,
        chrf=corpus,
        per_example_rouge_l=rouge,
        per_example_chrf=per_chrf,
        empty_outputs=sum(1 for h in hyps if not h),
        judge=judge_win_rate(judge_verdicts) if judge_verdicts is not None else None,
        reference_source=reference_source,
    )


# ---------------------------------------------------------------------------------------------
# dispatch and storage

Metrics = LabelMetrics | JsonMetrics | TextMetrics


def evaluate_outputs(
    spec: TaskSpec,
    outputs: Sequence[str],
    references: Sequence[Any],
    *,
    judge_verdicts: Sequence[str] | None = None,
    reference_source: str = "",
) -> Metrics:
    """The metrics for the task's output kind. ``reference_source`` is stored for the report
    ("human" or "teacher") and does not change any number."""
    if spec.output_kind == "label":
        return label_metrics(spec, outputs, references, reference_source=reference_source)
    if spec.output_kind == "json":
        return json_metrics(spec, outputs, references, reference_source=reference_source)
    return text_metrics(
        outputs, references, judge_verdicts=judge_verdicts, reference_source=reference_source
    )


def _rate(d: dict[str, Any]) -> Rate:
    return Rate(**d)


def metrics_from_dict(data: dict[str, Any]) -> Metrics:
    """Rebuild a result from its ``to_dict()`` (e.g. after a JSON round trip)."""
    d = dict(data)
    kind = d.get("kind")
    if kind == "label":
        d["accuracy"] = _rate(d["accuracy"])
        d["per_label"] = [LabelScore(**s) for s in d["per_label"]]
        return LabelMetrics(**d)
    if kind == "json":
        for key in ("valid_json", "schema_valid", "exact_match"):
            d[key] = _rate(d[key])
        d["fields"] = [FieldScore(**s) for s in d["fields"]]
        return JsonMetrics(**d)
    if kind == "text":
        judge = d.get("judge")
        if judge is not None:
            judge = dict(judge)
            judge["not_worse"] = _rate(judge["not_worse"])
            d["judge"] = JudgeResult(**judge)
        return TextMetrics(**d)
    raise ValueError(f"unknown metrics kind {kind!r}")


__all__ = [
    "CONFIDENCE",
    "UNPARSEABLE",
    "Agreement",
    "FieldScore",
    "JsonMetrics",
    "JudgeResult",
    "LabelMetrics",
    "LabelScore",
    "Metrics",
    "Rate",
    "TextMetrics",
    "agreement",
    "evaluate_outputs",
    "flatten_json",
    "json_metrics",
    "judge_win_rate",
    "label_metrics",
    "metrics_from_dict",
    "percent_of_teacher",
    "text_metrics",
    "text_tokens",
    "token_f1",
    "wilson_rate",
]
