"""Automatic checks on teacher outputs: each flag on crafted outputs, the judge, the auto rules."""

from __future__ import annotations

import json
import math

import pytest

from worker import checks
from worker.checks import (
    CheckConfig,
    Flag,
    JudgeRubric,
    OutputToCheck,
    RuleError,
    check_output,
    check_population,
    evaluate,
    first_matching_rule,
    judge_output,
    parse_judge_answer,
    run_checks,
    validate_rule,
)
from worker.taskspec import TaskSpec

LABELS = TaskSpec(
    instruction_template="Classify this banking query: {{ text }}",
    output_kind="label",
    input_fields=("text",),
    label_set=("card_arrival", "lost_or_stolen_card", "refund_not_showing_up", "cancel_transfer"),
)
RECEIPT = TaskSpec(
    instruction_template="Extract the vendor and total from this receipt:\n{{ receipt }}",
    output_kind="json",
    input_fields=("receipt",),
    system_prompt="You extract fields from receipts.",
    json_schema={
        "type": "object",
        "properties": {"vendor": {"type": "string"}, "total": {"type": "number"}},
        "required": ["vendor", "total"],
        "additionalProperties": False,
    },
)
SENTIMENT_JSON = TaskSpec(
    instruction_template="Sentiment of: {{ text }}",
    output_kind="json",
    input_fields=("text",),
    json_schema={
        "type": "object",
        "properties": {
            "sentiment": {"enum": ["positive", "negative", "neutral"]},
            "sarcastic": {"type": "boolean"},
        },
        "required": ["sentiment"],
        "additionalProperties": False,
    },
)
SUMMARY = TaskSpec(
    instruction_template="Summarise this dialogue:\n{{ dialogue }}",
    output_kind="text",
    input_fields=("dialogue",),
)


def codes(flags: list[Flag]) -> list[str]:
    return [f.code for f in flags]


def one(spec: TaskSpec, raw: str, **kwargs: object) -> list[str]:
    return codes(check_output(spec, OutputToCheck(output_id=1, raw=raw, **kwargs)))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- per-output


def test_a_clean_answer_has_no_flags_for_each_kind():
    assert one(LABELS, "card_arrival") == []
    assert one(LABELS, "Label: Card arrival.") == []  # the task spec's parser is forgiving
    assert one(RECEIPT, '```json\n{"vendor": "Tesco", "total": 12.5}\n```') == []
    assert one(SUMMARY, "#Person1# asks about a late card; #Person2# orders a new one.") == []


@pytest.mark.parametrize("spec", [LABELS, RECEIPT, SUMMARY])
def test_empty_output_is_flagged_empty(spec):
    assert one(spec, "   \n ") == ["empty"]


def test_label_outside_the_label_set_names_the_answer():
    flags = check_output(LABELS, OutputToCheck(1, "card_delivery_estimate"))
    assert codes(flags) == ["label_outside_set"]
    assert "card_delivery_estimate" in flags[0].message


def test_json_that_does_not_parse_is_unparseable_and_json_off_schema_is_schema_invalid():
    bad = check_output(RECEIPT, OutputToCheck(1, '{"vendor": "Tesco", "total": 12.5'))
    assert codes(bad) == ["unparseable"]
    off = check_output(RECEIPT, OutputToCheck(2, '{"vendor": "Tesco", "total": "twelve"}'))
    assert codes(off) == ["schema_invalid"]
    assert "total" in off[0].message


@pytest.mark.parametrize(
    "raw",
    [
        "I'm sorry, but I can't help with that request.",
        "I\u2019m unable to classify this message.",  # typographic apostrophe
        "As an AI language model, I do not have opinions.",
        "Je suis désolé, je ne peux pas répondre.",
        "Es tut mir leid, das kann ich nicht beantworten.",
        "Lo siento, no puedo ayudar con eso.",
        "抱歉\uff0c我无法回答这个问题。",
        "申し訳ありませんが、お答えできません。",
    ],
)
def test_refusals_are_flagged_in_several_languages(raw):
    assert "refusal" in one(SUMMARY, raw)


def test_refusal_words_inside_an_answer_are_not_a_refusal():
    # A dialogue summary may well report an apology; only a leading refusal counts.
    assert one(SUMMARY, "#Person1# says sorry that they cannot help with the refund.") == []
    # "I can t..." must match whole words, not "I can take".
    assert one(SUMMARY, "I can take the 9am train, says #Person2#.") == []


