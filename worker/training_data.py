"""Training examples: from task rows to (prompt messages, completion), and to token ids.

A student is trained in prompt/completion form rendered with its *own* chat template, and the
loss covers the completion only. The prompt is the task's: when the task has no system prompt
we still send an empty system turn if the template would otherwise inject a default one
(SmolLM2's template adds "You are a helpful AI assistant named SmolLM..." — most of a short
ticket's tokens). Inference must render prompts the same way: use ``student_messages``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from worker.taskspec import TaskSpec, build_messages, canonical_output

Message = dict[str, str]


@dataclass(frozen=True)
class TrainExample:
    """One supervised example: chat messages (system + user) and the answer to learn."""

    messages: list[Message]
    completion: str
    # Optional training signals (see worker.training_signals): the teacher's reason for the
    # answer, and its distribution over the label set ({label: probability}).
    rationale: str = ""
    soft_label: dict[str, float] | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"messages": self.messages, "completion": self.completion}
        if self.rationale:
            data["rationale"] = self.rationale
        if self.soft_label:
            data["soft_label"] = self.soft_label
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrainExample:
        soft = data.get("soft_label")
        return cls(
            messages=[dict(m) for m in data["messages"]],
            completion=str(data["completion"]),
            rationale=str(data.get("rationale") or ""),
            soft_label={str(k): float(v) for k, v in soft.items()} if soft else None,
        )


def build_examples(
    task: TaskSpec, rows: Iterable[Mapping[str, Any]], *, output_key: str = "output"
) -> list[TrainExample]:
    """Examples from input rows that carry their approved output under ``output_key``.

    The output is the parsed value (a label, a JSON object, a text); it is rendered with
    ``canonical_output`` so what the student learns is what the parser accepts.
    """
    examples = []
    for index, row in enumerate(rows):
        if output_key not in row:
            raise ValueError(f"row {index}: no {output_key!r} value to train on")
        inputs = {k: v for k, v in row.items() if k != output_key}
        examples.append(
            TrainExample(
                messages=build_messages(task, inputs),
                completion=canonical_output(task, row[output_key]),
            )
        )
    return examples


class ChatTokenizer(Protocol):
    eos_token: str | None

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...

    def __call__(self, text: Any, **kwargs: Any) -> Any: ...


_PROBE = "\u2063DISTILLERY-PROBE\u2063"


def template_injects_default_system(tokenizer: ChatTokenizer) -> bool:
    """Whether the chat template adds text of its own when the conversation has no system turn."""
    bare = str(tokenizer.apply_chat_template([{"role": "user", "content": _PROBE}], tokenize=False))
    try:
        with_empty = str(
            tokenizer.apply_chat_template(
                [{"role": "system", "content": ""}, {"role": "user", "content": _PROBE}],
                tokenize=False,
            )
        )
    except Exception:  # a template that refuses system turns cannot inject one either
        return False
    return len(bare.split(_PROBE)[0]) > len(with_empty.split(_PROBE)[0])


def student_messages(messages: Sequence[Message], tokenizer: ChatTokenizer) -> list[Message]:
    """The messages to render for a student: the task's system prompt, never the model's default.

    When there is no system turn and the template would inject a default one, an empty system
    turn is added. Training and inference both call this, so prompts match exactly.
    """
    out = [dict(m) for m in messages]
    if any(m.get("role") == "system" for m in out):
        return out
    if template_injects_default_system(tokenizer):
        out.insert(0, {"role": "system", "content": ""})
    return out


def render_prompt_completion(
    example: TrainExample, tokenizer: ChatTokenizer, *, inject_empty_system: bool | None = None
) -> tuple[str, str]:
    """(prompt text ending with the generation prompt, completion text ending the turn)."""
    messages = list(example.messages)
    if inject_empty_system is None:
        messages = student_messages(messages, tokenizer)
    elif inject_empty_system and not any(m.get("role") == "system" for m in messages):
        messages = [{"role": "system", "content": ""}, *messages]
    prompt = str(
        tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    )
    full = str(
        tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": example.completion}], tokenize=False
        )
    )
    if full.startswith(prompt) and example.completion in full[len(prompt) :]:
        # Whatever the template puts after the answer (e.g. "<|im_end|>\n") is learned too:
        # that is how the student learns to stop.
        completion = full[len(prompt) :]
    else:
        completion = example.completion + (tokenizer.eos_token or "")
    return prompt, completion


@dataclass(frozen=True)
class SoftTargets:
    """The teacher's next-token distributions along the answer's tokens, where it spread its
    mass over more than one token: ``positions`` index ``input_ids`` (the target token's
    index), each with the candidate token ids and their probabilities (summing to 1)."""

    positions: list[int]
    token_ids: list[list[int]]
    probs: list[list[float]]


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # -100 on the prompt: the loss is on the completion only
    truncated: bool
    soft: SoftTargets | None = None


def tokenize_example(
    example: TrainExample,
    tokenizer: ChatTokenizer,
    *,
    max_length: int,
    inject_empty_system: bool | None = None,
    soft_temperature: float | None = None,
    label_ids_cache: dict[str, list[int]] | None = None,
) -> TokenizedExample:
    """Token ids and labels; prompt and completion are tokenized separately and joined, so the
    prompt's ids are exactly the ones inference sends (no merge across the boundary).

    Too long: the middle of the prompt is cut (the start holds the system prompt and the
    instruction, the end holds the output instructions and the assistant header), then the end
    of the completion.
    """
    prompt, completion = render_prompt_completion(
        example, tokenizer, inject_empty_system=inject_empty_system
    )
    prompt_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    completion_ids = list(tokenizer(completion, add_special_tokens=False)["input_ids"])
    truncated = False
    if len(prompt_ids) + len(completion_ids) > max_length:
        truncated = True
        completion_ids = completion_ids[: max(1, max_length // 2)]
        room = max_length - len(completion_ids)
        if len(prompt_ids) > room:
            tail = min(len(prompt_ids), max(8, room // 4))
            head = max(0, room - tail)
            prompt_ids = prompt_ids[:head] + prompt_ids[len(prompt_ids) - tail :]
    input_ids = prompt_ids + completion_ids
    labels = [-100] * len(prompt_ids) + completion_ids
    soft = None
    if soft_temperature is not None and example.soft_label:
        from worker.training_signals import soft_targets

        soft = soft_targets(
            example,
            completion,
            completion_ids,
            len(prompt_ids),
            tokenizer,
            temperature=soft_temperature,
            cache=label_ids_cache if label_ids_cache is not None else {},
        )
    return TokenizedExample(input_ids=input_ids, labels=labels, truncated=truncated, soft=soft)
