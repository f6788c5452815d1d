"""What a user copies to deploy a student: the Ollama Modelfile and the exact commands.

The Modelfile's TEMPLATE is the student's own chat template, translated: the Jinja template is
rendered with marker contents for a system, a user and an assistant turn, and what it puts
around each marker becomes the text around ``{{ .Content }}`` for that role in Ollama's Go
template. That holds for templates that wrap each turn the same way whatever its position
(ChatML, Llama 3, Gemma...); a template whose output for a turn depends on its neighbours is
refused with a message rather than translated wrongly.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from typing import Any

_MARK = {"system": "\x01SYSTEM\x01", "user": "\x01USER\x01", "assistant": "\x01ASSISTANT\x01"}


class TemplateTranslationError(ValueError):
    field = "chat_template"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class RoleFrames:
    """The text a chat template writes before and after each role's content."""

    before: dict[str, str]
    after: dict[str, str]
    generation_prompt: str
    bos: str = ""


def _render(tokenizer: Any, messages: list[dict[str, str]], *, generation: bool) -> str:
    return str(
        tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
    )


def role_frames(tokenizer: Any) -> RoleFrames:
    """Split the rendered template at the markers: prefix/suffix per role."""
    turns = [{"role": r, "content": _MARK[r]} for r in ("system", "user", "assistant")]
    full = _render(tokenizer, turns, generation=False)
    positions = [full.find(_MARK[r]) for r in ("system", "user", "assistant")]
    if any(p < 0 for p in positions) or positions != sorted(positions):
        raise TemplateTranslationError(
            "the chat template does not write system, user and assistant turns in order; "
            "write the Modelfile's TEMPLATE by hand"
        )
    cuts: list[str] = []
    rest = full
    for role in ("system", "user", "assistant"):
        head, rest = rest.split(_MARK[role], 1)
        cuts.append(head)
    tail = rest
    # cuts[0] = bos + system prefix; cuts[1] = system suffix + user prefix; ...
    two = _render(tokenizer, turns[:2], generation=False)
    user_after = two.split(_MARK["user"], 1)[1]
    one = _render(tokenizer, turns[:1], generation=False)
    system_after = one.split(_MARK["system"], 1)[1]
    with_prompt = _render(tokenizer, turns[:2], generation=True)
    generation_prompt = with_prompt[len(two) :] if with_prompt.startswith(two) else ""
    bos = str(getattr(tokenizer, "bos_token", "") or "")
    system_before = cuts[0]
    # A BOS the template itself writes ({{ bos_token }}, as Llama 3's): llama.cpp and Ollama add
    # it from the GGUF, so the TEMPLATE leaves it out. (SmolLM2's bos_token is <|im_start|>,
    # which its template writes as a turn marker, not as a BOS: that stays.)
    template_text = str(getattr(tokenizer, "chat_template", "") or "")
    lead = bos if bos and system_before.startswith(bos) and "bos_token" in template_text else ""
    frames = RoleFrames(
        before={
            "system": system_before[len(lead) :],
            "user": cuts[1][len(system_after) :] if cuts[1].startswith(system_after) else "",
            "assistant": cuts[2][len(user_after) :] if cuts[2].startswith(user_after) else "",
        },
        after={"system": system_after, "user": user_after, "assistant": tail},
        generation_prompt=generation_prompt,
        bos=lead,
    )
    _verify(tokenizer, frames)
    return frames


_CHECK_CONVERSATIONS = (
    [("system", "You sort tickets."), ("user", "Where is my card?")],
    [
        ("system", "S"),
        ("user", "first question"),
        ("assistant", "first answer"),
        ("user", "second question"),
    ],
)


def render_with_frames(frames: RoleFrames, messages: list[dict[str, str]]) -> str:
    """What the translated TEMPLATE produces for ``messages`` (Ollama adds the generation
    prompt after the last message)."""
    body = "".join(
        frames.before[m["role"]] + m["content"] + frames.after[m["role"]] for m in messages
    )
    return frames.bos + body + frames.generation_prompt


def _verify(tokenizer: Any, frames: RoleFrames) -> None:
    """The frames must reproduce the chat template exactly on a few conversations (each opens
    with a system turn, as the student's prompts do), else the translation is refused."""
    for turns in _CHECK_CONVERSATIONS:
        messages = [{"role": r, "content": c} for r, c in turns]
        if render_with_frames(frames, messages) != _render(tokenizer, messages, generation=True):
            raise TemplateTranslationError(
                "the chat template frames a turn differently depending on its position; "
                "write the Modelfile's TEMPLATE by hand"
            )


def _go_text(text: str) -> str:
    """Literal text inside a Go template (only ``{{`` would be read as an action)."""
    return text.replace("{{", '{{ "{{" }}')