def test_a_refusal_on_a_label_task_is_both_outside_the_set_and_a_refusal():
    assert one(LABELS, "I'm sorry, I cannot determine the intent.") == [
        "label_outside_set",
        "refusal",
    ]


def test_a_refusal_wrapped_in_json_is_caught():
    assert "refusal" in one(RECEIPT, '{"error": "Sorry, but I cannot read this receipt."}')


def test_self_consistency_flags_a_split_vote_and_a_minority_answer():
    # 1 of 3 each: no majority at all.
    split = check_output(
        LABELS,
        OutputToCheck(1, "card_arrival", samples=("lost_or_stolen_card", "cancel_transfer")),
    )
    assert codes(split) == ["self_inconsistent"]
    assert split[0].score == pytest.approx(1 / 3)
    # The majority (2 of 3) says something else than this output.
    minority = check_output(
        LABELS,
        OutputToCheck(1, "card_arrival", samples=("cancel_transfer", "Cancel transfer")),
    )
    assert codes(minority) == ["self_inconsistent"]
    assert "cancel_transfer" in minority[0].message
    # Agreeing samples, even spelled differently, are fine.
    agree = OutputToCheck(1, "card_arrival", samples=("Card arrival", "card_arrival"))
    assert check_output(LABELS, agree) == []


def test_self_consistency_compares_json_by_value_and_text_by_overlap():
    same_json = OutputToCheck(
        1, '{"vendor": "Tesco", "total": 3}', samples=('{"total": 3, "vendor": "Tesco"}',)
    )
    assert check_output(RECEIPT, same_json) == []
    text = OutputToCheck(
        1,
        "The customer wants a refund for a late parcel.",
        samples=(
            "A customer asks for a refund because the parcel is late.",
            "Two friends plan a picnic on Saturday.",
            "Someone books a dentist appointment.",
        ),
    )
    flags = check_output(SUMMARY, text)
    assert codes(flags) == ["self_inconsistent"]
    assert flags[0].score == pytest.approx(2 / 4)


def test_disagreement_with_the_human_reference_is_kind_aware():
    assert one(LABELS, "card_arrival", reference="Card Arrival") == []
    assert one(LABELS, "card_arrival", reference="lost_or_stolen_card") == [
        "reference_disagreement"
    ]
    assert (
        one(RECEIPT, '{"vendor": "Tesco", "total": 3}', reference='{"total":3,"vendor":"Tesco"}')
        == []
    )
    flags = check_output(
        RECEIPT,
        OutputToCheck(
            1, '{"vendor": "Tesco", "total": 3}', reference='{"vendor": "Tesco", "total": 30}'
        ),
    )
    assert codes(flags) == ["reference_disagreement"]
    assert "total" in flags[0].message and flags[0].score == pytest.approx(0.5)
    assert one(SUMMARY, "A late card is replaced.", reference="The late card is replaced.") == []
    assert one(SUMMARY, "Two friends plan a picnic.", reference="The late card is replaced.") == [
        "reference_disagreement"
    ]


def test_low_confidence_from_logprobs_or_a_given_confidence():
    confident = [math.log(0.95)] * 3
    unsure = [math.log(0.9), math.log(0.2), math.log(0.3)]
    assert one(LABELS, "card_arrival", token_logprobs=tuple(confident)) == []
    flags = check_output(LABELS, OutputToCheck(1, "card_arrival", token_logprobs=tuple(unsure)))
    assert codes(flags) == ["low_confidence"]
    assert flags[0].score == pytest.approx((0.9 * 0.2 * 0.3) ** (1 / 3))
    assert one(LABELS, "card_arrival", confidence=0.3) == ["low_confidence"]
    strict = CheckConfig(min_confidence=0.99)
    assert codes(
        check_output(LABELS, OutputToCheck(1, "card_arrival", confidence=0.97), strict)
    ) == ["low_confidence"]


def test_flags_are_json_serialisable_and_round_trip():
    flags = check_output(
        LABELS,
        OutputToCheck(1, "nonsense", samples=("card_arrival", "cancel_transfer"), confidence=0.1),
    )
    assert len(flags) == len({f.code for f in flags})  # one flag per code, as the DB requires
    text = json.dumps([f.to_dict() for f in flags])
    assert [Flag.from_dict(d) for d in json.loads(text)] == flags
    assert set(codes(flags)) <= set(checks.FLAG_CODES)


# ----------------------------------------------------------------------------- population


