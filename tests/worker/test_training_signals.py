"""Rationales and soft labels in the engine: the parser keeps answer and reason apart, the
teacher's label distribution comes from its logprobs, soft targets follow the label tokens, and a
tiny model fine-tunes end to end with each option (and learns what each option teaches)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from worker.taskspec import TaskSpec, build_messages, parse_output, teacher_messages
from worker.teachers.confidence import label_confidence, label_distribution
from worker.training import TrainSpec, build_examples, run_training
from worker.training_data import TrainExample
from worker.training_signals import RATIONALE_PREFIX, rationale_examples

LABELS = ("card_arrival", "card_linking", "pending_transfer")
TASK = TaskSpec(
    instruction_template="Message: {{text}}",
    output_kind="label",
    input_fields=("text",),
    label_set=LABELS,
)
ASKING = replace(TASK, rationale=True)


def test_the_teacher_is_asked_for_a_reason_and_the_student_never_is() -> None:
    asked = teacher_messages(ASKING, {"text": "where is my card"})[-1]["content"]
    assert 'new line starting with "Reason:"' in asked
    student = build_messages(ASKING, {"text": "where is my card"})[-1]["content"]
    assert "Reason" not in student
    assert teacher_messages(TASK, {"text": "x"}) == build_messages(TASK, {"text": "x"})


@pytest.mark.parametrize(
    ("spec", "raw", "value", "rationale"),
    [
        (ASKING, "card_arrival\nReason: the card is late.", "card_arrival", "the card is late."),
        (
            ASKING,
            "Label: card_linking\nIt mentions linking.",
            "card_linking",
            "It mentions linking.",
        ),
        (ASKING, "card_arrival", "card_arrival", ""),
        (
            TaskSpec("{{t}}", "json", ("t",), json_schema={"type": "object"}, rationale=True),
            '```json\n{"a": 1}\n```\nReason: one field.',
            {"a": 1},
            "one field.",
        ),
        (
            TaskSpec("{{t}}", "json", ("t",), json_schema={"type": "object"}, rationale=True),
            '{"a": {"b": [1, 2]}}\nbecause: nested',
            {"a": {"b": [1, 2]}},
            "nested",
        ),
        (
            TaskSpec("{{t}}", "text", ("t",), rationale=True),
            "Line one.\nLine two.\nReason: short summary.",
            "Line one.\nLine two.",
            "short summary.",
        ),
        # Without the option nothing is split: a multi-line text answer stays whole.
        (TaskSpec("{{t}}", "text", ("t",)), "a\nReason: b", "a\nReason: b", ""),
    ],
)
def test_the_parser_keeps_answer_and_reason_apart(spec, raw, value, rationale) -> None:  # type: ignore[no-untyped-def]
    parsed = parse_output(spec, raw)
    assert parsed.ok, parsed.error
    assert parsed.value == value
    assert parsed.rationale == rationale


def test_a_wrong_answer_is_still_an_error_with_its_reason_kept() -> None:
    parsed = parse_output(ASKING, "no idea\nReason: unclear message")
    assert not parsed.ok and "not in the label set" in parsed.error
    assert parsed.rationale == "unclear message"


def position(token: str, p: float, *alternatives: tuple[str, float]) -> dict[str, Any]:
    top = [{"token": token, "logprob": math.log(p)}]
    top += [{"token": t, "logprob": math.log(q)} for t, q in alternatives]
    return {"token": token, "logprob": math.log(p), "top": top}


def test_the_label_distribution_follows_the_tokens_the_teacher_weighed() -> None:
    positions = [
        position("card", 0.6, ("pending", 0.3), ("Hello", 0.1)),
        position("_arrival", 0.5, ("_linking", 0.5)),
    ]
    dist = label_distribution(positions, LABELS)
    assert dist is not None
    # "Hello" continues no label: the mass is shared by the label-continuing tokens only.
    assert dist == pytest.approx(
        {"card_arrival": 1 / 3, "card_linking": 1 / 3, "pending_transfer": 1 / 3}
    )
    assert label_distribution(None, LABELS) is None
    assert label_distribution([position("maybe", 0.9)], LABELS) is None


def test_a_reason_after_the_answer_does_not_hide_the_label_confidence() -> None:
    from worker.teachers.confidence import TokenLogprob

    tokens = [
        TokenLogprob("card", math.log(0.8), (("card", math.log(0.8)), ("pending", math.log(0.2)))),
        TokenLogprob("_arrival", math.log(0.9), (("_arrival", math.log(0.9)),)),
        TokenLogprob("\nReason", math.log(0.9), ()),
        TokenLogprob(": late", math.log(0.9), ()),
    ]
    confidence, used = label_confidence(tokens, LABELS)
    assert confidence == pytest.approx(0.8)
    dist = label_distribution(used, LABELS)
    assert dist == pytest.approx({"card_arrival": 0.8, "pending_transfer": 0.2})


def test_rationale_examples_are_a_prefixed_second_task() -> None:
    (example,) = build_examples(TASK, [{"text": "late card", "output": "card_arrival"}])
    with_reason = replace(example, rationale="The card is late.")
    extra = rationale_examples([with_reason, example])
    assert len(extra) == 1
    assert extra[0].completion == "The card is late."
    assert extra[0].messages[-1]["content"] == RATIONALE_PREFIX + example.messages[-1]["content"]
    assert with_reason.messages == example.messages  # the answer's prompt is unchanged


def test_soft_targets_factor_the_distribution_along_the_label_tokens(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    from worker.training_loop import tokenize_dataset

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    (example,) = build_examples(TASK, [{"text": "my card", "output": "card_arrival"}])
    soft = replace(
        example, soft_label={"card_arrival": 0.6, "card_linking": 0.3, "pending_transfer": 0.1}
    )
    dataset, _, _ = tokenize_dataset([soft, example], tokenizer, 256, soft_temperature=1.0)
    row, plain = dataset[0], dataset[1]
    assert plain["soft_positions"] == []  # no distribution: one-hot, plain cross-entropy
    first, second = row["soft_probs"]
    # After the prompt: "card..." (0.9) against "pending..." (0.1); then within "card_":
    # "arrival" 0.6 against "linking" 0.3, renormalised.
    assert sorted(first) == pytest.approx([0.1, 0.9])
    assert sorted(second) == pytest.approx([1 / 3, 2 / 3])
    for at, ids, probs in zip(
        row["soft_positions"], row["soft_token_ids"], row["soft_probs"], strict=True
    ):
        gold = row["input_ids"][at]
        assert row["labels"][at] == gold and gold in ids
        assert max(probs) == probs[ids.index(gold)]
    # Without the option nothing is added: the default path is untouched.
    assert "soft_positions" not in tokenize_dataset([soft], tokenizer, 256)[0].column_names


ROWS = [{"text": f"my card has not arrived yet {i}", "output": "card_arrival"} for i in range(10)]
ROWS += [{"text": f"the transfer is pending {i}", "output": "pending_transfer"} for i in range(10)]


def tiny_spec(
    model_dir: Path, out: Path, examples: list[TrainExample], **options: Any
) -> TrainSpec:
    options.setdefault("max_steps", 24)
    return TrainSpec(
        base_model=str(model_dir),
        output_dir=str(out),
        train_examples=examples,
        batch_size=4,
        learning_rate=1e-2,
        device="cpu",
        threads=1,
        seed=0,
        checkpoint_every_steps=1000,
        **options,
    )


def runner_up_share(model_dir: Path) -> float:
    """On a card_arrival message, after "card_": the trained model's probability of the token
    that leads to card_linking, as a share of the two labels' tokens (constrained decoding
    chooses between exactly these two there)."""
    import torch

    from worker.inference import load_model

    model = load_model(model_dir, device="cpu", threads=1)
    prompt = model.encode(
        model.prompt(build_messages(TASK, {"text": "my card has not arrived yet 3"}))
    )
    tok = model.tokenizer
    arrival = tok("card_arrival", add_special_tokens=False)["input_ids"]
    linking = tok("card_linking", add_special_tokens=False)["input_ids"]
    split = next(i for i, (a, b) in enumerate(zip(arrival, linking, strict=False)) if a != b)
    with torch.no_grad():
        logits = model.model(torch.tensor([prompt + arrival[:split]])).logits[0, -1]
    probs = torch.softmax(logits.float(), dim=-1)
    a, b = float(probs[arrival[split]]), float(probs[linking[split]])
    return b / (a + b)


@pytest.mark.slow
def test_a_tiny_student_learns_the_teachers_doubt_with_soft_labels(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    # The teacher put 40 % on card_linking for every card_arrival row.
    examples = [
        replace(e, soft_label={"card_arrival": 0.6, "card_linking": 0.4})
        if e.completion == "card_arrival"
        else e
        for e in build_examples(TASK, ROWS)
    ]
    hard = run_training(tiny_spec(tiny_model_dir, tmp_path / "hard", examples))
    soft = run_training(
        tiny_spec(
            tiny_model_dir,
            tmp_path / "soft",
            examples,
            soft_label_weight=1.0,
            soft_label_temperature=1.0,
        )
    )
    assert hard.status == soft.status == "succeeded", hard.error + soft.error
    hard_share = runner_up_share(Path(hard.merged_dir or ""))
    soft_share = runner_up_share(Path(soft.merged_dir or ""))
    # Hard labels teach "card_arrival" only; the KL term teaches the teacher's 40 %.
    # The exact share moves with the number of threads training picks (it follows the
    # machine's load; 2 idle cores: 0.327, a loaded run 0.199, the whole suite on 2 cores 0.142,
    # the hard student ~0.001); what must hold is that the soft student keeps a real share of
    # the doubt, many times the hard student's.
    assert hard_share < 0.05, hard_share
    assert 0.1 < soft_share < 0.6, soft_share
    assert soft_share > 10 * hard_share, (soft_share, hard_share)
    assert soft.hyperparameters  # the run reports what it resolved


@pytest.mark.slow
def test_a_tiny_student_with_rationales_still_answers_with_the_label_only(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from worker.inference import load_model

    examples = [
        replace(e, rationale="late card" if e.completion == "card_arrival" else "money waits")
        for e in build_examples(TASK, ROWS)
    ]
    events: list[dict[str, Any]] = []
    result = run_training(
        tiny_spec(
            tiny_model_dir,
            tmp_path / "job",
            examples,
            rationale_training="second_task",
            max_steps=48,  # twice the examples: twice the steps for the same epochs
        ),
        events.append,
    )
    assert result.status == "succeeded", result.error
    started = next(e for e in events if e["type"] == "started")
    assert started["n_train"] == 2 * len(examples)  # each row is also a "[rationale]" example
    model = load_model(Path(result.merged_dir or ""), device="cpu", threads=1)
    prompt = build_messages(TASK, {"text": "my card has not arrived yet 4"})
    answer = model.generate_sequential([model.prompt(prompt)], max_new_tokens=8).outputs[0]
    assert answer.strip() == "card_arrival"  # serving: the label, then it stops
    asked = [dict(m) for m in prompt]
    asked[-1]["content"] = RATIONALE_PREFIX + asked[-1]["content"]
    reason = model.generate_sequential([model.prompt(asked)], max_new_tokens=8).outputs[0]
    assert reason.strip() == "late card"
