"""The OpenAI chat-completions wire format: answers (with logprobs) and error bodies."""

from __future__ import annotations

import math
import time
from typing import Any

from tests.fakes.provider_types import (
    FakeRequest,
    default_input_tokens,
    default_output_tokens,
    fake_tokens,
)
from tests.fakes.server_core import FakeServerCore


def openai_error(status: int, message: str) -> dict[str, Any]:
    kinds = {
        401: ("invalid_request_error", "invalid_api_key"),
        404: ("invalid_request_error", "not_found"),
        429: ("requests", "rate_limit_exceeded"),
    }
    kind, code = kinds.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class OpenAIWire(FakeServerCore):
    """``POST /v1/chat/completions``, direct or as one line of a batch."""

    def openai_completion(self, body: dict[str, Any], *, batch: bool) -> tuple[int, dict[str, Any]]:
        messages = list(body.get("messages") or [])
        model = str(body.get("model", ""))
        answer = self._answer(FakeRequest("openai", model, messages, body, batch))
        if answer.error_status:
            return answer.error_status, openai_error(answer.error_status, answer.error_message)
        text = answer.text
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        out_tokens = answer.output_tokens or default_output_tokens(text)
        finish = answer.finish_reason or "stop"
        if limit is not None and out_tokens > int(limit):
            out_tokens = int(limit)
            text = text[: int(limit) * 4]
            finish = "length"
        in_tokens = answer.input_tokens or default_input_tokens(messages)
        logprobs = None
        if body.get("logprobs"):
            top_n = int(body.get("top_logprobs") or 0)
            content = []
            for i, token in enumerate(fake_tokens(text)):
                alts = {token: 1.0}
                if answer.token_alternatives and i < len(answer.token_alternatives):
                    alts = dict(answer.token_alternatives[i])
                    alts.setdefault(token, 1e-9)
                ranked = sorted(alts.items(), key=lambda kv: -kv[1])
                content.append(
                    {
                        "token": token,
                        "logprob": math.log(alts[token]),
                        "bytes": list(token.encode()),
                        "top_logprobs": [
                            {"token": t, "logprob": math.log(p), "bytes": list(t.encode())}
                            for t, p in ranked[:top_n]
                        ],
                    }
                )
            logprobs = {"content": content, "refusal": None}
        extra = dict(answer.extra_body or {})
        return 200, {
            **extra,
            "id": self._ids("chatcmpl-"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_fake",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": logprobs,
                    "finish_reason": finish,
                }
            ],
            "usage": {
                "prompt_tokens": in_tokens,
                "completion_tokens": out_tokens,
                "total_tokens": in_tokens + out_tokens,
            },
        }