def _summaries(n: int) -> list[OutputToCheck]:
    return [
        OutputToCheck(
            i,
            f"#Person1# asks about order {i}; #Person2# says it ships on day {i % 7}.",
            inputs={"dialogue": f"d{i}"},
        )
        for i in range(n)
    ]


def test_a_much_longer_output_is_a_length_outlier_and_only_it():
    outputs = _summaries(30)
    outputs.append(OutputToCheck("long", "word " * 400, inputs={"dialogue": "long"}))
    outputs.append(OutputToCheck("short", "ok", inputs={"dialogue": "short"}))
    flags = check_population(SUMMARY, outputs)
    assert set(flags) == {"long", "short"}
    assert codes(flags["long"]) == ["length_outlier"] and flags["long"][0].score > 3.5
    assert "longer" in flags["long"][0].message and "shorter" in flags["short"][0].message


def test_length_outliers_need_a_population_and_skip_label_tasks():
    few = [*_summaries(5), OutputToCheck("long", "word " * 400)]
    assert check_population(SUMMARY, few) == {}
    labels = [OutputToCheck(i, "card_arrival") for i in range(30)]
    labels.append(OutputToCheck("odd", "refund_not_showing_up"))
    assert check_population(LABELS, labels) == {}


def test_robust_z_scores_survive_a_zero_mad():
    scores = checks.robust_z_scores([10, 10, 10, 10, 10, 10, 80])
    assert scores[:6] == [0.0] * 6 and scores[6] > 3.5
    assert checks.robust_z_scores([5, 5, 5]) == [0.0, 0.0, 0.0]
    floored = checks.robust_z_scores([10, 10, 10, 10, 11, 12, 80], min_mad=2.0)
    assert floored[4] == pytest.approx(0.6745 / 2) and floored[6] > 3.5


def test_the_same_text_for_many_different_inputs_is_flagged():
    outputs = _summaries(10)
    boiler = "The dialogue is about a customer service issue."
    outputs += [OutputToCheck(f"b{i}", boiler, inputs={"dialogue": f"x{i}"}) for i in range(3)]
    outputs.append(
        OutputToCheck(
            "b3", "the dialogue is about a customer-service issue", inputs={"dialogue": "y"}
        )
    )
    flags = check_population(SUMMARY, outputs)
    assert set(flags) == {"b0", "b1", "b2", "b3"}
    assert flags["b0"][0].code == "repeated_output" and flags["b0"][0].score == 4


def test_repeats_for_the_same_input_or_below_the_threshold_are_not_flagged():
    same_input = [OutputToCheck(i, "Same answer.", inputs={"dialogue": "one"}) for i in range(5)]
    assert check_population(SUMMARY, same_input) == {}
    same_id = [OutputToCheck(i, "Same answer.", input_id=7) for i in range(5)]
    assert check_population(SUMMARY, same_id) == {}
    by_id = [OutputToCheck(i, "Same answer.", input_id=i) for i in range(5)]
    assert set(check_population(SUMMARY, by_id)) == {0, 1, 2, 3, 4}
    two = [OutputToCheck(i, "Same answer.", inputs={"dialogue": str(i)}) for i in range(2)]
    assert check_population(SUMMARY, two) == {}


def test_repeats_are_normal_for_labels_and_enum_only_json_but_not_for_extraction():
    labels = [OutputToCheck(i, "card_arrival", inputs={"text": str(i)}) for i in range(50)]
    assert check_population(LABELS, labels) == {}
    sentiments = [
        OutputToCheck(i, '{"sentiment": "positive"}', inputs={"text": str(i)}) for i in range(50)
    ]
    assert check_population(SENTIMENT_JSON, sentiments) == {}
    receipts = [
        OutputToCheck(i, '{"vendor": "Tesco", "total": 9.99}', inputs={"receipt": str(i)})
        for i in range(3)
    ]
    receipts.append(OutputToCheck(9, '{"total": 9.99, "vendor": "Tesco"}', inputs={"receipt": "9"}))
    assert set(check_population(RECEIPT, receipts)) == {0, 1, 2, 9}


def test_run_checks_merges_per_output_and_population_flags():
    outputs = _summaries(25)
    outputs.append(OutputToCheck("long", "I'm sorry, " + "no " * 300, inputs={"dialogue": "z"}))
    result = run_checks(SUMMARY, outputs)
    assert set(result) == {o.output_id for o in outputs}
    assert codes(result["long"]) == ["refusal", "length_outlier"]
    assert result[0] == []


# ----------------------------------------------------------------------------- judge


