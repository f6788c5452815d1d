"""Evaluation metrics equal the reference libraries' results, and hand-checked values."""

from __future__ import annotations

import json

import pytest
from rouge_score import rouge_scorer
from sacrebleu.metrics.chrf import CHRF
from scipy.stats import binomtest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from worker.metrics import (
    UNPARSEABLE,
    UnicodeRougeTokenizer,
    agreement,
    evaluate_outputs,
    flatten_json,
    json_metrics,
    judge_win_rate,
    label_metrics,
    metrics_from_dict,
    percent_of_teacher,
    text_metrics,
    token_f1,
    wilson_rate,
)
from worker.taskspec import TaskSpec

LABELS = ("card_arrival", "card_linking", "exchange_rate", "top_up_failed")
LABEL_SPEC = TaskSpec("Message: {{ text }}", "label", ("text",), label_set=LABELS)

SCHEMA = {
    "type": "object",
    "properties": {
        "company": {"type": "string"},
        "total": {"type": "string"},
        "address": {"type": "object"},
    },
    "required": ["company", "total"],
    "additionalProperties": False,
}
JSON_SPEC = TaskSpec("Receipt: {{ text }}", "json", ("text",), json_schema=SCHEMA)


def roundtrip(metrics):
    return metrics_from_dict(json.loads(json.dumps(metrics.to_dict())))


# -- the interval --------------------------------------------------------------------------------


def test_wilson_interval_matches_scipy_and_the_textbook_value():
    rate = wilson_rate(83, 100)
    ci = binomtest(83, 100).proportion_ci(confidence_level=0.95, method="wilson")
    assert (rate.low, rate.high) == pytest.approx((ci.low, ci.high))
    # Wilson score interval for 83/100 at 95 %, by hand: 0.7445 .. 0.8911
    assert rate.value == 0.83
    assert rate.low == pytest.approx(0.7445, abs=1e-4)
    assert rate.high == pytest.approx(0.8911, abs=1e-4)
    assert (rate.k, rate.n) == (83, 100)


def test_wilson_interval_edges():
    assert wilson_rate(0, 0).high == 1.0
    perfect = wilson_rate(20, 20)
    assert perfect.value == 1.0 and perfect.high == pytest.approx(1.0) and perfect.low < 1.0
    with pytest.raises(ValueError, match="k <= n"):
        wilson_rate(3, 2)


# -- label ---------------------------------------------------------------------------------------

# "top_up_failed" is in the label set but never predicted; one answer is garbage; one is a
# case/punctuation variant that the task spec maps onto its label.
REFS = [
    "card_arrival",
    "card_arrival",
    "card_linking",
    "card_linking",
    "exchange_rate",
    "top_up_failed",
    "exchange_rate",
]
OUTS = [
    "card_arrival",
    "Card arrival.",
    "card_arrival",
    "card_linking",
    "exchange_rate",
    "I am not sure what you mean",
    "card_linking",
]
PARSED = [
    "card_arrival",
    "card_arrival",
    "card_arrival",
    "card_linking",
    "exchange_rate",
    UNPARSEABLE,
    "card_linking",
]


def test_label_metrics_equal_sklearn():
    m = label_metrics(LABEL_SPEC, OUTS, REFS)
    assert m.predictions == PARSED
    assert m.accuracy.value == pytest.approx(accuracy_score(REFS, PARSED))
    assert m.accuracy.k == 4 and m.accuracy.n == 7
    present = ["card_arrival", "card_linking", "exchange_rate", "top_up_failed"]
    assert m.macro_f1_labels == present
    assert m.macro_f1 == pytest.approx(
        f1_score(REFS, PARSED, labels=present, average="macro", zero_division=0)
    )
    p, r, f, s = precision_recall_fscore_support(
        REFS, PARSED, labels=list(LABELS), average=None, zero_division=0
    )
    for i, score in enumerate(m.per_label):
        assert score.label == LABELS[i]
        assert (score.precision, score.recall, score.f1, score.support) == pytest.approx(
            (p[i], r[i], f[i], s[i])
        )
    cm = confusion_matrix(REFS, PARSED, labels=[*LABELS, UNPARSEABLE])
    assert m.confusion_matrix == cm[: len(LABELS)].tolist()


