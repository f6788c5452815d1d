"""Answering chat requests with a served student, Django-free (the serving process calls it).

What a client sends is the task's *input*, not a prompt: the last user message's content is the
input text (a task with one input field), or a JSON object of the input fields. The engine
renders the task's prompt exactly as the student was trained on it (``build_messages``, then
``student_messages`` so no default system prompt sneaks in, then without the label list where
the student was trained without it), so a served student sees what it learnt on.

- label tasks: greedy decoding, **constrained to the label set**. Fast path: free greedy; while
  its tokens stay on the label trie, constrained greedy would have chosen the same ones (every
  free choice was an allowed one), so the answer is decided as soon as the tokens reach a node
  with one label under it: decoding stops there instead of generating the label's remaining
  tokens (BANKING77: decided after 3.0 of 7.2 tokens on average). A label token that is the
  only way on (``forced_tokens``: "card" is always followed by "_") is no choice, so an engine
  that can (llama.cpp) appends it without a pass of its own: BANKING77 needs 0.8 passes after
  the prompt's instead of 2.1. When free greedy leaves the label set first, the trie is walked a
  step at a time, choosing the best allowed token.
  ``confidence`` — only when asked, since it needs every token of the label and the end of
  turn — is P(label, then end of turn) under the student: the product of those tokens'
  probabilities (the same figure the evaluation stores, which the gateway's cascade uses).
- json tasks: **validate and retry**: greedy, parsed and checked against the task's JSON Schema;
  if invalid, up to ``JSON_RETRIES`` sampled attempts; never an invalid answer (an error instead).
- text tasks: greedy, free.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.label_trie import LabelTrie
from worker.serving_backends import Backend, Generated, context_limit_of, open_backend
from worker.storable import storable_text
from worker.taskspec import TaskSpec, build_messages, parse_output, without_label_list
from worker.training_data import student_messages

JSON_RETRIES = 2
JSON_RETRY_TEMPERATURE = 0.7
DEFAULT_MAX_TOKENS = {"label": 0, "json": 512, "text": 256}


class ServeError(Exception):
    """A request the engine refuses; ``status``/``type``/``param``/``code`` fill OpenAI's shape."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.param = param
        self.code = code


@dataclass
class Answer:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # stop | length
    confidence: float | None = None  # label tasks: P(label, then end of turn)
    attempts: int = 1  # json tasks: 1 + retries used

    def __post_init__(self) -> None:
        self.text = storable_text(self.text)  # logged (request log, gateway): no NUL


def decided_labels(trie: LabelTrie) -> list[str | None]:
    """Per trie node, the label when exactly one label ends at or below it, else None."""
    count = [0 if label is None else 1 for label in trie.label_at]
    some: list[str | None] = list(trie.label_at)  # a label at or below each node
    for node in range(len(trie.tokens) - 1, 0, -1):  # a child always comes after its parent
        parent = trie.parent[node]
        count[parent] += count[node]
        some[parent] = some[parent] or some[node]
    return [label if n == 1 else None for label, n in zip(some, count, strict=True)]


def forced_tokens(trie: LabelTrie, decided: Sequence[str | None], node: int) -> list[int]:
    """The label tokens that must follow trie ``node`` up to the next choice: while the node
    has one child and no label ends there (the end of turn is then not allowed either),
    constrained greedy has that one token to take. Stops where the label is decided (nothing
    more is generated there); none off the trie (``node`` < 0) or at the root."""
    out: list[int] = []
    while node > 0 and decided[node] is None and trie.label_at[node] is None:
        if len(trie.children[node]) != 1:
            break
        ((token, node),) = trie.children[node].items()
        out.append(token)
    return out


def input_messages(task: TaskSpec, row: Mapping[str, Any]) -> list[dict[str, str]]:
    """The chat messages that carry a task's input row to the serving process (``task_row``
    reads them back): the input text itself for a task with one input field, else a JSON object
    of the fields."""
    if len(task.input_fields) == 1:
        content = str(row.get(task.input_fields[0], ""))
    else:
        content = json.dumps({f: row.get(f) for f in task.input_fields}, ensure_ascii=False)
    return [{"role": "user", "content": content}]


