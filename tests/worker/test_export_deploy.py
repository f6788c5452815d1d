"""The Ollama Modelfile and deploy commands, rendered from a student's real chat template.

The translated TEMPLATE is checked by rendering it: a small reader of exactly the Go-template
shape ``ollama_template`` writes (one ``if/else if`` line per role inside ``range .Messages``)
fills it with a conversation, and the text must equal what the Hugging Face chat template makes
of the same conversation with the generation prompt."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from worker.export import deploy

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


def render_go(template: str, messages: list[dict[str, str]]) -> str:
    """Fill the TEMPLATE the way Ollama would for this shape (literal text, role branches)."""
    head, body = template.split("{{ range .Messages }}", 1)
    branches = {
        role: (before, after)
        for role, before, after in re.findall(
            r'{{ (?:if|else if) eq \.Role "(\w+)" }}(.*?){{ \.Content }}(.*?)(?={{ else if|{{ end }})',
            body,
            re.S,
        )
    }
    tail = body.split("{{ end }}{{ end }}", 1)[1]
    out = head
    for m in messages:
        before, after = branches[m["role"]]
        out += before + m["content"] + after
    return out + tail


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir), local_files_only=True)


CONVERSATION = [
    {"role": "system", "content": "Classify the customer message into one intent."},
    {"role": "user", "content": "Message: my card has not arrived yet"},
    {"role": "assistant", "content": "card_arrival"},
    {"role": "user", "content": "Message: I lost my card"},
]


@pytest.mark.parametrize("template", ["student", "llama3"])
def test_the_ollama_template_renders_what_the_chat_template_renders(tokenizer, template):  # type: ignore[no-untyped-def]
    if template == "llama3":
        tokenizer = __import__("copy").deepcopy(tokenizer)
        tokenizer.chat_template = LLAMA3_TEMPLATE
        tokenizer.bos_token = "<|begin_of_text|>"
    frames = deploy.role_frames(tokenizer)
    expected = tokenizer.apply_chat_template(
        CONVERSATION, tokenize=False, add_generation_prompt=True
    )
    # A BOS the template writes itself is left to the runtime (llama.cpp / Ollama add it).
    assert expected.startswith(frames.bos)
    assert render_go(deploy.ollama_template(frames), CONVERSATION) == expected[len(frames.bos) :]
    assert frames.bos == ("<|begin_of_text|>" if template == "llama3" else "")
    if template == "student":
        assert frames.before["user"] == "<|im_start|>user\n"
        assert frames.after["assistant"] == "<|im_end|>\n"
        assert frames.generation_prompt == "<|im_start|>assistant\n"


def test_a_template_that_frames_turns_by_position_is_refused(tokenizer):  # type: ignore[no-untyped-def]
    import copy

    odd = copy.deepcopy(tokenizer)
    odd.chat_template = (
        "{% for m in messages %}{% if loop.last %}[LAST]{% endif %}{{ m['role'] }}: "
        "{{ m['content'] }}\n{% endfor %}"
    )
    with pytest.raises(deploy.TemplateTranslationError) as caught:
        deploy.role_frames(odd)
    assert caught.value.field == "chat_template"


def test_the_modelfile_and_commands(tokenizer):  # type: ignore[no-untyped-def]
    frames = deploy.role_frames(tokenizer)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    info = deploy.DeployInfo(
        slug="ticket-intents-v1-lora-3",
        gguf_file="gguf/ticket-intents-v1-lora-3-Q4_K_M.gguf",
        system_prompt="Classify the customer message into one intent.",
        stop=deploy.stop_tokens(tokenizer, frames, [eos]),
        example_messages=CONVERSATION[:2],
        max_tokens=8,
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        lora_rank=32,
    )
    text = deploy.modelfile(info, frames)
    assert text.splitlines()[1] == "FROM ./gguf/ticket-intents-v1-lora-3-Q4_K_M.gguf"
    assert 'SYSTEM """Classify the customer message into one intent."""' in text
    assert 'PARAMETER stop "<|im_end|>"' in text
    assert "PARAMETER temperature 0" in text
    cmds = deploy.commands(info)
    assert cmds["ollama"].splitlines() == [
        "ollama create ticket-intents-v1-lora-3 -f Modelfile",
        "ollama run ticket-intents-v1-lora-3 'Message: my card has not arrived yet'",
    ]
    assert cmds["vllm_merged"].startswith(
        "vllm serve ./merged --served-model-name ticket-intents-v1-lora-3 "
    )
    assert cmds["vllm_lora"].startswith(
        "vllm serve HuggingFaceTB/SmolLM2-135M-Instruct --enable-lora "
        "--lora-modules ticket-intents-v1-lora-3=./adapter --max-lora-rank 32 "
    )
    # The curl is a real shell command whose body is the OpenAI request.
    words = shlex.split(cmds["curl"].replace("\\\n", " "))
    assert words[:2] == ["curl", "http://localhost:8000/v1/chat/completions"]
    body = json.loads(words[words.index("-d") + 1])
    assert body == {
        "model": "ticket-intents-v1-lora-3",
        "messages": CONVERSATION[:2],
        "temperature": 0,
        "max_tokens": 8,
    }
