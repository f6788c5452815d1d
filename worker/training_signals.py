"""What a student can learn beyond the teacher's final answer: its rationale and its confidence.

Rationales ("Distilling Step-by-Step", Hsieh et al. 2023). ``rationale_examples`` adds, for
every training example that carries the teacher's reason, a second example: the same prompt
with ``RATIONALE_PREFIX`` in front of the user turn, and the reason as the completion. The
answer example is unchanged, so the prompt a served or evaluated student sees - and the tokens
it answers with - are exactly those of a model trained without rationales: latency cannot grow.
(The alternative, answer then reason in one target, would make the student write the reason at
serving time unless every decoder stopped at the end of the answer; the two-task form needs no
change anywhere after training.)

Soft labels (Hinton et al. 2015, on a label set). The teacher's distribution over the labels is
factorised along the label tokens: after the answer's first ``j`` tokens, the labels still
consistent with them share the next-token distribution by their probabilities. Where that
distribution has more than one token (where the teacher hesitated between labels that part
there), the loss at that token is ``(1 - w) * CE + w * T^2 * KL(teacher_T || student_T)``
(``T`` the temperature, applied to both: the teacher's label probabilities as ``p^(1/T)``,
renormalised; the student's logits divided by ``T``). Elsewhere it is the plain cross-entropy
on the approved label. Rows without a distribution (reviewer edits, human references, teachers
without logprobs) are plain cross-entropy: their answer is taught one-hot.

torch is imported inside the functions that need it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worker.training_data import ChatTokenizer, SoftTargets, TrainExample

RATIONALE_PREFIX = "[rationale] "
SOFT_KEYS = ("soft_positions", "soft_token_ids", "soft_probs")

# Off by default, as measured by bench/distill_signals.py (tiny from-scratch students, 20
# BANKING77 labels, a local teacher at 76 % that put ~3 % of its mass off its answer): weight
# 0.5 at temperature 2 cost 7.0 points of accuracy (95 % interval 4.0 to 10.0) against answers
# only. The temperature a user starts from when turning the option on is 1 (the teacher's own
# distribution, not flattened).
DEFAULT_SOFT_LABEL_WEIGHT = 0.0
DEFAULT_SOFT_LABEL_TEMPERATURE = 1.0


RATIONALE_MODES = ("off", "second_task")


def check_signal_settings(rationale_training: str, weight: float, temperature: float) -> None:
    """Raise TrainingConfigError naming the field for a setting out of range."""
    from worker.training_spec import TrainingConfigError

    if rationale_training not in RATIONALE_MODES:
        raise TrainingConfigError(
            f"must be one of {', '.join(RATIONALE_MODES)}", field="rationale_training"
        )
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0 <= weight <= 1:
        raise TrainingConfigError("must be between 0 and 1", field="soft_label_weight")
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not 0 < temperature <= 100
    ):
        raise TrainingConfigError(
            "must be above 0 (and at most 100)", field="soft_label_temperature"
        )


def rationale_examples(examples: Sequence[TrainExample]) -> list[TrainExample]:
    """The second task: for each example with a rationale, the prefixed prompt -> the rationale."""
    extra = []
    for example in examples:
        if not example.rationale.strip():
            continue
        messages = [dict(m) for m in example.messages]
        for message in reversed(messages):
            if message.get("role") == "user":
                message["content"] = RATIONALE_PREFIX + message.get("content", "")
                break
        extra.append(
            replace(
                example,
                messages=messages,
                completion=example.rationale.strip(),
                rationale="",
                soft_label=None,
            )
        )
    return extra


def soft_label_unavailable_reason(
    *, output_kind: str, n_train: int, n_with_distribution: int, local_teacher: bool = False
) -> str:
    """Why soft-label training cannot be offered for a version ("" when it can)."""
    if output_kind != "label":
        return "soft labels apply to label tasks only"
    if n_with_distribution == 0:
        return (
            "no training row carries the teacher's distribution over the labels: it comes from "
            "teachers that return logprobs (OpenAI, OpenAI-compatible endpoints"
            + (", local models" if not local_teacher else "")
            + " on label tasks); edited rows and human references are taught one-hot"
        )
    return ""


def tempered(distribution: dict[str, float], temperature: float) -> dict[str, float]:
    powered = {k: v ** (1.0 / temperature) for k, v in distribution.items() if v > 0}
    total = sum(powered.values())
    return {k: v / total for k, v in powered.items()} if total > 0 else {}


def soft_targets(
    example: TrainExample,
    completion_text: str,
    completion_ids: list[int],
    prompt_length: int,
    tokenizer: ChatTokenizer,
    *,
    temperature: float,
    cache: dict[str, list[int]],
) -> SoftTargets | None:
    """The positions along the answer where the (tempered) teacher spreads its mass over more
    than one next token, or None when there are none (or the answer is not in the
    distribution: it is then taught one-hot)."""
    from worker.training_data import SoftTargets

    distribution = tempered(dict(example.soft_label or {}), temperature)
    if example.completion not in distribution or not completion_text.startswith(example.completion):
        return None
    # What the chat template puts after the answer (e.g. "<|im_end|>\n"); each label is
    # tokenized as the answer is, so their ids share the answer's prefix tokens.
    suffix = completion_text[len(example.completion) :]
    label_ids = {}
    for label in distribution:
        key = label + suffix
        if key not in cache:
            cache[key] = list(tokenizer(key, add_special_tokens=False)["input_ids"])
        label_ids[label] = cache[key]
    if label_ids[example.completion][: len(completion_ids)] != completion_ids:
        return None  # truncated or tokenized differently in context: teach one-hot
    positions: list[int] = []
    token_ids: list[list[int]] = []
    probs: list[list[float]] = []
    alive = list(distribution)
    for j, gold in enumerate(completion_ids):
        mass: dict[int, float] = {}
        for label in alive:
            ids = label_ids[label]
            if len(ids) > j:
                mass[ids[j]] = mass.get(ids[j], 0.0) + distribution[label]
        if len(mass) > 1 and gold in mass:
            total = sum(mass.values())
            positions.append(prompt_length + j)
            token_ids.append(list(mass))
            probs.append([p / total for p in mass.values()])
        alive = [
            label for label in alive if len(label_ids[label]) > j and label_ids[label][j] == gold
        ]
        if len(alive) <= 1:
            break
    if not positions:
        return None
    return SoftTargets(positions, token_ids, probs)


class SoftLabelCollator:
    """Wraps the trainer's collator: the soft-target columns are taken out of each example,
    the rest is collated as before, and the targets come back flattened over the batch
    (``soft_rows``/``soft_positions`` index the batch, ``soft_token_ids``/``soft_probs`` are
    padded to the widest position with probability 0)."""

    def __init__(self, base: Any) -> None:
        self.base = base

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        rows, positions, ids, probs = [], [], [], []
        stripped = []
        for row, example in enumerate(examples):
            example = dict(example)
            soft = [example.pop(key, None) or [] for key in SOFT_KEYS]
            stripped.append(example)
            for position, token_ids, p in zip(*soft, strict=True):
                rows.append(row)
                positions.append(int(position))
                ids.append(list(token_ids))
                probs.append(list(p))
        batch: dict[str, Any] = self.base(stripped)
        if rows:
            width = max(len(i) for i in ids)
            batch["soft_rows"] = torch.tensor(rows)
            batch["soft_positions"] = torch.tensor(positions)
            batch["soft_token_ids"] = torch.tensor([i + [0] * (width - len(i)) for i in ids])
            batch["soft_probs"] = torch.tensor(
                [p + [0.0] * (width - len(p)) for p in probs], dtype=torch.float32
            )
        return batch


def soft_label_loss_sum(
    hidden: Any, head: Any, batch: dict[str, Any], *, weight: float, temperature: float
) -> Any:
    """The soft-label correction to the summed completion cross-entropy:
    ``w * (T^2 * KL - CE)`` summed over the soft positions (0 when the batch has none), so that
    ``nll_sum + correction`` is the module's mixed loss."""
    import torch
    import torch.nn.functional as F

    if weight <= 0 or "soft_rows" not in batch:
        return hidden.new_zeros((), dtype=torch.float32)
    rows, positions = batch["soft_rows"], batch["soft_positions"]
    # The hidden state before a token predicts it.
    picked = hidden[rows, positions - 1]
    logits = head(picked.to(head.weight.dtype) if picked.dtype != head.weight.dtype else picked)
    logits = logits.float()
    gold = batch["input_ids"][rows, positions]
    ce = F.cross_entropy(logits, gold, reduction="sum")
    log_q = torch.log_softmax(logits / temperature, dim=-1)
    p = batch["soft_probs"]
    log_q_picked = log_q.gather(1, batch["soft_token_ids"])
    kl = torch.where(p > 0, p * (torch.log(p.clamp(min=1e-12)) - log_q_picked), 0.0).sum()
    return weight * (temperature**2 * kl - ce)
