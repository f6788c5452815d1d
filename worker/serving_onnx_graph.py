"""The student as an ONNX graph for the ``onnx`` serving engine (worker/serving_onnx.py), built by
hand from a Llama-architecture student's safetensors (``build_graph``: embedding, RMSNorm, rotary
positions (ONNX Runtime's RotaryEmbedding over a table in the graph), grouped-query attention over a
KV cache that is an input and an output of every layer, SwiGLU, the output layer) whose linear
layers are int8: int8 weights (a scale per output column) times activations quantised per row,
per token, at run time (QuantizeLinear per row, then MatMulIntegerToFloat; the layers that share
an input — q/k/v, gate/up — as one product). Per token, not per call: ONNX Runtime's own dynamic
quantisation takes one scale for a whole call, which made answers depend on what they were
batched with (BANKING77: 73.7 % in batches of 8 vs 81.7 % alone); per token, a batch answers as
its prompts do alone, up to the float rounding around the quantisation steps.

Per-token int8 alone moved 14 of 300 BANKING77 answers away from the float32 student's: a few
channels of each layer's input are far larger than the rest and set every token's step. So the
weights are smoothed first (``smooth``, SmoothQuant with alpha 0.5, folded into the weights: no
extra work per token), calibrated on a few generic messages (``activation_ranges``): 3 or 4 answers
of 300 then differ from the float32 graph's (rounding moves near-ties) — llama.cpp Q8_0: 3.

The graph in float32 gives transformers' logits to 4e-5. ``convert_to_serving_onnx`` builds the
serving graph once per student (and anew when ``GRAPH_VERSION`` changes). Heavy libraries (onnx,
numpy, torch) are imported inside functions.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from worker.model_loading import load_causal_lm, load_tokenizer
from worker.serving_backends import built_once, context_limit_of

ONNX_FILE = "student-int8.onnx"
ONNX_MARK = f"{ONNX_FILE}.source.txt"


class UnsupportedModel(Exception):
    """The student is not one the graph builder knows (it builds Llama-architecture models)."""


def onnx_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def supported_config(model_dir: Path) -> dict[str, Any]:
    """The student's config, if the graph builder knows its architecture (else
    ``UnsupportedModel``, before anything is built)."""
    cfg: dict[str, Any] = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    if cfg.get("model_type") != "llama":
        raise UnsupportedModel(
            f"the ONNX engine builds Llama-architecture students, not {cfg.get('model_type')!r}"
        )
    rope = cfg.get("rope_parameters") or {}
    if (cfg.get("rope_scaling") or {}).get("rope_type", "default") != "default" or rope.get(
        "rope_type", "default"
    ) != "default":
        raise UnsupportedModel("the ONNX engine has plain rotary positions only")
    return cfg


def activation_ranges(model_dir: Path, prompts: Sequence[Sequence[int]]) -> dict[str, Any]:
    """The largest |value| each input channel of each linear layer takes on ``prompts`` (the
    student in float32, through transformers), keyed as ``build_graph`` names its products:
    ``lm_head``, ``qkv_<layer>``, ``o_proj_<layer>``, ``gate_up_<layer>``, ``down_proj_<layer>``."""
    import numpy as np
    import torch

    model = load_causal_lm(model_dir, dtype="float32")
    model.eval()
    ranges: dict[str, Any] = {}

    def watch(module: Any, key: str) -> Any:
        def hook(_module: Any, args: tuple[Any, ...]) -> None:
            x = args[0].detach().abs().reshape(-1, args[0].shape[-1]).amax(0).numpy()
            ranges[key] = np.maximum(ranges[key], x) if key in ranges else x

        return module.register_forward_pre_hook(hook)

    hooks = [watch(model.lm_head, "lm_head")]
    for i, layer in enumerate(model.model.layers):
        hooks += [
            watch(layer.self_attn.q_proj, f"qkv_{i}"),
            watch(layer.self_attn.o_proj, f"o_proj_{i}"),
            watch(layer.mlp.gate_proj, f"gate_up_{i}"),
            watch(layer.mlp.down_proj, f"down_proj_{i}"),
        ]
    try:
        with torch.no_grad():
            for prompt in prompts:
                model(torch.tensor([list(prompt)]))
    finally:
        for hook in hooks:
            hook.remove()
    return ranges


def smooth(
    weights: dict[str, Any], cfg: dict[str, Any], ranges: dict[str, Any], alpha: float
) -> dict[str, Any]:
    """SmoothQuant (Xiao et al. 2023) folded into the weights, so the graph runs no extra op:
    each linear layer's input channel j is divided by s_j = range_j^alpha / w_j^(1 - alpha)
    (``range_j``: the largest |activation| calibration saw, ``w_j``: the largest |weight| the
    channel multiplies) and its weights multiplied by it — the same function in float, but the
    few channels with outsized activations no longer set every token's int8 step. The division
    goes into what makes the input: the RMSNorm weight (q/k/v, gate/up), the up projection's
    output (down: SwiGLU is linear in up), the value projection's output (o: attention is linear
    in V; a KV head's channel is shared by its query heads, so they share its factor)."""
    import numpy as np

    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    out = dict(weights)

    def ratio(activation: Any, weight: Any) -> Any:
        """s = activation^alpha / weight^(1 - alpha), kept within [1e-2, 1e2]."""
        return np.clip(
            np.maximum(activation, 1e-5) ** alpha / np.maximum(weight, 1e-5) ** (1 - alpha),
            1e-2,
            1e2,
        )

    def factor(key: str, *layers: Any) -> Any:
        """Per input channel, for the layers (HF layout [out, in]) that read input ``key``."""
        return ratio(ranges[key], np.max([np.abs(w).max(axis=0) for w in layers], axis=0))

    def get(name: str) -> Any:
        return out[name].astype(np.float32)

    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        for key, norm, names in (
            (
                f"qkv_{i}",
                "input_layernorm",
                ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
            ),
            (f"gate_up_{i}", "post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
        ):
            s = factor(key, *(get(p + n + ".weight") for n in names))
            out[p + norm + ".weight"] = get(p + norm + ".weight") / s
            for n in names:
                out[p + n + ".weight"] = get(p + n + ".weight") * s
        s = factor(f"down_proj_{i}", get(p + "mlp.down_proj.weight"))
        out[p + "mlp.up_proj.weight"] = get(p + "mlp.up_proj.weight") / s[:, None]
        out[p + "mlp.down_proj.weight"] = get(p + "mlp.down_proj.weight") * s
        o = get(p + "self_attn.o_proj.weight")  # [hidden, heads * dim]
        rep = heads // kv_heads
        s_kv = ratio(  # [kv_heads, dim]: a query head's channel takes its KV head's factor
            ranges[f"o_proj_{i}"].reshape(kv_heads, rep, dim).max(axis=1),
            np.abs(o).max(axis=0).reshape(kv_heads, rep, dim).max(axis=1),
        )
        out[p + "self_attn.v_proj.weight"] = (
            get(p + "self_attn.v_proj.weight") / s_kv.reshape(-1)[:, None]
        )
        out[p + "self_attn.o_proj.weight"] = o * np.repeat(s_kv[:, None], rep, 1).reshape(-1)
    # The output layer's input is the final RMSNorm's (the output layer gets a copy of a tied
    # embedding: the input embedding keeps its values).
    head = get("lm_head.weight" if "lm_head.weight" in out else "model.embed_tokens.weight")
    s = factor("lm_head", head)
    out["model.norm.weight"] = get("model.norm.weight") / s
    out["lm_head.weight"] = head * s
    return out


def build_graph(
    model_dir: Path,
    out: Path,
    *,
    int8_rows: bool = False,
    ranges: dict[str, Any] | None = None,
    alpha: float = 0.5,
) -> Path:
    """The student as a float32 ONNX graph with a KV cache (weights in ``out``.data).
    ``int8_rows``: every linear layer as int8 weights (a scale per output column) times
    activations quantised per row (per token: symmetric, shifted to uint8 with zero point 128),
    so an answer does not depend on what it is batched with; with ``ranges``
    (``activation_ranges``) the weights are smoothed first (``smooth``, ``alpha``)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper, save
    from safetensors.numpy import load_file

    cfg = supported_config(model_dir)
    weights: dict[str, Any] = {}
    for part in sorted(model_dir.glob("*.safetensors")):
        weights.update(load_file(str(part)))
    if not weights:
        raise UnsupportedModel(f"no safetensors weights in {model_dir}")
    if int8_rows and ranges is not None:
        weights = smooth(weights, cfg, ranges, alpha)
    hidden, heads, kv_heads = (
        cfg["hidden_size"],
        cfg["num_attention_heads"],
        cfg["num_key_value_heads"],
    )
    dim = cfg.get("head_dim") or hidden // heads
    inits: list[Any] = []
    nodes: list[Any] = []
    counter = [0]

    def init(name: str, array: Any) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(op: str, inputs: list[str], **attrs: Any) -> str:
        counter[0] += 1
        name = f"t{counter[0]}"
        nodes.append(helper.make_node(op, inputs, [name], **attrs))
        return name

    def shape(values: list[int]) -> str:
        return init(f"shape{counter[0]}_{len(inits)}", np.array(values, np.int64))

    eps = init("eps", np.float32(cfg["rms_norm_eps"]))
    scale = init("scale", np.float32(1 / math.sqrt(dim)))

    def rms(x: str, weight: Any, name: str) -> str:
        mean = node("ReduceMean", [node("Mul", [x, x])], axes=[-1], keepdims=1)
        normed = node("Div", [x, node("Sqrt", [node("Add", [mean, eps])])])
        return node("Mul", [normed, init(name, weight.astype(np.float32))])

    rope_theta = float(
        cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta") or 10000.0
    )
    positions = np.arange(context_limit_of(model_dir), dtype=np.float64)[:, None]
    angles = positions / rope_theta ** (np.arange(0, dim, 2) / dim)
    cos_cache = init("cos_cache", np.cos(angles).astype(np.float32))
    sin_cache = init("sin_cache", np.sin(angles).astype(np.float32))

    def rope(x: str) -> str:
        """Rotary positions (rotate-half, as Llama), ONNX Runtime's fused op."""
        return node(
            "RotaryEmbedding",
            [x, "position_ids", cos_cache, sin_cache],
            domain="com.microsoft",
            interleaved=0,
        )

    def heads_first(x: str, n: int) -> str:
        return node("Transpose", [node("Reshape", [x, shape([0, 0, n, dim])])], perm=[0, 2, 1, 3])

    constants: dict[str, str] = {}

    def constant(name: str, value: Any) -> str:
        """An initializer made on first use (a float32 graph has none of the int8 ones)."""
        if name not in constants:
            constants[name] = init(name, value)
        return constants[name]

    def matmul(x: str, weight: Any, name: str) -> str:
        weight = weight.astype(np.float32)
        if not int8_rows:
            return node("MatMul", [x, init(name, weight)])
        w_scale = np.maximum(np.abs(weight).max(axis=0), 1e-8) / 127
        w_q = np.clip(np.round(weight / w_scale), -127, 127).astype(np.int8)
        tiny, q_step = constant("tiny", np.float32(1e-8)), constant("q_step", np.float32(127))
        # Each row's (token's) scale, [B, T, 1]: its largest |value| is 127 steps.
        amax = node("ReduceMax", [node("Abs", [x])], axes=[-1], keepdims=1)
        row_scale = node("Div", [node("Max", [amax, tiny]), q_step])
        # One QuantizeLinear per row (per-axis over the rows flattened), shifted to uint8 with
        # zero point 128, back in x's shape.
        flat_scale = node("Reshape", [row_scale, constant("flat", np.array([-1], np.int64))])
        rows_u8 = node(
            "QuantizeLinear",
            [
                node(
                    "Reshape",
                    [
                        x,
                        constant(
                            f"rows_{weight.shape[0]}", np.array([-1, weight.shape[0]], np.int64)
                        ),
                    ],
                ),
                flat_scale,
                node(
                    "Expand",
                    [constant("zero_u8_1", np.array([128], np.uint8)), node("Shape", [flat_scale])],
                ),
            ],
            axis=0,
        )
        x_u8 = node("Reshape", [rows_u8, node("Shape", [x])])
        # (x_u8 - 128) @ w_q * w_scale in one kernel, then each row's scale.
        product = node(
            "MatMulIntegerToFloat",
            [
                x_u8,
                init(name, w_q),
                constant("one", np.array(1.0, np.float32)),
                init(name + "_scale", w_scale.astype(np.float32)),
                constant("zero_u8", np.array(128, np.uint8)),
                constant("zero_i8", np.array(0, np.int8)),
            ],
            domain="com.microsoft",
        )
        return node("Mul", [product, row_scale])

    embedding = weights["model.embed_tokens.weight"].astype(np.float32)
    h = node("Gather", [init("embed", embedding), "input_ids"])
    presents = []
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."

        def linear(x: str, name: str, *keys: str, p: str = p, i: int = i) -> list[str]:
            """``keys``' layers on the same input as one matrix product (one quantisation of
            ``x``, one bigger MatMulInteger), split back into each layer's output."""
            parts = [weights[p + key + ".weight"].T for key in keys]
            out = matmul(x, np.concatenate(parts, axis=1), f"{name}_{i}")
            if len(parts) == 1:
                return [out]
            names = [f"{out}_{n}" for n in range(len(parts))]
            sizes = init(f"split_{name}_{i}", np.array([w.shape[1] for w in parts], np.int64))
            nodes.append(helper.make_node("Split", [out, sizes], names, axis=-1))
            return names

        x = rms(h, weights[p + "input_layernorm.weight"], f"ln1_{i}")
        q, k, v = linear(x, "qkv", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
        q = rope(heads_first(q, heads))
        k = rope(heads_first(k, kv_heads))
        v = heads_first(v, kv_heads)
        nodes.append(helper.make_node("Concat", [f"past_k{i}", k], [f"present_k{i}"], axis=2))
        nodes.append(helper.make_node("Concat", [f"past_v{i}", v], [f"present_v{i}"], axis=2))
        presents += [f"present_k{i}", f"present_v{i}"]
        # Grouped-query attention: each KV head's query heads as rows [B, kv, rep*T, D].
        grouped = node("Reshape", [q, shape([0, kv_heads, -1, dim])])
        keys_t = node("Transpose", [f"present_k{i}"], perm=[0, 1, 3, 2])
        scores = node("Add", [node("Mul", [node("MatMul", [grouped, keys_t]), scale]), "mask"])
        attended = node("MatMul", [node("Softmax", [scores], axis=-1), f"present_v{i}"])
        attended = node("Reshape", [attended, shape([0, heads, -1, dim])])
        merged = node(
            "Reshape",
            [node("Transpose", [attended], perm=[0, 2, 1, 3]), shape([0, 0, heads * dim])],
        )
        h = node("Add", [h, linear(merged, "o_proj", "self_attn.o_proj")[0]])
        x = rms(h, weights[p + "post_attention_layernorm.weight"], f"ln2_{i}")
        gate, up = linear(x, "gate_up", "mlp.gate_proj", "mlp.up_proj")
        swiglu = node("Mul", [node("Mul", [gate, node("Sigmoid", [gate])]), up])
        h = node("Add", [h, linear(swiglu, "down_proj", "mlp.down_proj")[0]])
    h = rms(h, weights["model.norm.weight"], "norm")
    rows = node("Gather", [node("Reshape", [h, shape([-1, hidden])]), "rows"])
    head = weights.get("lm_head.weight", weights["model.embed_tokens.weight"])
    nodes.append(helper.make_node("Identity", [matmul(rows, head.T, "lm_head")], ["logits"]))
    f32 = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["B", "T"]),
        helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["B", "T"]),
        helper.make_tensor_value_info("mask", f32, ["B", 1, "RT", "S"]),
        helper.make_tensor_value_info("rows", TensorProto.INT64, ["R"]),
    ]
    for i in range(cfg["num_hidden_layers"]):
        for kind in ("k", "v"):
            inputs.append(
                helper.make_tensor_value_info(f"past_{kind}{i}", f32, ["B", kv_heads, "P", dim])
            )
    outputs = [helper.make_tensor_value_info("logits", f32, ["R", head.shape[0]])]
    outputs += [helper.make_tensor_value_info(name, f32, None) for name in presents]
    model = helper.make_model(
        helper.make_graph(nodes, "student", inputs, outputs, inits),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
    )
    model.ir_version = 8
    save(model, str(out), save_as_external_data=True, location=out.name + ".data")
    return out