def test_label_metrics_by_hand():
    m = label_metrics(LABEL_SPEC, OUTS, REFS)
    assert m.confusion_rows == list(LABELS)
    assert m.confusion_columns == [*LABELS, UNPARSEABLE]
    assert m.confusion_matrix == [
        [2, 0, 0, 0, 0],  # card_arrival: both right ("Card arrival." counts)
        [1, 1, 0, 0, 0],
        [0, 1, 1, 0, 0],
        [0, 0, 0, 0, 1],  # top_up_failed: never predicted, answered with garbage
    ]
    assert m.unparseable == 1
    never = m.per_label[3]
    assert (never.precision, never.recall, never.f1, never.support) == (0.0, 0.0, 0.0, 1)
    # card_arrival: P = 2/3, R = 1, F1 = 0.8; card_linking: P = 1/2, R = 1/2; exchange_rate:
    # P = 1, R = 1/2, F1 = 2/3; macro over the four = (0.8 + 0.5 + 2/3 + 0) / 4
    assert m.macro_f1 == pytest.approx((0.8 + 0.5 + 2 / 3 + 0) / 4)
    assert m.headline_name == "accuracy" and m.headline == pytest.approx(4 / 7)


def test_label_never_used_by_anyone_does_not_drag_macro_f1():
    spec = TaskSpec("{{ t }}", "label", ("t",), label_set=("a", "b", "c"))
    m = label_metrics(spec, ["a", "b"], ["a", "b"])
    assert m.macro_f1 == 1.0
    assert m.macro_f1_labels == ["a", "b"]
    assert [s.support for s in m.per_label] == [1, 1, 0]
    assert len(m.confusion_matrix) == 3


def test_reference_outside_label_set_is_its_own_row():
    m = label_metrics(LABEL_SPEC, ["card_arrival", "card_arrival"], ["card_arrival", "lost_card"])
    assert m.confusion_rows == [*LABELS, "lost_card"]
    assert m.confusion_matrix[-1] == [1, 0, 0, 0, 0, 0]
    assert sum(map(sum, m.confusion_matrix)) == 2
    assert m.accuracy.k == 1


def test_label_metrics_empty_and_roundtrip():
    empty = label_metrics(LABEL_SPEC, [], [])
    assert empty.n == 0 and empty.accuracy.value == 0.0
    m = label_metrics(LABEL_SPEC, OUTS, REFS, reference_source="human")
    back = roundtrip(m)
    assert back == m
    assert back.reference_source == "human"


def test_label_lengths_must_match():
    with pytest.raises(ValueError, match="outputs has 1 items but references has 2"):
        label_metrics(LABEL_SPEC, ["card_arrival"], ["card_arrival", "card_linking"])


# -- json ----------------------------------------------------------------------------------------


def test_flatten_uses_dotted_paths():
    value = {"a": {"b": 1, "c": [{"d": "x"}, 2]}, "e": {}, "f": []}
    assert flatten_json(value) == {"a.b": 1, "a.c.0.d": "x", "a.c.1": 2, "e": {}, "f": []}
    assert flatten_json({}) == {}
    assert flatten_json(7) == {"": 7}


def test_token_f1_by_hand():
    # pred tokens [jalan, harmoni, 3], ref [no, 2, jalan, harmoni]: common 2, P 2/3, R 1/2
    assert token_f1("Jalan Harmoni 3", "No.2 jalan harmoni") == pytest.approx(4 / 7)
    assert token_f1("Café Zürich", "café zürich") == 1.0  # letters outside a-z are tokens too
    assert token_f1("Москва", "Санкт-Петербург") == 0.0
    assert token_f1("-", "-") == 1.0 and token_f1("-", "") == 0.0


