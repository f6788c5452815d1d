"""Probe for issue 14's throughput lever: would ONNX Runtime's int8 kernels serve the distilled
BANKING77 student faster than llama.cpp? Not a serving engine (``manage.py serve`` does not use
it): a measurement, kept so the next step starts from numbers and a graph that is known right.

What it does, in one run, on the served student's 300 held-out rows:

1. Builds SmolLM2 (any Llama-architecture student in one safetensors file) as an ONNX graph by
   hand: embedding, RMSNorm, rotary positions (cos/sin fed in), grouped-query attention over a
   KV cache that is an input and an output per layer, SwiGLU, tied output layer; an additive mask
   input, so a batch can share the task's prompt start and pad its own tokens. Checked against
   transformers' logits on a prompt, in every run (``f32_graph_max_logit_difference``: ~4e-5).
2. Three int8 forms: ``int8-rows`` (built so: every linear layer as MatMulInteger, int8 weights
   with a scale per output column, activations quantised per row — per token — at run time),
   and two from onnxruntime.quantization: ``int8-dynamic`` (MatMulInteger, activations with one
   scale per *call*) and ``nbits8`` (MatMulNBits: 8-bit weights in blocks of 128, activations
   per block and row, accuracy level 4).
3. Answers every prompt with the serving engine's own label logic (``ServedStudent``: decided
   labels, forced tokens), in batches of 8 and one at a time, with each ONNX model and with
   llama.cpp Q8_0 (the serving default), each engine in a process of its own: accuracy and
   in-engine time per request (no HTTP).

Measured (2 vCPUs, AMD EPYC, 2026-12-05; the full fine-tune student of bench/serve_student.py,
evaluated 82.33 %), ms per request in batches of 8 / alone p50 / alone p95, accuracy batched /
alone:

- llama.cpp Q8_0: 33.7 / 48.7 / 86.5 ms, 82.33 % / 82.33 %.
- int8-rows: 26.8 / 32.7 / 55.4 ms (1.26x / 1.49x), 82.67 % / 84.0 %.
- nbits8: 38.4 / 32.2 / 59.3 ms (0.88x / 1.51x), 83.33 % / 83.0 %.
- int8-dynamic: 22.3 / 26.4 / 47.4 ms, but 73.67 % / 81.67 %: one activation scale for the
  whole batch makes each answer depend on what it is batched with — unusable for serving.

So ONNX Runtime with per-token int8 activations is the faster engine here (a third less time
alone, a fifth less in batches, answers within the quantisation's near-ties), not enough on its
own for 40 requests/s with 8 clients on two cores; the graph above is where an engine would
start (this probe's Python loop is not tuned: it rebuilds masks and copies the cache per pass).

Needs what the project does not install: ``pip install onnxruntime onnx onnx_ir``.

    nice .venv/bin/python bench/serve_onnx_probe.py            # trains the student if needed
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import serve_student  # noqa: E402


def build_graph(model_dir: Path, out: Path, *, int8_rows: bool = False) -> Path:
    """The student as a float32 ONNX graph with a KV cache (weights in ``out``.data).
    ``int8_rows``: every linear layer as MatMulInteger with int8 weights (a scale per output
    column) and activations quantised per row (per token: symmetric, shifted to uint8 with
    zero point 128), so an answer does not depend on what it is batched with."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper, save
    from safetensors.numpy import load_file

    cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    if cfg.get("model_type") != "llama":
        raise SystemExit(f"the probe builds Llama-architecture students, not {cfg['model_type']}")
    weights = load_file(str(model_dir / "model.safetensors"))
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
    split = init("split", np.array([dim // 2, dim // 2], np.int64))

    def rms(x: str, weight: Any, name: str) -> str:
        mean = node("ReduceMean", [node("Mul", [x, x])], axes=[-1], keepdims=1)
        normed = node("Div", [x, node("Sqrt", [node("Add", [mean, eps])])])
        return node("Mul", [normed, init(name, weight.astype(np.float32))])

    def rope(x: str) -> str:
        first, second = f"{x}_a", f"{x}_b"
        nodes.append(helper.make_node("Split", [x, split], [first, second], axis=-1))
        rotated = node("Concat", [node("Neg", [second]), first], axis=-1)
        return node("Add", [node("Mul", [x, "cos"]), node("Mul", [rotated, "sin"])])

    def heads_first(x: str, n: int) -> str:
        return node("Transpose", [node("Reshape", [x, shape([0, 0, n, dim])])], perm=[0, 2, 1, 3])

    zero_u8 = init("zero_u8", np.array(128, np.uint8))
    zero_i8 = init("zero_i8", np.array(0, np.int8))
    tiny = init("tiny", np.float32(1e-8))
    q_low, q_high = init("q_low", np.float32(-127)), init("q_high", np.float32(127))
    q_shift, q_step = init("q_shift", np.float32(128)), init("q_step", np.float32(127))

    def matmul(x: str, weight: Any, name: str) -> str:
        weight = weight.astype(np.float32)
        if not int8_rows:
            return node("MatMul", [x, init(name, weight)])
        w_scale = np.maximum(np.abs(weight).max(axis=0), 1e-8) / 127
        w_q = np.clip(np.round(weight / w_scale), -127, 127).astype(np.int8)
        row_scale = node(
            "Div",
            [
                node("Max", [node("ReduceMax", [node("Abs", [x])], axes=[-1], keepdims=1), tiny]),
                q_step,
            ],
        )
        x_q = node("Clip", [node("Round", [node("Div", [x, row_scale])]), q_low, q_high])
        x_u8 = node("Cast", [node("Add", [x_q, q_shift])], to=TensorProto.UINT8)
        product = node("MatMulInteger", [x_u8, init(name, w_q), zero_u8, zero_i8])
        scaled = node("Mul", [node("Cast", [product], to=TensorProto.FLOAT), row_scale])
        return node("Mul", [scaled, init(name + "_scale", w_scale.astype(np.float32))])

    embedding = weights["model.embed_tokens.weight"].astype(np.float32)
    h = node("Gather", [init("embed", embedding), "input_ids"])
    presents = []
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."

        def linear(x: str, key: str, p: str = p, i: int = i) -> str:
            name = f"{key.rsplit('.', 1)[-1]}_{i}"
            return matmul(x, weights[p + key + ".weight"].T, name)

        x = rms(h, weights[p + "input_layernorm.weight"], f"ln1_{i}")
        q = rope(heads_first(linear(x, "self_attn.q_proj"), heads))
        k = rope(heads_first(linear(x, "self_attn.k_proj"), kv_heads))
        v = heads_first(linear(x, "self_attn.v_proj"), kv_heads)
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
        h = node("Add", [h, linear(merged, "self_attn.o_proj")])
        x = rms(h, weights[p + "post_attention_layernorm.weight"], f"ln2_{i}")
        gate, up = linear(x, "mlp.gate_proj"), linear(x, "mlp.up_proj")
        swiglu = node("Mul", [node("Mul", [gate, node("Sigmoid", [gate])]), up])
        h = node("Add", [h, linear(swiglu, "mlp.down_proj")])
    h = rms(h, weights["model.norm.weight"], "norm")
    rows = node("Gather", [node("Reshape", [h, shape([-1, hidden])]), "rows"])
    head = weights.get("lm_head.weight", weights["model.embed_tokens.weight"])
    nodes.append(helper.make_node("Identity", [matmul(rows, head.T, "lm_head")], ["logits"]))
    f32 = TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["B", "T"]),
        helper.make_tensor_value_info("cos", f32, ["B", 1, "T", dim]),
        helper.make_tensor_value_info("sin", f32, ["B", 1, "T", dim]),
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
        opset_imports=[helper.make_opsetid("", 17)],
    )
    model.ir_version = 8
    save(model, str(out), save_as_external_data=True, location=out.name + ".data")
    return out


def quantise(source: Path, kind: str) -> Path:
    out = source.with_name(f"student-{kind}.onnx")
    if out.is_file():
        return out
    if kind == "int8-dynamic":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(
            str(source),
            str(out),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            extra_options={"MatMulConstBOnly": True},
        )
        return out
    import onnx
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    config = nbits.DefaultWeightOnlyQuantConfig(
        block_size=128, is_symmetric=True, accuracy_level=4, bits=8
    )
    quantizer = nbits.MatMulNBitsQuantizer(
        onnx.load(str(source)),
        bits=8,
        block_size=128,
        is_symmetric=True,
        accuracy_level=4,
        algo_config=config,
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(out), use_external_data_format=True)
    return out


def _log_softmax(x: Any) -> Any:
    import numpy as np

    top = x.max(-1, keepdims=True)
    return x - (top + np.log(np.exp(x - top).sum(-1, keepdims=True)))


class OnnxBackend:
    """Enough of a serving backend for label answers: ``greedy`` (stop and force rules, a batch
    sharing ``static_prefix`` in the cache) and ``next_logprobs`` (the constrained fallback)."""

    def __init__(self, model_dir: Path, path: Path, threads: int = 2) -> None:
        import numpy as np
        import onnxruntime as ort

        from worker.model_loading import load_tokenizer
        from worker.serving_backends import eos_ids_of

        self.np = np
        cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        self.layers, self.kv_heads = cfg["num_hidden_layers"], cfg["num_key_value_heads"]
        self.dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        self.rep = cfg["num_attention_heads"] // self.kv_heads
        theta = cfg.get("rope_theta") or (cfg.get("rope_parameters") or {}).get("rope_theta")
        self.inv_freq = 1.0 / (float(theta) ** (np.arange(0, self.dim, 2) / self.dim))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.tokenizer = load_tokenizer(model_dir)
        self.eos_token_ids = eos_ids_of(model_dir, self.tokenizer)
        self.name = f"onnxruntime-{path.stem}"
        self.prefix: list[int] = []
        self.prefix_cache: list[tuple[Any, Any]] = []

    def _forward(self, ids: Any, pos: Any, allowed: Any, cache: list[Any], rows: list[int]) -> Any:
        np = self.np
        batch, tokens = ids.shape
        mask = np.where(allowed, 0.0, -1e9).astype(np.float32)
        mask = np.repeat(mask[:, None], self.rep, axis=1).reshape(batch, 1, self.rep * tokens, -1)
        angles = pos[..., None].astype(np.float64) * self.inv_freq
        emb = np.concatenate([angles, angles], -1)
        feed = {
            "input_ids": ids,
            "cos": np.cos(emb).astype(np.float32)[:, None],
            "sin": np.sin(emb).astype(np.float32)[:, None],
            "mask": mask,
            "rows": np.asarray(rows, np.int64),
        }
        for i, (k, v) in enumerate(cache):
            feed[f"past_k{i}"], feed[f"past_v{i}"] = k, v
        out = self.session.run(None, feed)
        return out[0], [(out[1 + 2 * i], out[2 + 2 * i]) for i in range(self.layers)]

    def set_prefix(self, prefix: Sequence[int]) -> None:
        np = self.np
        empty = np.zeros((1, self.kv_heads, 0, self.dim), np.float32)
        n = len(prefix)
        _, self.prefix_cache = self._forward(
            np.array([prefix], np.int64),
            np.arange(n)[None],
            np.tril(np.ones((n, n), bool))[None],
            [(empty, empty)] * self.layers,
            [n - 1],
        )
        self.prefix = list(prefix)

    def greedy(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        stop: Callable[[int, Sequence[int]], bool] | None = None,
        force: Callable[[int, Sequence[int]], Sequence[int]] | None = None,
    ) -> list[Any]:
        from worker.serving_backends import finished

        np = self.np
        start = len(self.prefix)
        if any(list(p[:start]) != self.prefix for p in prompts):
            raise ValueError("every prompt must begin with the prefix")
        n = len(prompts)
        own = [list(p[start:]) for p in prompts]
        width = max(map(len, own))
        ids = np.zeros((n, width), np.int64)
        pos = np.zeros((n, width), np.int64)
        real = np.zeros((n, width), bool)
        for b, tokens in enumerate(own):  # padded on the left
            ids[b, width - len(tokens) :] = tokens
            real[b, width - len(tokens) :] = True
            pos[b, width - len(tokens) :] = np.arange(start, start + len(tokens))
        causal = np.tril(np.ones((width, width), bool))
        allowed = np.concatenate(
            [np.ones((n, width, start), bool), causal[None] & real[:, None, :]], -1
        )
        cache = [(np.repeat(k, n, 0), np.repeat(v, n, 0)) for k, v in self.prefix_cache]
        logits, cache = self._forward(
            ids, pos, allowed, cache, [b * width + width - 1 for b in range(n)]
        )
        cells = np.concatenate([np.ones((n, start), bool), real], -1)
        next_pos = [start + len(t) for t in own]
        tokens: list[list[int]] = [[] for _ in prompts]
        lps: list[list[float]] = [[] for _ in prompts]
        pending: list[list[int]] = [[] for _ in prompts]
        logprobs, row_of, active = _log_softmax(logits), list(range(n)), list(range(n))
        while active:
            going = []
            for b in active:
                row = logprobs[row_of[b]]
                token = int(row.argmax())
                tokens[b].append(token)
                lps[b].append(float(row[token]))
                pending[b] = [token]
                ended = token in self.eos_token_ids or len(tokens[b]) >= max_new_tokens
                if not ended and force is not None:
                    more = list(force(b, tokens[b]))[: max_new_tokens - len(tokens[b])]
                    tokens[b] += more
                    lps[b] += [math.nan] * len(more)
                    pending[b] += more
                    ended = len(tokens[b]) >= max_new_tokens
                if not ended and (stop is None or not stop(b, tokens[b])):
                    going.append(b)
            if not going:
                break
            step = max(len(pending[b]) for b in going)
            ids = np.zeros((n, step), np.int64)
            pos = np.zeros((n, step), np.int64)
            new = np.zeros((n, step), bool)
            for b in going:
                k = len(pending[b])
                ids[b, step - k :] = pending[b]
                new[b, step - k :] = True
                pos[b, step - k :] = np.arange(next_pos[b], next_pos[b] + k)
                next_pos[b] += k
            allowed = np.concatenate(
                [
                    np.repeat(cells[:, None, :], step, 1),
                    np.tril(np.ones((step, step), bool))[None] & new[:, None, :],
                ],
                -1,
            )
            allowed[:, :, 0] |= ~allowed.any(-1)  # a row that is done still needs one cell
            logits, cache = self._forward(
                ids, pos, allowed, cache, [b * step + step - 1 for b in going]
            )
            cells = np.concatenate([cells, new], -1)
            logprobs = _log_softmax(logits)
            row_of = {b: j for j, b in enumerate(going)}  # type: ignore[assignment]
            active = going
        return [finished(t, lp, self.eos_token_ids) for t, lp in zip(tokens, lps, strict=True)]

    def next_logprobs(
        self, sequences: Sequence[Sequence[int]], wanted: Sequence[int]
    ) -> list[list[float]]:
        np = self.np
        start = len(self.prefix)
        out = []
        for sequence in sequences:
            own = list(sequence[start:])
            n = len(own)
            allowed = np.concatenate(
                [np.ones((1, n, start), bool), np.tril(np.ones((n, n), bool))[None]], -1
            )
            logits, _ = self._forward(
                np.array([own], np.int64),
                np.arange(start, start + n)[None],
                allowed,
                self.prefix_cache,
                [n - 1],
            )
            row = _log_softmax(logits)[0]
            out.append([float(row[t]) for t in wanted])
        return out


def measure(served: Any, prompts: list[list[int]], gold: list[str]) -> dict[str, Any]:
    served.answer_batch(prompts[:8], 0)
    started = time.perf_counter()
    batched: list[str] = []
    for i in range(0, len(prompts), 8):
        batched += [a.text for a in served.answer_batch(prompts[i : i + 8], 0)]
    per_request = (time.perf_counter() - started) * 1000 / len(prompts)
    alone, times = [], []
    for prompt in prompts:
        t0 = time.perf_counter()
        alone.append(served.answer_batch([prompt], 0)[0].text)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()

    def accuracy(answers: list[str]) -> float:
        return round(sum(a == g for a, g in zip(answers, gold, strict=True)) / len(gold), 4)

    return {
        "accuracy_batched_8": accuracy(batched),
        "accuracy_alone": accuracy(alone),
        "ms_per_request_batched_8": round(per_request, 1),
        "alone_p50_ms": round(statistics.median(times), 1),
        "alone_p95_ms": round(times[int(0.95 * (len(times) - 1))], 1),
    }


def graph_check(model_dir: Path, work: Path) -> float:
    """Largest difference between the float32 graph's next-token logits (the prompt's start
    from the cache, the rest in one pass) and transformers' on the same prompt."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    work.mkdir(parents=True, exist_ok=True)
    source = work / "student-f32.onnx"
    if not source.is_file():
        build_graph(model_dir, source)
    backend = OnnxBackend(model_dir, source)
    ids = backend.tokenizer.apply_chat_template(
        [{"role": "user", "content": "My card has not arrived yet, where is it?"}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        reference = model(torch.tensor([ids])).logits[0, -1].numpy()
    start = len(ids) // 2
    backend.set_prefix(ids[:start])
    n = len(ids) - start
    allowed = np.concatenate(
        [np.ones((1, n, start), bool), np.tril(np.ones((n, n), bool))[None]], -1
    )
    logits, _ = backend._forward(
        np.array([ids[start:]], np.int64),
        np.arange(start, len(ids))[None],
        allowed,
        backend.prefix_cache,
        [n - 1],
    )
    return float(np.abs(logits[0] - reference).max())


ENGINES = ("llama-q8_0", "int8-rows", "nbits8", "int8-dynamic")


def measure_one(engine: str, n: int, work: Path) -> dict[str, Any]:
    """One engine's figures (a process of its own: llama.cpp's and ONNX Runtime's worker threads
    keep spinning for a while after their last call, which slowed whichever engine ran second in
    a shared process by up to 1.8x)."""
    from worker.label_trie import LabelTrie
    from worker.serving_engine import ServedStudent, decided_labels
    from worker.taskspec import TaskSpec

    record = serve_student.load_record()
    assert record is not None
    model_dir = serve_student.STUDENT_CACHE / "model"
    task = TaskSpec(
        instruction_template=record["instruction_template"],
        output_kind="label",
        input_fields=tuple(record["input_fields"]),
        label_set=tuple(record["label_set"]),
    )
    rows = record["test_rows"][: n or None]
    gold = [r["label"] for r in rows]
    if engine == "llama-q8_0":
        served = ServedStudent.load(
            task=task, model_dir=model_dir, cache_dir=work / "gguf", engine="llama"
        )
    else:
        work.mkdir(parents=True, exist_ok=True)
        if engine == "int8-rows":
            path = work / "student-int8-rows.onnx"
            if not path.is_file():
                build_graph(model_dir, path, int8_rows=True)
        else:
            source = work / "student-f32.onnx"
            if not source.is_file():
                build_graph(model_dir, source)
            path = quantise(source, engine)
        backend = OnnxBackend(model_dir, path)
        served = ServedStudent(
            task=task,
            model_dir=model_dir,
            backend=backend,  # type: ignore[arg-type]
            context_limit=8192,
            label_list_in_prompt=False,
        )
        tok = backend.tokenizer
        served.trie = LabelTrie.build(
            task.label_set,
            [tok(label, add_special_tokens=False)["input_ids"] for label in task.label_set],
        )
        served.decided = decided_labels(served.trie)
        backend.set_prefix(served.common_prefix())
    prompts = [served.encode([{"role": "user", "content": r["text"]}], 0) for r in rows]
    evaluated = [record["evaluated_outputs"].get(r["text"]) for r in rows]
    figures = measure(served, prompts, gold)
    if any(evaluated):
        figures["accuracy_evaluated"] = round(
            sum(e == g for e, g in zip(evaluated, gold, strict=True)) / len(gold), 4
        )
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=0, help="test prompts (default: all 300)")
    parser.add_argument("--work", type=Path, default=serve_student.STUDENT_CACHE / "onnx-probe")
    parser.add_argument("--one", choices=ENGINES, help=argparse.SUPPRESS)  # the child's engine
    args = parser.parse_args(argv)
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise SystemExit(
            "this probe needs: .venv/bin/pip install onnxruntime onnx onnx_ir"
        ) from None
    if args.one:
        print(json.dumps(measure_one(args.one, args.n, args.work)))
        return 0
    if serve_student.load_record() is None:
        print("training the student once (bench/serve_student.py)...", flush=True)
        serve_student.train(serve_student.parser().parse_args(["--download"]))
    result: dict[str, Any] = {"n": args.n or 300, "cores": os.cpu_count()}
    result["f32_graph_max_logit_difference"] = graph_check(
        serve_student.STUDENT_CACHE / "model", args.work
    )
    for engine in ENGINES:
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--one",
                engine,
                "--n",
                str(args.n),
                "--work",
                str(args.work),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        lines = [ln for ln in child.stdout.splitlines() if ln.startswith("{")]
        if child.returncode != 0 or not lines:
            raise SystemExit(f"{engine} failed:\n{child.stderr[-3000:]}")
        result[engine.replace("-", "_")] = json.loads(lines[-1])
    base = result["llama_q8_0"]
    for engine in ENGINES[1:]:
        figures = result[engine.replace("-", "_")]
        key = engine.replace("-", "_")
        figures["ratio_alone_p50"] = round(base["alone_p50_ms"] / figures["alone_p50_ms"], 2)
        figures["ratio_batched_8"] = round(
            base["ms_per_request_batched_8"] / figures["ms_per_request_batched_8"], 2
        )
        result[key] = figures
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