# What the int8 graph's smoothing is calibrated on: unlike messages in the student's chat
# template. The channels with outsized activations are the model's, not the input's, so a task's
# own inputs are not needed (measured on the BANKING77 student: calibrated on these, 5 of 300
# answers differ from the float32 student's; on 16 of the task's prompts, 6; unsmoothed, 14).
CALIBRATION_MESSAGES = (
    "Hello! Can you help me with something?",
    "What is the capital of France?",
    "Summarise this: the meeting moved to Tuesday at 3pm because the room was booked.",
    "Write a haiku about autumn leaves.",
    "My order #4411 arrived damaged, I want a refund.",
    "Translate 'good morning' into Spanish.",
    "def add(a, b):\n    return a + b\n# what does this do?",
    "Total: $23.50 VAT 2.35 Thank you for shopping at ACME",
)
# Bumped whenever the serving graph changes, so students built by an older builder build anew.
GRAPH_VERSION = (
    "4: fused products, QuantizeLinear per row, MatMulIntegerToFloat, SmoothQuant 0.5, "
    "RotaryEmbedding"
)


def calibration_prompts(model_dir: Path) -> list[list[int]]:
    tokenizer = load_tokenizer(model_dir)
    if getattr(tokenizer, "chat_template", None):
        return [
            list(
                tokenizer.apply_chat_template(
                    [{"role": "user", "content": text}],
                    add_generation_prompt=True,
                    tokenize=True,
                    return_dict=True,
                )["input_ids"]
            )
            for text in CALIBRATION_MESSAGES
        ]
    return [list(tokenizer(text)["input_ids"]) for text in CALIBRATION_MESSAGES]


def convert_to_serving_onnx(model_dir: Path, cache_dir: Path) -> Path:
    """The student as the int8 serving graph (and its weights file), built once per student:
    smoothed (``smooth``) on the activation ranges of ``CALIBRATION_MESSAGES``."""

    def build(work: Path) -> None:
        supported_config(model_dir)  # refused before the calibration loads the student
        ranges = activation_ranges(model_dir, calibration_prompts(model_dir))
        build_graph(model_dir, work / ONNX_FILE, int8_rows=True, ranges=ranges)

    return built_once(
        model_dir,
        cache_dir,
        ONNX_FILE,
        build,
        also=(f"{ONNX_FILE}.data",),
        version=GRAPH_VERSION,
    )