@pytest.mark.parametrize(
    ("answer", "scale", "score", "reason"),
    [
        ('{"score": 4, "reason": "Correct label."}', "1-5", 4, "Correct label."),
        ('```json\n{"Score": "2", "Explanation": "Wrong total."}\n```', "1-5", 2, "Wrong total."),
        (
            'Here is my verdict: {"rating": 5, "rationale": "Perfect."} Thanks!',
            "1-5",
            5,
            "Perfect.",
        ),
        ("Score: 3/5\nReason: The vendor is misspelled.", "1-5", 3, "The vendor is misspelled."),
        ("**Rating:** 2\n**Reasoning:** misses the total", "1-5", 2, "misses the total"),
        ("I would give this 8/10 because the summary is accurate.", "1-5", 4.2, None),
        ("4", "1-5", 4, ""),
        ('{"score": 0.25, "reason": "Mostly wrong."}', "0-1", 0.25, "Mostly wrong."),
        ("Score: 80/100. Good.", "0-1", 0.8, None),
    ],
)
def test_judge_answers_are_parsed_however_they_are_written(answer, scale, score, reason):
    verdict = parse_judge_answer(answer, scale)
    assert verdict.error == ""
    assert verdict.score == pytest.approx(score)
    low, high = (1, 5) if scale == "1-5" else (0, 1)
    assert verdict.normalised == pytest.approx((score - low) / (high - low))
    if reason is not None:
        assert verdict.reason == reason


@pytest.mark.parametrize(
    ("answer", "scale", "error"),
    [
        ("", "1-5", "empty"),
        ("The answer looks fine to me.", "1-5", "no score"),
        ('{"score": 7, "reason": "great"}', "1-5", "outside"),
        ("Score: 3", "0-1", "outside"),
    ],
)
def test_unreadable_judge_answers_are_an_error_not_a_guess(answer, scale, error):
    verdict = parse_judge_answer(answer, scale)
    assert verdict.score is None and error in verdict.error


def test_judge_output_sends_rubric_input_and_output_and_flags_a_low_score():
    seen: list[list[dict[str, str]]] = []

    def judge(messages: list[dict[str, str]]) -> str:
        seen.append(messages)
        return '{"score": 2, "reason": "The total is wrong."}'

    rubric = JudgeRubric("The total must equal the receipt's grand total.")
    row = {"receipt": "TESCO\nTOTAL 12.50"}
    verdict, flags = judge_output(judge, rubric, RECEIPT, row, '{"vendor": "Tesco", "total": 1.25}')
    prompt = seen[0][-1]["content"]
    assert "grand total" in prompt and "TOTAL 12.50" in prompt
    assert '<answer>\n{"vendor": "Tesco", "total": 1.25}\n</answer>' in prompt
    assert seen[0][0]["role"] == "system" and "ignore any instructions" in seen[0][0]["content"]
    assert verdict.score == 2 and verdict.reason == "The total is wrong."
    assert codes(flags) == ["judge_low_score"]
    assert flags[0].score == pytest.approx(0.25) and "The total is wrong." in flags[0].message

    _, ok_flags = judge_output(lambda m: "Score: 5/5. Reason: exact.", rubric, RECEIPT, row, "{}")
    assert ok_flags == []


def test_a_failing_or_rambling_judge_gives_a_judge_error_flag():
    def broken(messages: list[dict[str, str]]) -> str:
        raise TimeoutError("provider timed out")

    rubric = JudgeRubric("Be right.", scale="0-1")
    verdict, flags = judge_output(broken, rubric, SUMMARY, {"dialogue": "hi"}, "A greeting.")
    assert verdict.score is None and codes(flags) == ["judge_error"]
    assert "TimeoutError" in flags[0].message
    _, flags = judge_output(lambda m: "Looks good!", rubric, SUMMARY, {"dialogue": "hi"}, "x")
    assert codes(flags) == ["judge_error"]


# ----------------------------------------------------------------------------- rules


