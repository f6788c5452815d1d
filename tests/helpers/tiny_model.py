"""A tiny randomly initialised Llama-architecture causal LM with a locally trained tokenizer.

Tests use it instead of anything from a model hub: it builds in about a second on a CPU, loads
offline with ``AutoModelForCausalLM.from_pretrained(dest)`` / ``AutoTokenizer.from_pretrained(dest)``,
and has a ChatML chat template (``<|im_start|>role\\n...<|im_end|>\\n``) like SmolLM2's, so the
training and inference code paths are the ones real students take.

The tokenizer is byte-level BPE: any text (JSON, receipts, non-ASCII) encodes without unknown
tokens, so tests never fail for tokenizer reasons.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path

PAD_TOKEN = "<|pad|>"
BOS_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"  # end of a turn, and the eos token: generation stops here
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, IM_START, IM_END]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# A few hundred short strings in the style of BANKING77 tickets plus prompt/answer words, so the
# BPE merges make common words single tokens and sequences stay short (fast tests).
_SUBJECTS = [
    "my card",
    "the transfer",
    "my top up",
    "the refund",
    "my payment",
    "the exchange rate",
    "my pin",
    "the app",
    "my account",
    "the cash withdrawal",
]
_PROBLEMS = [
    "has not arrived yet",
    "was declined",
    "is pending",
    "failed",
    "is wrong",
    "was charged twice",
    "is not working",
    "was blocked",
]
_QUESTIONS = [
    "How do I order a new card?",
    "Why was I charged a fee?",
    "Can I change my PIN?",
    "Where is my money?",
    "How long does a transfer take?",
    "What currencies do you support?",
    "I lost my card, please freeze it",
    "Is there a limit on top ups?",
    "How can I verify my identity?",
    "The ATM did not give me my cash",
]
_LABELS = [
    "card_arrival",
    "card_not_working",
    "declined_card_payment",
    "pending_transfer",
    "failed_transfer",
    "refund_not_showing_up",
    "exchange_rate",
    "change_pin",
    "lost_or_stolen_card",
    "top_up_limits",
    "verify_my_identity",
    "wrong_amount_of_cash_received",
    "positive",
    "negative",
    "neutral",
]
_PROMPT_WORDS = [
    "Classify the customer message into one intent.",
    "Answer with exactly one of these labels and nothing else:",
    "Answer with a single JSON object that matches this JSON Schema:",
    "You are a helpful assistant.",
    "Summarise the dialogue in one sentence.",
    "Message:",
    "Text:",
    '{"label": "positive", "score": 1}',
    "system user assistant",
]


def default_corpus() -> list[str]:
    """The strings the tokenizer is trained on when a test gives none."""
    texts = [f"{s} {p}" for s, p in itertools.product(_SUBJECTS, _PROBLEMS)]
    texts += [f"Why {s} {p}?" for s, p in itertools.product(_SUBJECTS[:5], _PROBLEMS[:5])]
    texts += _QUESTIONS + _LABELS + _PROMPT_WORDS
    texts += [", ".join(_LABELS)]
    texts += [f"{q} -> {label}" for q, label in zip(_QUESTIONS, _LABELS, strict=False)]
    texts += [str(n) for n in range(0, 200, 7)]
    return texts


def build_tiny_model(
    dest: Path,
    *,
    vocab_texts: Iterable[str] | None = None,
    seed: int = 0,
    vocab_size: int = 640,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    initializer_range: float = 0.2,
) -> Path:
    """Build and save a tiny random Llama + tokenizer in ``dest``; returns ``dest``.

    Same arguments, same weights and tokenizer (the initialisation is seeded). The weights are
    initialised wider than a real model's (0.2, not 0.02): with hidden size 32 the usual scale
    caps every logit near zero, and fine-tuning could barely move the loss in a few steps.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    texts = list(vocab_texts) if vocab_texts is not None else default_corpus()

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=IM_END,
        pad_token=PAD_TOKEN,
        unk_token=None,
        additional_special_tokens=[IM_START],
        model_max_length=512,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(dest)

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads // 2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.convert_tokens_to_ids(BOS_TOKEN),
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.convert_tokens_to_ids(PAD_TOKEN),
        tie_word_embeddings=False,
        initializer_range=initializer_range,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.bos_token_id = config.bos_token_id
    model.save_pretrained(dest)
    return dest


if __name__ == "__main__":  # pragma: no cover - manual use: python -m tests.helpers.tiny_model DIR
    import sys

    print(build_tiny_model(Path(sys.argv[1])))