def test_json_metrics_by_hand():
    refs = [
        {"company": "ABC HO TRADING", "total": "31.00", "address": {"city": "Johor", "zip": 81100}},
        {"company": "Café Zürich", "total": "9.90"},
        '{"company": "99 SPEED MART", "total": "2.50"}',  # a reference may be a JSON string
        {"company": "X", "total": "1"},
    ]
    outs = [
        # valid + schema-valid; address.zip 81100.0 equals 81100; city differs
        '{"company": "ABC HO TRADING", "total": "31.00", '
        '"address": {"city": "Johor Bahru", "zip": 81100.0}}',
        # valid JSON but breaks the schema (extra key): still scored field by field
        '```json\n{"company": "café zürich", "total": "9.90", "tip": "1"}\n```',
        "not json at all",
        "{}",  # empty object: valid JSON, schema-invalid (required keys), no fields
    ]
    m = json_metrics(JSON_SPEC, outs, refs)
    assert (m.valid_json.k, m.schema_valid.k, m.exact_match.k, m.n) == (3, 1, 0, 4)
    by_field = {f.field: f for f in m.fields}
    assert sorted(by_field) == ["address.city", "address.zip", "company", "total"]
    assert by_field["company"].n == 4
    # company: exact in row 0 only; token F1 1 (row 0), 1 (row 1, case-insensitive), 0, 0
    assert by_field["company"].exact_match == pytest.approx(1 / 4)
    assert by_field["company"].token_f1 == pytest.approx(2 / 4)
    assert by_field["total"].exact_match == pytest.approx(2 / 4)
    assert by_field["address.zip"].exact_match == 1.0
    # "Johor Bahru" vs "Johor": P 1/2, R 1, F1 2/3
    assert by_field["address.city"].token_f1 == pytest.approx(2 / 3)
    assert by_field["address.city"].exact_match == 0.0
    # micro over the 10 (row, field) pairs
    assert m.field_exact_match == pytest.approx((3 + 1 + 0 + 0) / 10)
    assert m.field_f1 == pytest.approx((1 + 1 + 2 / 3 + 1) / 10 + (1 + 1) / 10)
    assert m.per_example_field_f1 == pytest.approx([(3 + 2 / 3) / 4, 1.0, 0.0, 0.0])
    assert m.headline == m.field_f1
    assert roundtrip(m) == m


def test_json_empty_reference_object():
    spec = TaskSpec("{{ t }}", "json", ("t",), json_schema={"type": "object"})
    m = json_metrics(spec, ["{}", '{"a": 1}', "oops"], [{}, {}, "{}"])
    assert m.fields == []
    assert m.field_f1 == 0.0 and m.field_exact_match == 0.0
    assert m.exact_match.k == 1
    assert m.per_example_field_f1 == [1.0, 0.0, 0.0]
    assert m.valid_json.k == 2 and m.schema_valid.k == 2


def test_json_bool_is_not_a_number():
    spec = TaskSpec("{{ t }}", "json", ("t",), json_schema={"type": "object"})
    m = json_metrics(spec, ['{"a": true, "b": "1"}'], [{"a": 1, "b": 1}])
    assert m.field_exact_match == 0.0


def test_json_bad_reference_names_the_row():
    with pytest.raises(ValueError, match="reference at row 1"):
        json_metrics(JSON_SPEC, ["{}", "{}"], [{}, "{broken"])


# -- text ----------------------------------------------------------------------------------------

HYPS = [
    "The customer asks when the new card will arrive.",
    "",
    "Person1 books a table for two at eight.",
    "Они договорились встретиться завтра в кафе.",
]
TEXT_REFS = [
    "The customer wants to know when their new card arrives.",
    "Person2 complains about traffic.",
    "#Person1# reserves a table for two people at 8 pm.",
    "Они решили встретиться в кафе завтра утром.",
]