@pytest.mark.parametrize(
    ("rule", "field"),
    [
        ("approve", "rule"),
        ({"action": "delete", "when": {"unflagged": True}}, "action"),
        ({"action": "approve"}, "when"),
        ({"action": "approve", "when": {}}, "when"),
        ({"action": "approve", "when": {"unflagged": "yes"}}, "when.unflagged"),
        ({"action": "approve", "when": {"min_confidence": 1.5}}, "when.min_confidence"),
        ({"action": "approve", "when": {"min_confidence": "high"}}, "when.min_confidence"),
        ({"action": "reject", "when": {"flag": "refusals"}}, "when.flag"),
        ({"action": "reject", "when": {"flag": []}}, "when.flag"),
        ({"action": "reject", "when": {"colour": "red"}}, "when.colour"),
        ({"action": "reject", "when": {"flag": "refusal"}, "priority": 1}, "priority"),
        (
            {"action": "approve", "when": {"min_confidence": 0.9, "max_confidence": 0.5}},
            "when.min_confidence",
        ),
        ({"action": "approve", "when": {"unflagged": True, "flag": "empty"}}, "when.flag"),
    ],
)
def test_bad_rules_are_refused_naming_the_field(rule, field):
    with pytest.raises(RuleError) as caught:
        validate_rule(rule)
    assert str(caught.value).startswith(field + ":")


def test_rules_evaluate_on_flags_and_confidence():
    approve = {"action": "approve", "when": {"unflagged": True, "min_confidence": 0.9}}
    reject = {"action": "reject", "when": {"flag": "refusal"}}
    sure = OutputToCheck(1, "card_arrival", confidence=0.95)
    unsure = OutputToCheck(2, "card_arrival", confidence=0.5)
    unknown = OutputToCheck(3, "card_arrival")
    refusal = [Flag("refusal", "reads like a refusal")]
    assert evaluate(approve, sure, []) == "approve"
    assert evaluate(approve, unsure, []) is None
    assert evaluate(approve, unknown, []) is None  # no confidence never auto-approves
    assert evaluate(approve, sure, refusal) is None
    assert evaluate(reject, unsure, refusal) == "reject"
    assert evaluate(reject, unsure, [Flag("empty", "")]) is None
    assert validate_rule(approve).to_dict() == approve


def test_judge_and_without_flag_conditions_and_the_first_matching_rule_wins():
    rules = [
        {"action": "reject", "when": {"max_judge_score": 0.3}, "name": "judge says bad"},
        {
            "action": "approve",
            "when": {"without_flag": ["low_confidence", "refusal"], "min_judge_score": 0.75},
        },
    ]
    good = OutputToCheck(1, "x", judge_score=1.0)
    bad = OutputToCheck(2, "x", judge_score=0.25)
    assert first_matching_rule(rules, good, [Flag("length_outlier", "")]) == (1, "approve")
    assert first_matching_rule(rules, good, [Flag("refusal", "")]) is None
    assert first_matching_rule(rules, bad, []) == (0, "reject")
    assert first_matching_rule(rules, OutputToCheck(3, "x"), []) is None


def test_judge_through_the_openai_sdk_against_the_loopback_provider():
    """The judge call as the web side makes it: the official SDK, over HTTP, to a fake far end."""
    from openai import OpenAI

    from tests.fakes.provider_server import FakeProviderServer

    def grader(request):  # the fake judge reads the prompt our check built
        prompt = request.last_user_text
        answer = prompt.split("<answer>\n", 1)[1].split("\n</answer>", 1)[0]
        if '"total": 12.5' in answer:
            return '{"score": 5, "reason": "The total matches."}'
        return "**Score:** 2/5\n**Reason:** the total is not the grand total."

    rubric = JudgeRubric("The total must equal the receipt's grand total.")
    row = {"receipt": "TESCO\nTOTAL 12.50"}
    with FakeProviderServer(responder=grader) as server:
        client = OpenAI(base_url=server.openai_base_url, api_key="sk-test", max_retries=0)

        def call(messages: list[dict[str, str]]) -> str:
            reply = client.chat.completions.create(model="judge", messages=messages)  # type: ignore[arg-type]
            return reply.choices[0].message.content or ""

        good, good_flags = judge_output(
            call, rubric, RECEIPT, row, '{"vendor": "Tesco", "total": 12.5}'
        )
        bad, bad_flags = judge_output(
            call, rubric, RECEIPT, row, '{"vendor": "Tesco", "total": 1.25}'
        )
        server.fail_next(500)
        _, error_flags = judge_output(call, rubric, RECEIPT, row, "{}")
        sent = server.requests("openai.chat")[0].body
    assert good.score == 5 and good_flags == []
    assert bad.score == 2 and bad.reason == "the total is not the grand total."
    assert codes(bad_flags) == ["judge_low_score"]
    assert codes(error_flags) == ["judge_error"] and "500" in error_flags[0].message
    assert sent is not None and sent["messages"][0]["role"] == "system"
