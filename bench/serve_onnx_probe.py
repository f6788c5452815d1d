"""ONNX Runtime's int8 forms vs llama.cpp Q8_0 for serving the distilled BANKING77 student,
in-engine (no HTTP): the measurement behind the ``onnx`` serving engine (worker/serving_onnx.py,
the CPU default since bench/serve_latency.py measured it end to end).

What it does, in one run, on the served student's 300 held-out rows:

1. Checks the hand-built graph (``worker.serving_onnx_graph.build_graph``) in float32 against
   transformers on a prompt (``f32_graph_max_logprob_difference``: ~4e-5).
2. Answers every prompt with the serving engine's own label logic (``ServedStudent``: decided
   labels, forced tokens), in batches of 8 and one at a time, each engine in a process of its own
   (llama.cpp's and ONNX Runtime's worker threads keep spinning for a while after their last
   call, which slowed whichever engine ran second in a shared process by up to 1.8x):
   ``llama-q8_0`` (llama.cpp, the engine before ONNX Runtime), ``int8-rows`` (the ``onnx``
   serving engine's graph: smoothed weights, int8 weights, activations quantised per token),
   and two forms from onnxruntime.quantization of the unsmoothed float32 graph for comparison:
   ``int8-dynamic`` (activations with one scale per *call*) and ``nbits8`` (MatMulNBits, 8-bit
   blocks of 128, accuracy level 4; measured only where ``pip install onnx_ir`` was done).

Measured (2 vCPUs, AMD EPYC, 2026-12-05, a later session; the full fine-tune student of
bench/serve_student.py, evaluated 82.0 %), ms per request in batches of 8 / alone p50 / alone
p95, accuracy batched / alone:

- llama.cpp Q8_0: 40.4 / 56.9 / 109.2 ms, 82.33 % / 82.33 %.
- int8-rows: 21.4 / 28.9 / 51.7 ms (1.89x / 1.97x), 82.33 % / 82.67 % (graph version 3, before
  the RotaryEmbedding op: ~4 % less in batches since).
- int8-dynamic: 19.2 / 26.4 / 45.1 ms, but 77.0 % / 80.33 %: one activation scale for the
  whole batch makes each answer depend on what it is batched with — unusable for serving.
- (an earlier session, another student, before the smoothing and the fused quantisation ops:
  int8-rows 26.8 / 32.7 ms and llama.cpp 33.7 / 48.7 ms; nbits8 38.4 / 32.2 ms, 83.33 %.)

    nice .venv/bin/python bench/serve_onnx_probe.py            # trains the student if needed
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import serve_student  # noqa: E402


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
    """Largest difference between the float32 graph's next-token log-probabilities (the
    prompt's start from the cache, the rest in one pass) and transformers' on one prompt."""
    import torch
    from transformers import AutoModelForCausalLM

    from worker.serving_onnx import OnnxBackend
    from worker.serving_onnx_graph import build_graph

    work.mkdir(parents=True, exist_ok=True)
    source = work / "student-f32.onnx"
    if not source.is_file():
        build_graph(model_dir, source)
    backend = OnnxBackend(model_dir, graph=source)
    ids = backend.tokenizer.apply_chat_template(
        [{"role": "user", "content": "My card has not arrived yet, where is it?"}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )["input_ids"]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        reference = torch.log_softmax(model(torch.tensor([ids])).logits[0, -1], -1).tolist()
    backend.static_prefix = ids[: len(ids) // 2]
    got = backend.next_logprobs([ids], list(range(len(reference))))[0]
    return max(abs(a - b) for a, b in zip(got, reference, strict=True))


ENGINES = ("llama-q8_0", "int8-rows", "nbits8", "int8-dynamic")


def measure_one(engine: str, n: int, work: Path) -> dict[str, Any]:
    """One engine's figures (a process of its own: llama.cpp's and ONNX Runtime's worker threads
    keep spinning for a while after their last call, which slowed whichever engine ran second in
    a shared process by up to 1.8x)."""
    from worker.serving_engine import ServedStudent
    from worker.serving_onnx import OnnxBackend
    from worker.serving_onnx_graph import build_graph
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
    # The serving engine's own student (prompts, label trie); the comparison forms swap in
    # their graph (the int8-rows one is built once, in the run before them, and reused).
    served = ServedStudent.load(
        task=task,
        model_dir=model_dir,
        cache_dir=work / ("llama-q8_0" if engine == "llama-q8_0" else "int8-rows"),
        engine="llama" if engine == "llama-q8_0" else "onnx",
    )
    if engine not in ("llama-q8_0", "int8-rows"):
        source = work / "student-f32.onnx"
        if not source.is_file():
            build_graph(model_dir, source)
        served.backend = OnnxBackend(model_dir, graph=quantise(source, engine))
        served.backend.static_prefix = served.common_prefix()
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
    engines = list(ENGINES)
    try:
        import onnx_ir  # noqa: F401 - the nbits8 form's quantiser needs it
    except ImportError:
        engines.remove("nbits8")  # said in the result
    if args.one:
        print(json.dumps(measure_one(args.one, args.n, args.work)))
        return 0
    if serve_student.load_record() is None:
        print("training the student once (bench/serve_student.py)...", flush=True)
        serve_student.train(serve_student.parser().parse_args(["--download"]))
    result: dict[str, Any] = {"n": args.n or 300, "cores": os.cpu_count()}
    result["f32_graph_max_logprob_difference"] = graph_check(
        serve_student.STUDENT_CACHE / "model", args.work
    )
    if "nbits8" not in engines:
        result["nbits8"] = "not measured: its quantiser needs .venv/bin/pip install onnx_ir"
    for engine in engines:
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
    for engine in engines[1:]:
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