def test_text_metrics_equal_rouge_score_and_sacrebleu():
    m = text_metrics(HYPS, TEXT_REFS)
    unicode_scorer = rouge_scorer.RougeScorer(
        ["rougeL"], use_stemmer=False, tokenizer=UnicodeRougeTokenizer()
    )
    expected = [
        unicode_scorer.score(r, h)["rougeL"].fmeasure for h, r in zip(HYPS, TEXT_REFS, strict=True)
    ]
    assert m.per_example_rouge_l == pytest.approx(expected)
    assert m.rouge_l == pytest.approx(sum(expected) / len(expected))
    chrf = CHRF()
    assert m.chrf == pytest.approx(chrf.corpus_score(HYPS, [TEXT_REFS]).score)
    assert m.per_example_chrf == pytest.approx(
        [chrf.sentence_score(h, [r]).score for h, r in zip(HYPS, TEXT_REFS, strict=True)]
    )
    assert m.empty_outputs == 1 and m.per_example_rouge_l[1] == 0.0
    assert m.judge is None
    assert roundtrip(m) == m


def test_rouge_on_ascii_is_rouge_scores_default_and_unicode_is_not_erased():
    default = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    m = text_metrics(HYPS[:3], TEXT_REFS[:3])
    for h, r, ours in zip(HYPS[:3], TEXT_REFS[:3], m.per_example_rouge_l, strict=True):
        assert ours == pytest.approx(default.score(r, h)["rougeL"].fmeasure)
    # rouge-score's default tokenizer deletes Cyrillic entirely (the score would be 0):
    assert default.score(TEXT_REFS[3], HYPS[3])["rougeL"].fmeasure == 0.0
    # ours keeps the words: LCS "они встретиться в кафе" = 4 of 6 and 4 of 7 tokens
    ours = text_metrics(HYPS[3:], TEXT_REFS[3:]).rouge_l
    assert ours == pytest.approx(2 * (4 / 6) * (4 / 7) / (4 / 6 + 4 / 7))


def test_judge_win_rate():
    verdicts = ["win"] * 5 + ["tie"] * 2 + ["loss"] * 3
    m = text_metrics(["a"] * 10, ["a"] * 10, judge_verdicts=verdicts)
    assert m.judge is not None
    assert (m.judge.wins, m.judge.ties, m.judge.losses, m.judge.n) == (5, 2, 3, 10)
    assert m.judge.win_rate == pytest.approx(0.6)
    assert m.judge.not_worse.k == 7
    assert roundtrip(m) == m
    with pytest.raises(ValueError, match="draw"):
        judge_win_rate(["win", "draw"])


# -- across candidates ---------------------------------------------------------------------------


def test_agreement_on_canonical_outputs():
    teacher = ["card_arrival", "exchange_rate", "garbage", "top_up_failed"]
    student = ["Card arrival", "card_linking", "garbage", "top_up_failed"]
    a = agreement(LABEL_SPEC, teacher, student)
    assert (a.agree, a.n) == (2, 4)  # two unparseable answers do not agree
    assert a.rate.value == 0.5
    j = agreement(JSON_SPEC, ['{"total": "1", "company": "A"}'], ['{"company":"A","total":"1"}'])
    assert j.agree == 1


def test_percent_of_teacher():
    assert percent_of_teacher(0.81, 0.9) == pytest.approx(90.0)
    assert percent_of_teacher(0.5, 0.0) is None


def test_evaluate_outputs_dispatches_by_kind():
    assert evaluate_outputs(LABEL_SPEC, OUTS, REFS).kind == "label"
    assert evaluate_outputs(JSON_SPEC, ["{}"], [{}]).kind == "json"
    text_spec = TaskSpec("{{ t }}", "text", ("t",))
    m = evaluate_outputs(text_spec, ["hi"], ["hi"], reference_source="teacher")
    assert m.kind == "text" and m.headline == 1.0 and m.reference_source == "teacher"
