"""Built-in responders of the fake provider, usable by name from the command line."""

from __future__ import annotations

import importlib
import json
import random
import re

from tests.fakes.provider_types import FakeRequest, Responder

_LABELS_LINE = re.compile(r"labels and nothing else:\s*(.+)$", re.MULTILINE)


def echo_responder(request: FakeRequest) -> str:
    return request.last_user_text


def first_label_responder(request: FakeRequest) -> str:
    """For label tasks rendered by worker.taskspec: answer the first label of the set."""
    match = _LABELS_LINE.search(request.last_user_text)
    if not match:
        return "ok"
    return match.group(1).split(",")[0].strip()


_WRITE_N = re.compile(r"^Write (\d+) new inputs in the same style", re.MULTILINE)
_FIELDS_LINE = re.compile(r"inputs with these fields: (.+)\.$", re.MULTILINE)
_BATCH = re.compile(r"\(batch (\d+):")
_TOPIC = re.compile(r"^Topic: (.+)\.$", re.MULTILINE)
_LABEL = re.compile(r"^Write inputs whose correct answer is the label '(.+)'\.$", re.MULTILINE)
# Words the fake writes new inputs from: two samples of 8 rarely share more than one or two.
_WORDS = [
    "account",
    "balance",
    "card",
    "transfer",
    "refund",
    "payment",
    "pending",
    "declined",
    "fee",
    "charge",
    "exchange",
    "rate",
    "cash",
    "withdrawal",
    "atm",
    "pin",
    "blocked",
    "stolen",
    "lost",
    "arrival",
    "delivery",
    "address",
    "verify",
    "identity",
    "passport",
    "selfie",
    "top",
    "up",
    "bank",
    "app",
    "login",
    "password",
    "reset",
    "limit",
    "overdraft",
    "salary",
    "deposit",
    "cheque",
    "savings",
    "interest",
    "statement",
    "invoice",
    "merchant",
    "subscription",
    "cancel",
    "dispute",
    "fraud",
    "alert",
    "travel",
    "abroad",
    "currency",
    "euro",
    "dollar",
    "pound",
    "virtual",
    "disposable",
    "contactless",
    "apple",
    "google",
    "wallet",
    "beneficiary",
    "iban",
    "swift",
    "sort",
    "code",
    "branch",
    "closed",
    "open",
    "weekend",
    "holiday",
]


def synthetic_inputs_responder(request: FakeRequest) -> str:
    """For worker.synthetic_inputs' prompt: ``{"inputs": [...]}`` with the number asked for.
    The first item copies the first seed shown (an exact duplicate), the second is that seed
    plus one word (a near duplicate); the rest are new (seeded by the batch number, topic and
    label, so every call of a job writes different ones). Other prompts: the first label."""
    text = request.last_user_text
    asked = _WRITE_N.search(text)
    fields_line = _FIELDS_LINE.search(text)
    if not asked or not fields_line:
        return first_label_responder(request)
    count = int(asked.group(1))
    fields = [f.strip() for f in fields_line.group(1).split(",")]
    seed_lines = text.split("one JSON object per line:\n", 1)[-1].split("\n\n", 1)[0]
    first_seed = json.loads(seed_lines.splitlines()[0])
    batch = _BATCH.search(text)
    topic = _TOPIC.search(text)
    label = _LABEL.search(text)
    nonce = f"{batch.group(1) if batch else 0}|{topic.group(1) if topic else ''}"
    nonce += f"|{label.group(1) if label else ''}"
    items: list[dict[str, str]] = []
    for k in range(count):
        if k == 0:
            items.append(dict(first_seed))
        elif k == 1:
            items.append({f: f"{first_seed.get(f, '')} please" for f in fields})
        else:
            rng = random.Random(f"{nonce}|{k}")
            prefix = f"{topic.group(1)}: " if topic else ""
            items.append({f: prefix + " ".join(rng.sample(_WORDS, 8)) + "?" for f in fields})
    return json.dumps({"inputs": items})


def responder_by_name(name: str) -> Responder:
    """``echo``, ``first_label``, ``synthetic_inputs``, ``constant:TEXT`` or
    ``package.module:function``."""
    if name == "synthetic_inputs":
        return synthetic_inputs_responder
    if name == "echo":
        return echo_responder
    if name == "first_label":
        return first_label_responder
    if name.startswith("constant:"):
        text = name.split(":", 1)[1]
        return lambda _request: text
    module_name, _, attr = name.partition(":")
    if not attr:
        raise ValueError(f"unknown responder {name!r}")
    function: Responder = getattr(importlib.import_module(module_name), attr)
    return function
