"""The Anthropic messages wire format: answers (text or forced tool use) and error bodies."""

from __future__ import annotations

import json
from typing import Any

from tests.fakes.provider_types import (
    FakeRequest,
    content_text,
    default_input_tokens,
    default_output_tokens,
)
from tests.fakes.server_core import FakeServerCore


def anthropic_error(status: int, message: str) -> dict[str, Any]:
    kinds = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        429: "rate_limit_error",
        529: "overloaded_error",
    }
    kind = kinds.get(status, "api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


class AnthropicWire(FakeServerCore):
    """``POST /v1/messages``, direct or as one request of a message batch."""

    def anthropic_message(self, body: dict[str, Any], *, batch: bool) -> tuple[int, dict[str, Any]]:
        messages = list(body.get("messages") or [])
        system = body.get("system")
        if system:
            messages = [{"role": "system", "content": content_text(system)}, *messages]
        model = str(body.get("model", ""))
        answer = self._answer(FakeRequest("anthropic", model, messages, body, batch))
        if answer.error_status:
            return answer.error_status, anthropic_error(answer.error_status, answer.error_message)
        text = answer.text
        limit = int(body.get("max_tokens") or 0)
        out_tokens = answer.output_tokens or default_output_tokens(text)
        stop = {"length": "max_tokens", "content_filter": "refusal"}.get(
            answer.finish_reason or "", "end_turn"
        )
        if limit and out_tokens > limit:
            out_tokens = limit
            text = text[: limit * 4]
            stop = "max_tokens"
        in_tokens = answer.input_tokens or default_input_tokens(messages)
        content: list[dict[str, Any]] = [{"type": "text", "text": text}]
        choice = body.get("tool_choice") or {}
        tools = body.get("tools") or []
        if tools and choice.get("type") == "tool":
            try:
                value = json.loads(text)
            except ValueError:
                value = None
            if isinstance(value, dict):
                content = [
                    {
                        "type": "tool_use",
                        "id": self._ids("toolu_"),
                        "name": choice.get("name") or tools[0].get("name"),
                        "input": value,
                    }
                ]
                if stop == "end_turn":
                    stop = "tool_use"
        return 200, {
            "id": self._ids("msg_"),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {"input_tokens": in_tokens, "output_tokens": out_tokens},
        }