def task_row(task: TaskSpec, messages: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The task's input row from a client's chat messages (the last user message)."""
    users = [m for m in messages if isinstance(m, Mapping) and m.get("role") == "user"]
    if not users:
        raise ServeError("messages must include a user message with the input", param="messages")
    content = users[-1].get("content")
    if isinstance(content, list):  # OpenAI's content parts: join the text parts
        content = "".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, Mapping) and p.get("type") == "text"
        )
    if not isinstance(content, str) or not content.strip():
        raise ServeError("the last user message has no text", param="messages")
    if len(task.input_fields) == 1:
        return {task.input_fields[0]: content}
    try:
        row = json.loads(content)
    except ValueError:
        row = None
    if not isinstance(row, dict):
        raise ServeError(
            "this task has several input fields: send a JSON object with "
            + ", ".join(task.input_fields),
            param="messages",
        )
    missing = [f for f in task.input_fields if f not in row]
    if missing:
        raise ServeError(f"input field {missing[0]!r} is missing", param="messages")
    return {f: row[f] for f in task.input_fields}


def _label_list_in_prompt(model_dir: Path) -> bool:
    from worker.training_loop import TRAINING_META_FILE

    try:
        meta = json.loads((model_dir / TRAINING_META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return True
    fmt = meta.get("prompt_format") if isinstance(meta, dict) else None
    return not (isinstance(fmt, dict) and fmt.get("label_list") is False)


@dataclass
class ServedStudent:
    """One student loaded for serving: its task, its backend, its label trie."""

    task: TaskSpec
    model_dir: Path
    backend: Backend
    context_limit: int
    label_list_in_prompt: bool
    trie: LabelTrie | None = None
    # Per trie node: the label, when exactly one label lies at or below it (the answer is then
    # decided), else None.
    decided: list[str | None] = field(default_factory=list, repr=False)
    _injects: bool | None = field(default=None, repr=False)

    @classmethod
    def load(
        cls, *, task: TaskSpec, model_dir: Path, cache_dir: Path, engine: str = "auto"
    ) -> ServedStudent:
        backend = open_backend(model_dir, cache_dir, engine=engine)
        served = cls(
            task=task,
            model_dir=model_dir,
            backend=backend,
            # the model's, or less where the engine holds less (llama.cpp's KV cache is capped)
            context_limit=int(
                min(context_limit_of(model_dir), getattr(backend, "context_limit", math.inf))
            ),
            label_list_in_prompt=_label_list_in_prompt(model_dir),
        )
        if hasattr(backend, "static_prefix"):
            backend.static_prefix = served.common_prefix()
        if task.output_kind == "label":
            tok = backend.tokenizer  # type: ignore[attr-defined]
            sequences = [
                [int(t) for t in tok(label, add_special_tokens=False)["input_ids"]]
                for label in task.label_set
            ]
            served.trie = LabelTrie.build(tuple(task.label_set), sequences)
            served.decided = decided_labels(served.trie)
        return served

    @property
    def tokenizer(self) -> Any:
        return self.backend.tokenizer  # type: ignore[attr-defined]

    # -- prompts -----------------------------------------------------------------------------

    def prompt_messages(self, messages: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
        row = task_row(self.task, messages)
        try:
            rendered = build_messages(self.task, row)
        except ValueError as exc:
            raise ServeError(f"the input does not fit the task: {exc}", param="messages") from exc
        out = student_messages(rendered, self.tokenizer)
        return out if self.label_list_in_prompt else without_label_list(out)

    def encode(self, messages: Sequence[Mapping[str, Any]], max_tokens: int) -> list[int]:
        """The prompt's token ids; ServeError 400 naming the limit when it does not fit."""
        encoded = self.tokenizer.apply_chat_template(
            self.prompt_messages(messages),
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
        )
        ids = [int(t) for t in encoded["input_ids"]]
        if len(ids) + max_tokens > self.context_limit:
            raise ServeError(
                f"this model's context is {self.context_limit} tokens; the prompt has "
                f"{len(ids)} tokens and {max_tokens} more were asked for (max_tokens)",
                param="messages",
                code="context_length_exceeded",
            )
        return ids

    def common_prefix(self) -> list[int]:
        """The prompt tokens every input of this task shares (what comes before the input),
        found by rendering two unlike inputs; the last shared token is left out, in case a
        tokenizer joins it with the input's first characters."""
        rows = [
            dict.fromkeys(self.task.input_fields, "alpha 1"),
            dict.fromkeys(self.task.input_fields, "Zulu? 2"),
        ]
        try:
            a, b = (
                self.encode([{"role": "user", "content": self._as_content(r)}], 0) for r in rows
            )
        except ServeError:
            return []
        k = 0
        while k < min(len(a), len(b)) and a[k] == b[k]:
            k += 1
        return a[: max(0, k - 1)]

    def _as_content(self, row: dict[str, str]) -> str:
        if len(self.task.input_fields) == 1:
            return row[self.task.input_fields[0]]
        return json.dumps(row)

    def max_tokens(self, asked: int | None) -> int:
        """The completion budget: a label task needs its longest label + the end token."""
        if self.trie is not None:
            return self.trie.max_depth + 1
        if asked is not None and asked < 1:
            raise ServeError("max_tokens must be at least 1", param="max_tokens")
        return asked or DEFAULT_MAX_TOKENS[self.task.output_kind]

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True)).strip()

    # -- answering ---------------------------------------------------------------------------

    def answer_batch(
        self, prompts: Sequence[list[int]], max_tokens: int, *, confidence: bool = False
    ) -> list[Answer]:
        """Answers for prompts of this student, batched where the engine can. ``confidence``:
        label answers carry P(label, then end of turn) (it costs the label's remaining tokens)."""
        if self.task.output_kind == "label":
            return self._labels(prompts) if confidence else self._labels_decided(prompts)
        generated = self.backend.greedy(prompts, max_tokens)
        answers = []
        for prompt, g in zip(prompts, generated, strict=True):
            answer = self._answer(prompt, g)
            if self.task.output_kind == "json":
                answer = self._json_checked(prompt, answer, max_tokens)
            answers.append(answer)
        return answers

    def _answer(self, prompt: Sequence[int], g: Generated) -> Answer:
        return Answer(
            text=self.decode(g.tokens),
            prompt_tokens=len(prompt),
            completion_tokens=len(g.tokens) + (1 if g.ended else 0),
            finish_reason="stop" if g.ended else "length",
        )

    def _labels(self, prompts: Sequence[list[int]]) -> list[Answer]:
        trie = self.trie
        assert trie is not None
        generated = self.backend.greedy(prompts, trie.max_depth + 1)
        answers = []
        for prompt, g in zip(prompts, generated, strict=True):
            node = 0
            for t in g.tokens:
                node = trie.children[node].get(t, -1)
                if node < 0:
                    break
            if g.ended and node > 0 and trie.label_at[node] is not None:
                label, logprob = trie.label_at[node], g.logprob
            else:  # free greedy left the label set: walk the trie, allowed tokens only
                label, logprob, node = self._constrained(prompt)
            answers.append(
                Answer(
                    text=str(label),
                    prompt_tokens=len(prompt),
                    completion_tokens=trie.depth[node] + 1,
                    finish_reason="stop",
                    confidence=math.exp(logprob),
                )
            )
        return answers

    def _walk(self, tokens: Sequence[int]) -> int:
        """The trie node these tokens lead to, -1 when they leave the label set."""
        trie = self.trie
        assert trie is not None
        node = 0
        for t in tokens:
            node = trie.children[node].get(t, -1)
            if node < 0:
                return -1
        return node

    def _labels_decided(self, prompts: Sequence[list[int]]) -> list[Answer]:
        """Labels without their confidence: decoding stops once the label is decided."""
        trie = self.trie
        assert trie is not None
        eos = self.backend.eos_token_ids

        def stop(_: int, tokens: Sequence[int]) -> bool:
            if tokens[-1] in eos:
                return True
            node = self._walk(tokens)
            return node < 0 or self.decided[node] is not None

        if self.decided[0] is not None:  # one label: nothing to decide
            generated = [Generated([], [], True) for _ in prompts]
        else:
            generated = self.backend.greedy(
                prompts, trie.max_depth + 1, stop=stop, force=self._forced
            )
        answers = []
        for prompt, g in zip(prompts, generated, strict=True):
            node = self._walk(g.tokens)
            label = self.decided[node] if node >= 0 else None
            if label is None and g.ended and node > 0:
                label = trie.label_at[node]  # ended on a label that prefixes others
            if label is None:  # free greedy left the label set: walk the trie
                label, _, _ = self._constrained(prompt, score=False)
            end = trie.label_paths[trie.labels.index(label)][-1]
            answers.append(
                Answer(
                    text=label,
                    prompt_tokens=len(prompt),
                    completion_tokens=trie.depth[end] + 1,
                    finish_reason="stop",
                )
            )
        return answers

    def _forced(self, _: int, tokens: Sequence[int]) -> list[int]:
        return forced_tokens(self.trie, self.decided, self._walk(tokens)) if self.trie else []

    def _constrained(self, prompt: Sequence[int], *, score: bool = True) -> tuple[str, float, int]:
        trie = self.trie
        assert trie is not None
        eos = self.backend.eos_token_ids
        node, seq = 0, list(prompt)
        while True:
            allowed = list(trie.children[node])
            ending = trie.label_at[node] is not None
            wanted = allowed + (list(eos) if ending else [])
            if len(wanted) == 1:  # one way on: no choice to make, no model call
                token = wanted[0]
            else:
                scores = self.backend.next_logprobs([seq], wanted)[0]
                token = wanted[max(range(len(wanted)), key=lambda k: (scores[k], -wanted[k]))]
            if token in eos and ending:
                break
            node = trie.children[node][token]
            seq.append(token)
        if not score:
            return str(trie.label_at[node]), math.nan, node
        # The answer's probability, forced steps included: one scoring pass over the whole label.
        logprob = self.backend.continuation_logprob(list(prompt), [*seq[len(prompt) :], token])
        return str(trie.label_at[node]), logprob, node

    def _json_checked(self, prompt: list[int], answer: Answer, max_tokens: int) -> Answer:
        attempts = 1
        while parse_output(self.task, answer.text).error:
            if attempts > JSON_RETRIES:
                raise ServeError(
                    f"the student gave no JSON valid against the task's schema in {attempts} "
                    f"attempts: {parse_output(self.task, answer.text).error}",
                    status=502,
                    type="invalid_model_output",
                    code="schema_validation_failed",
                )
            g = self.backend.sample([prompt], max_tokens, JSON_RETRY_TEMPERATURE)[0]
            answer = self._answer(prompt, g)
            attempts += 1
        answer.attempts = attempts
        return answer

    def stream_text(self, prompt: list[int], max_tokens: int) -> Iterator[str]:
        """Text deltas as they are generated (text tasks); stops when the caller stops reading."""
        eos = self.backend.eos_token_ids
        ids: list[int] = []
        sent = ""
        for token, _ in self.backend.stream(prompt, max_tokens):
            if token in eos:
                return
            ids.append(token)
            text = str(self.tokenizer.decode(ids, skip_special_tokens=True))
            if text.endswith("\ufffd"):  # half a multi-byte character: wait for the rest
                continue
            if len(text) > len(sent):
                yield text[len(sent) :]
                sent = text
