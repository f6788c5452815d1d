"""Label answers stop decoding once the label is decided (one label left under the trie node the
tokens reached): the same label as decoding to the end, fewer steps; the confidence, which
needs every token of the label, is computed only when asked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.tiny_model import build_tiny_model
from worker.label_trie import LabelTrie
from worker.serving_engine import ServedStudent, decided_labels, forced_tokens
from worker.taskspec import TaskSpec
from worker.training_loop import TRAINING_META_FILE

TEMPLATE = "Which intent is this message?\n\nMessage: {{ text }}"
INPUTS = ["my card has not arrived yet", "top up failed twice, why?", "x"]


def test_decided_labels_per_trie_node() -> None:
    # "a b c" and "a b d" share two tokens; "a" alone is a label that prefixes both.
    trie = LabelTrie.build(("abc", "abd", "a", "z"), [[1, 2, 3], [1, 2, 4], [1], [9]])
    decided = decided_labels(trie)
    by_path = {tuple(trie.tokens[n] for n in path): path[-1] for path in trie.label_paths}
    assert decided[0] is None  # the root: every label
    assert decided[by_path[(1,)]] is None  # "a" ends here but "abc"/"abd" go on
    assert decided[trie.parent[by_path[(1, 2, 3)]]] is None  # after "a b": two left
    assert decided[by_path[(1, 2, 3)]] == "abc"
    assert decided[by_path[(1, 2, 4)]] == "abd"
    assert decided[by_path[(9,)]] == "z"
    one = LabelTrie.build(("only",), [[5, 6]])
    assert decided_labels(one)[0] == "only"


def test_forced_tokens_run_to_the_next_choice() -> None:
    # "card_arrival"/"card_linking" as 1 2 3 / 1 2 4; "top_up_x"/"top_up_y" as 7 8 9 1 / 7 8 9 2;
    # "a" (5) and "a b" (5 6): the end of turn is a choice after "a".
    labels = ("c1", "c2", "t1", "t2", "a", "ab")
    trie = LabelTrie.build(labels, [[1, 2, 3], [1, 2, 4], [7, 8, 9, 1], [7, 8, 9, 2], [5], [5, 6]])
    decided = decided_labels(trie)

    def node(*tokens: int) -> int:
        n = 0
        for t in tokens:
            n = trie.children[n][t]
        return n

    assert forced_tokens(trie, decided, node(1)) == [2]  # then 3 or 4: a choice
    assert forced_tokens(trie, decided, node(7)) == [8, 9]
    assert forced_tokens(trie, decided, node(7, 8)) == [9]
    assert forced_tokens(trie, decided, node(1, 2)) == []  # a choice here
    assert forced_tokens(trie, decided, node(5)) == []  # "a" may end: 6 or the end of turn
    assert forced_tokens(trie, decided, node(1, 2, 3)) == []  # decided
    assert forced_tokens(trie, decided, 0) == []  # the root: the first token is always chosen
    assert forced_tokens(trie, decided, -1) == []  # off the label set
    one = LabelTrie.build(("xyz",), [[4, 5, 6]])
    assert forced_tokens(one, decided_labels(one), one.label_paths[0][0]) == []  # decided


def _student(tmp_path: Path) -> Path:
    """The tiny model, marked as trained without the label list in its prompt (as students
    trained that way are): its prompt, and so its free greedy tokens, do not depend on the
    label set, which lets the test build labels out of what it will generate."""
    model_dir = build_tiny_model(tmp_path / "student")
    meta = {"prompt_format": {"label_list": False}}
    (model_dir / TRAINING_META_FILE).write_text(json.dumps(meta), encoding="utf-8")
    return model_dir


def _load(model_dir: Path, cache: Path, labels: tuple[str, ...], engine: str) -> ServedStudent:
    task = TaskSpec(
        instruction_template=TEMPLATE,
        output_kind="label",
        input_fields=("text",),
        label_set=labels,
    )
    return ServedStudent.load(task=task, model_dir=model_dir, cache_dir=cache, engine=engine)


@pytest.mark.parametrize("engine", ["llama", "onnx", "ct2", "transformers"])
def test_stop_rule_ends_each_prompt_where_it_says(tmp_path: Path, engine: str) -> None:
    served = _load(_student(tmp_path), tmp_path / "cache", ("refund", "card_arrival"), engine)
    prompts = [served.encode([{"role": "user", "content": t}], 0) for t in INPUTS]
    # llama.cpp: both from an empty cache, so both passes hold the same tokens (a pass of other
    # tokens rounds differently, enough to change a random model's greedy choice)
    reset = getattr(served.backend, "reset", lambda: None)
    reset()
    whole = served.backend.greedy(prompts, 6)
    reset()
    cut = served.backend.greedy(prompts, 6, stop=lambda i, tokens: len(tokens) >= i + 1)
    for i, (w, c) in enumerate(zip(whole, cut, strict=True)):
        # the same greedy tokens, cut after i + 1 of them (or where the whole one ended)
        assert c.tokens == w.tokens[: i + 1]


@pytest.mark.parametrize("engine", ["llama", "onnx", "ct2", "transformers"])
def test_decided_answers_equal_the_whole_decoding(tmp_path: Path, engine: str) -> None:
    model_dir = _student(tmp_path)
    cache = tmp_path / "cache"
    probe = _load(model_dir, cache, ("refund", "card_arrival"), engine)
    prompt = probe.encode([{"role": "user", "content": INPUTS[0]}], 0)
    free = probe.backend.greedy([prompt], 6)[0].tokens
    tok = probe.tokenizer

    def label_of(tokens: list[int]) -> str | None:
        text = tok.decode(tokens)
        ok = text.strip() == text and tok(text, add_special_tokens=False)["input_ids"] == tokens
        return text if ok else None

    # A label the free decoding spells out, one that shares its first token only, another one.
    spelled = next((t for k in range(2, len(free)) if (t := label_of(free[:k])) is not None), None)
    assert spelled is not None, f"no label could be spelled from {free}"
    sibling = next(
        t
        for other in range(tok.vocab_size)
        if other != free[1] and (t := label_of([free[0], other])) is not None
    )
    labels = (sibling, spelled, "refund")
    served = _load(model_dir, cache, labels, engine)
    assert served.encode([{"role": "user", "content": INPUTS[0]}], 0) == prompt

    asked = [served.encode([{"role": "user", "content": t}], 0) for t in INPUTS]
    decided = served.answer_batch(asked, 0)
    scored = served.answer_batch(asked, 0, confidence=True)
    alone = [served.answer_batch([p], 0)[0] for p in asked]
    assert decided[0].text == spelled  # reached through the decided node, not the fallback
    assert [a.text for a in decided] == [a.text for a in scored] == [a.text for a in alone]
    assert [a.completion_tokens for a in decided] == [a.completion_tokens for a in scored]
    assert all(a.confidence is None for a in decided)
    assert all(0 < (a.confidence or 0) <= 1 for a in scored)
    stopped = served.backend.greedy(
        [prompt], 6, stop=lambda _, t: served.decided[served._walk(t)] is not None
    )[0]
    assert len(stopped.tokens) == len(tok(spelled, add_special_tokens=False)["input_ids"])