def ollama_template(frames: RoleFrames) -> str:
    """One line, no ``{{-`` trimming: the role frames' own newlines are part of the prompt."""
    parts = ["{{ range .Messages }}"]  # no frames.bos: the runtime adds the BOS token
    for i, role in enumerate(("system", "user", "assistant")):
        keyword = "if" if i == 0 else "else if"
        parts.append(
            f'{{{{ {keyword} eq .Role "{role}" }}}}{_go_text(frames.before[role])}'
            f"{{{{ .Content }}}}{_go_text(frames.after[role])}"
        )
    parts.append("{{ end }}{{ end }}")
    parts.append(_go_text(frames.generation_prompt))
    return "".join(parts)


def _triple_quoted(text: str) -> str:
    if '"""' in text:
        raise TemplateTranslationError('the text contains """, which a Modelfile cannot quote')
    return f'"""{text}"""'


@dataclass
class DeployInfo:
    slug: str
    gguf_file: str  # the bundle-relative GGUF the Modelfile loads
    system_prompt: str
    stop: list[str]
    example_messages: list[dict[str, str]]
    max_tokens: int
    merged_dir: str = "merged"
    adapter_dir: str = "adapter"
    base_model: str = ""  # what vLLM loads as the base of the LoRA form
    lora_rank: int = 16
    max_model_len: int = 2048
    notes: list[str] = field(default_factory=list)


def stop_tokens(tokenizer: Any, frames: RoleFrames, eos_ids: list[int]) -> list[str]:
    """End-of-turn text: the eos token(s) and the special token closing an assistant turn."""
    out: list[str] = []
    for token_id in eos_ids:
        text = tokenizer.convert_ids_to_tokens(int(token_id))
        if isinstance(text, str) and text and text not in out:
            out.append(text)
    closing = frames.after["assistant"].strip()
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    if closing and closing in specials and closing not in out:
        out.append(closing)
    return out


def modelfile(info: DeployInfo, frames: RoleFrames) -> str:
    lines = [
        f"# Ollama Modelfile for {info.slug}, written by Distillery's export bundle.",
        f"FROM ./{info.gguf_file}",
        "",
        f"TEMPLATE {_triple_quoted(ollama_template(frames))}",
        "",
    ]
    if info.system_prompt:
        lines += [f"SYSTEM {_triple_quoted(info.system_prompt)}", ""]
    for stop in info.stop:
        lines.append(f"PARAMETER stop {json.dumps(stop)}")
    lines += [
        "PARAMETER temperature 0",
        f"PARAMETER num_predict {info.max_tokens}",
        f"PARAMETER num_ctx {info.max_model_len}",
        "",
    ]
    return "\n".join(lines)


def _last_user(info: DeployInfo) -> str:
    users = [m["content"] for m in info.example_messages if m.get("role") == "user"]
    return users[-1] if users else "Hello"


def commands(info: DeployInfo) -> dict[str, str]:
    """Shell blocks, run from the unpacked bundle's folder."""
    body = {
        "model": info.slug,
        "messages": info.example_messages,
        "temperature": 0,
        "max_tokens": info.max_tokens,
    }
    payload = json.dumps(body, ensure_ascii=False)
    curl = (
        "curl http://localhost:8000/v1/chat/completions \\\n"
        "  -H 'Content-Type: application/json' \\\n"
        f"  -d {shlex.quote(payload)}"
    )
    ollama_curl = curl.replace("localhost:8000", "localhost:11434")
    rank = f" --max-lora-rank {info.lora_rank}" if info.lora_rank > 16 else ""
    return {
        "ollama": (
            f"ollama create {info.slug} -f Modelfile\n"
            f"ollama run {info.slug} {shlex.quote(_last_user(info))}"
        ),
        "ollama_curl": ollama_curl,
        "vllm_merged": (
            f"vllm serve ./{info.merged_dir} --served-model-name {info.slug} "
            f"--max-model-len {info.max_model_len}"
        ),
        "vllm_lora": (
            f"vllm serve {shlex.quote(info.base_model)} --enable-lora "
            f"--lora-modules {info.slug}=./{info.adapter_dir}{rank} "
            f"--max-model-len {info.max_model_len}"
        ),
        "curl": curl,
    }


def deploy_markdown(info: DeployInfo, cmds: dict[str, str]) -> str:
    """DEPLOY.md in the bundle: the same blocks as the page."""
    notes = "".join(f"- {n}\n" for n in info.notes)
    return (
        f"# Deploy {info.slug}\n\n"
        "Run these from the folder the bundle's files were downloaded to.\n\n"
        f"## Ollama ({info.gguf_file})\n\n```sh\n{cmds['ollama']}\n```\n\n"
        f"OpenAI-compatible, through Ollama:\n\n```sh\n{cmds['ollama_curl']}\n```\n\n"
        f"## vLLM, merged model\n\n```sh\n{cmds['vllm_merged']}\n```\n\n"
        f"## vLLM, base model + LoRA adapter\n\n```sh\n{cmds['vllm_lora']}\n```\n\n"
        f"Either vLLM form answers:\n\n```sh\n{cmds['curl']}\n```\n\n"
        + (f"## Notes\n\n{notes}" if notes else "")
    )
