"""CPU fine-tuning throughput: trl's default SFT recipe vs ours, same model, data and steps.

    nice python bench/train_throughput.py            # full: 400 rows, 50 steps of 8, 200 test rows
    nice python bench/train_throughput.py --quick    # smoke: 32 rows, 4 steps, 16 test rows

Model: SmolLM2-135M-Instruct, prepared once with worker.base_models.ensure_smollm2 into
$DISTILLERY_DATA_DIR/models/ (default ./.data). Data: BANKING77 (--data, default the repo's
projects/demo_data/banking77 if present, else ../shared/data/banking77 or $DISTILLERY_SHARED_DATA), a seeded sample of train rows
and of test rows.

Both recipes train LoRA r=8/alpha=16 on all linear layers, batch 8, lr 2e-3, the same number
of steps, on the same rows; each runs in its own subprocess (so its peak RSS is its own):

- default: ``trl.SFTTrainer`` with ``SFTConfig`` defaults (bf16 autocast, gradient
  checkpointing), conversational "messages" rows without a system turn (the model's template
  adds its default system prompt), loss over the whole sequence, LM head at every position;
- ours: ``worker.training.run_training`` (no checkpointing, fp32 — or, where the CPU has
  AVX512-BF16/AMX (see --cpu-bf16), bf16 autocast with the frozen base weights in bf16 —,
  prompt/completion with loss and LM head on the completion only, group-by-length, no default
  system prompt, GapDropout for the adapters, eager attention for short sequences, threads =
  cores, tcmalloc preloaded when installed).

``--ablations STEPS`` times each difference on its own instead (in this process, no tcmalloc).

Held-out accuracy: greedy generation on the test rows, each model prompted as it was trained,
parsed against the 77 labels with worker.taskspec.parse_output. The prompt is the instruction
and the message (answer = the label), as in the first CPU probe and as the product trains a label
task's student by default (without the label list); ``--task-kind label`` keeps all 77 labels in
every prompt, ~6x more prompt tokens per example.

The last line is JSON: ratio (ours / default samples/s), ours_tokens_per_s, ours_accuracy,
default_accuracy, and the absolute figures.

On a GPU (``--device cuda``; "auto", the default, picks it where there is one) only our recipe
runs (the trl comparison is the CPU story), with the batch the GPU recipe sizes from the GPU's
memory unless ``--batch`` says otherwise, for ``--epochs`` (default 1) over the rows. It adds
peak GPU memory and an MFU estimate: 6 x the parameters on a trained token's path (blocks,
adapters, the LM head at completion positions) x trained tokens/s over the GPU's dense bf16
peak (989 TFLOP/s for H100/H200 SXM; see bench/student_model.py).

    python bench/train_throughput.py --device cuda --rows 4000 --test-rows 500
    python bench/train_throughput.py --device cuda --random-init   # no SmolLM2 weights here

``--random-init``: where SmolLM2's weights cannot be prepared, a random model of its shape.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from shared_data import shared_data  # noqa: E402  (bench/ is on sys.path when a benchmark runs)

from bench.student_model import LORA  # noqa: E402
from worker.taskspec import TaskSpec, parse_output  # noqa: E402
from worker.training_data import build_examples, student_messages  # noqa: E402

INSTRUCTION = "Classify this banking customer message into its intent label.\nMessage: {{text}}"


def default_data_dir() -> Path:
    demo = REPO / "projects" / "demo_data" / "banking77"
    if (demo / "train.jsonl").exists() and (demo / "test.jsonl").exists():
        return demo
    return shared_data("banking77")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def make_task(kind: str, labels: tuple[str, ...]) -> TaskSpec:
    return TaskSpec(
        instruction_template=INSTRUCTION,
        output_kind="label" if kind == "label" else "text",
        input_fields=("text",),
        label_set=labels if kind == "label" else (),
    )


# ------------------------------------------------------------------ the default recipe (child)


def run_default(config_path: Path) -> None:
    """trl's default SFT recipe; writes default_result.json next to the config."""
    import resource

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    cfg = json.loads(config_path.read_text())
    out = config_path.parent / "default"
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    rows = read_jsonl(config_path.parent / "train_examples.jsonl")
    dataset = Dataset.from_list(
        [
            {"messages": [*r["messages"], {"role": "assistant", "content": r["completion"]}]}
            for r in rows
        ]
    )
    tokenizer = AutoTokenizer.from_pretrained(cfg["model"])
    args = SFTConfig(
        output_dir=str(out),
        max_steps=cfg["steps"],
        per_device_train_batch_size=cfg["batch"],
        learning_rate=cfg["lr"],
        use_cpu=True,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        logging_steps=10,
        seed=cfg["seed"],
    )
    trainer = SFTTrainer(
        model=cfg["model"],
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=LORA["r"],
            lora_alpha=LORA["alpha"],
            lora_dropout=LORA["dropout"],
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        ),
    )
    output = trainer.train()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    runtime = float(output.metrics["train_runtime"])
    adapter = out / "adapter"
    trainer.model.save_pretrained(str(adapter))
    merged = trainer.model.merge_and_unload()
    merged = merged.to(torch.float32)
    merged.save_pretrained(str(out / "merged"))
    tokenizer.save_pretrained(str(out / "merged"))
    result = {
        "train_runtime_s": runtime,
        "samples": cfg["steps"] * cfg["batch"],
        "tokens": int(trainer._total_train_tokens),
        "peak_rss_mb": peak_rss,
        "train_loss": float(output.training_loss),
        "bf16": bool(args.bf16),
        "gradient_checkpointing": bool(args.gradient_checkpointing),
        "merged_dir": str(out / "merged"),
    }
    (config_path.parent / "default_result.json").write_text(json.dumps(result))


# ------------------------------------------------------------------ ours


def run_ours(cfg: dict[str, Any], work: Path, examples: list[Any]) -> dict[str, Any]:
    from worker.training import TrainSpec, run_training

    device = cfg.get("device", "cpu")

    last_step: dict[str, Any] = {}

    def on_event(event: dict[str, Any]) -> None:
        if event["type"] == "step":
            last_step.update(event)
            if event["step"] % 10 == 0 or device == "cuda":
                print(
                    f"  ours step {event['step']}/{event['total_steps']} "
                    f"loss {event['loss']:.3f} {event['samples_per_s']:.2f} samples/s",
                    flush=True,
                )
        elif event["type"] == "started":
            print(
                f"  ours started: threads={event['threads']} tcmalloc={event['tcmalloc']} "
                f"attention={event.get('attention')} base={event.get('base_dtype')} "
                f"bf16={event['hyperparameters']['bf16']} "
                f"batch={event['hyperparameters']['batch_size']} "
                f"steps={event['total_steps']} hub_kernels={event.get('hub_kernels')}"
            )

    spec = TrainSpec(
        base_model=cfg["model"],
        output_dir=str(work / "ours"),
        train_examples=examples,
        method="lora",
        max_steps=cfg["steps"],
        epochs=cfg.get("epochs") if cfg["steps"] is None else None,
        batch_size=cfg["batch"],
        learning_rate=cfg["lr"],
        lora_r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        lora_target_modules="all-linear",
        checkpoint_every_steps=cfg["steps"] or 100_000,
        seed=cfg["seed"],
        device=device,
        threads=cfg.get("threads"),
        cpu_bf16=cfg.get("cpu_bf16", "auto"),
    )
    result = run_training(spec, on_event)
    if result.status != "succeeded":
        raise SystemExit(f"our training failed: {result.error}")
    runtime = result.metrics["train_runtime_s"]
    hp = result.hyperparameters
    return {
        "train_runtime_s": runtime,
        "samples": result.step * hp["batch_size"] * hp["grad_accum"],
        "tokens": int(last_step.get("trained_tokens", 0)),
        "batch": hp["batch_size"],
        "steps": result.step,
        "peak_gpu_memory_gb": result.metrics.get("peak_gpu_memory_gb"),
        "peak_rss_mb": result.metrics.get("peak_rss_mb"),
        "train_loss": result.metrics["train_loss"],
        "timings": result.timings,
        "merged_dir": result.merged_dir,
        "bf16": bool(result.hyperparameters.get("bf16")),
    }


# ------------------------------------------------------------------ accuracy


def accuracy(
    model_dir: str,
    test_messages: list[list[dict[str, str]]],
    golds: list[str],
    label_task: TaskSpec,
    *,
    task_system_prompt_only: bool,
    batch: int = 16,
    device: str = "cpu",
) -> float:
    import torch

    from worker.model_loading import load_causal_lm, load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    tokenizer.padding_side = "left"
    model = load_causal_lm(model_dir, dtype="float32").to(device).eval()
    correct = 0
    for start in range(0, len(test_messages), batch):
        chunk = test_messages[start : start + batch]
        prompts = [
            tokenizer.apply_chat_template(
                student_messages(m, tokenizer) if task_system_prompt_only else m,
                tokenize=False,
                add_generation_prompt=True,
            )
            for m in chunk
        ]
        enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(
            device
        )
        with torch.no_grad():
            out = model.generate(
                **enc,
                max_new_tokens=20,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        for i, row in enumerate(out):
            text = tokenizer.decode(row[enc["input_ids"].shape[1] :], skip_special_tokens=True)
            parsed = parse_output(label_task, text)
            correct += parsed.ok and parsed.value == golds[start + i]
    return correct / max(len(golds), 1)


# ------------------------------------------------------------------ ablations


# Each row adds one difference to the row before it. Columns: bf16 autocast, gradient
# checkpointing, the template's default system prompt, completion-only loss with the LM head at
# completion positions only, group-by-length batches, GapDropout for the adapters, eager
# attention, frozen base weights in bf16 (without peft's fp32 casts of the adapters' input).
def gpu_figures(
    model_dir: str, examples: list[Any], ours: dict[str, Any], tokens_per_s: float
) -> dict[str, Any]:
    """Peak GPU memory and MFU: 6 x (blocks + LoRA adapters + the LM head at the completion
    share of positions) FLOPs per trained token, against the GPU's dense bf16 peak."""
    import torch

    from bench.student_model import peak_flops
    from worker.model_loading import load_tokenizer, read_model_shape, training_flops_per_token
    from worker.training_data import tokenize_example

    shape = read_model_shape(model_dir)
    if shape is None:
        return {"peak_gpu_memory_gb": ours.get("peak_gpu_memory_gb")}
    tokenizer = load_tokenizer(model_dir)
    labelled = total = 0
    for example in examples[:200]:
        tok = tokenize_example(example, tokenizer, max_length=1024)
        labelled += sum(1 for t in tok.labels if t != -100)
        total += len(tok.input_ids)
    kv = shape.num_kv_heads * shape.head_dim
    per_layer = (
        4 * shape.hidden_size  # q and o: in + out
        + 2 * (shape.hidden_size + kv)  # k and v
        + 3 * (shape.hidden_size + shape.intermediate_size)  # gate, up, down
    )
    adapters = LORA["r"] * per_layer * shape.num_layers
    flops = training_flops_per_token(
        shape, adapter_parameters=adapters, completion_fraction=labelled / max(total, 1)
    )
    name = torch.cuda.get_device_name()
    peak, peak_note = peak_flops(name)
    return {
        "gpu": name,
        "peak_gpu_memory_gb": round(float(ours.get("peak_gpu_memory_gb") or 0.0), 2),
        "flops_per_trained_token": round(flops),
        "mfu": round(tokens_per_s * flops / peak, 4) if peak else None,
        "mfu_peak": peak_note,
    }


# ------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="32 rows, 4 steps, 16 test rows")
    parser.add_argument("--data", type=Path, default=None, help="folder with train/test.jsonl")
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--test-rows", type=int, default=200)
    parser.add_argument("--steps", type=int, default=None, help="default: one epoch")
    parser.add_argument(
        "--batch", type=int, default=None, help="default: 8 on CPU, sized from memory on a GPU"
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="cuda: our GPU recipe only (auto: cuda where there is a GPU)",
    )
    parser.add_argument("--epochs", type=float, default=1.0, help="GPU runs without --steps")
    parser.add_argument(
        "--random-init",
        action="store_true",
        help="no SmolLM2 weights at hand: a random model of its shape (speed only)",
    )
    # The LoRA learning rate the product picks for a student this small (2e-4 x 10, see
    # worker.training.SMALL_STUDENT_LORA_LR_FACTOR), for both recipes; 2e-4 barely moves either
    # in one epoch.
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--task-kind", choices=("text", "label"), default="text")
    parser.add_argument(
        "--cpu-bf16",
        choices=("auto", "on", "off"),
        default="auto",
        help="ours: bf16 autocast on CPU (auto: where the CPU has AVX512-BF16/AMX)",
    )
    parser.add_argument("--work", type=Path, default=REPO / "bench" / "out" / "train_throughput")
    parser.add_argument("--smollm2-source", type=Path, default=None)
    parser.add_argument("--skip-default", action="store_true")
    parser.add_argument(
        "--ablations",
        type=int,
        metavar="STEPS",
        default=0,
        help="instead: time each recipe difference alone for STEPS steps",
    )
    parser.add_argument("--run-default", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_default:
        run_default(args.run_default)
        return
    from worker.training import cuda_available

    device = args.device
    if device == "auto":
        device = "cuda" if cuda_available() else "cpu"
    if device == "cuda":
        args.skip_default = True
    if args.quick:
        args.rows, args.test_rows = 32, 16
        args.steps = args.steps or 4
    if args.batch is None and device == "cpu":
        args.batch = 8
    steps: int | None = args.steps
    if steps is None and args.batch is not None and device == "cpu":
        steps = max(1, args.rows // args.batch)

    data = args.data or default_data_dir()
    rng = random.Random(args.seed)
    all_train = read_jsonl(data / "train.jsonl")
    from bench.student_model import data_root, prepare_student

    model_path, student = prepare_student(
        data_root() / "models" / "SmolLM2-135M-Instruct",  # as `make smollm2` prepares it
        source=args.smollm2_source,
        download=not args.random_init,
        random_init=args.random_init,
        texts=[r["text"] for r in all_train[:3000]] + sorted({r["label"] for r in all_train}),
    )
    model_dir = model_path
    train_rows = rng.sample(all_train, args.rows)
    test_rows = rng.sample(read_jsonl(data / "test.jsonl"), args.test_rows)
    labels = tuple(sorted({r["label"] for r in read_jsonl(data / "train.jsonl")}))
    task = make_task(args.task_kind, labels)
    label_task = make_task("label", labels)
    examples = build_examples(task, [{"text": r["text"], "output": r["label"]} for r in train_rows])
    test_examples = build_examples(
        task, [{"text": r["text"], "output": r["label"]} for r in test_rows]
    )

    if args.ablations:
        print(f"ablations: {args.ablations} timed steps of {args.batch} per variant", flush=True)
        from train_ablations import run_ablations

        table = run_ablations(str(model_dir), examples, args.batch, args.ablations, args.lr)
        print(json.dumps({"ablations": table, "cpus": len(os.sched_getaffinity(0))}))
        return

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    for stale in ("ours", "default"):
        subprocess.run(["rm", "-rf", str(work / stale)], check=True)
    cfg = {
        "model": str(model_dir),
        "steps": steps,
        "batch": args.batch,
        "lr": args.lr,
        "seed": args.seed,
        "threads": args.threads,
        "cpu_bf16": args.cpu_bf16,
        "device": device,
        "epochs": args.epochs,
    }
    (work / "config.json").write_text(json.dumps(cfg))
    with (work / "train_examples.jsonl").open("w") as fh:
        for example in examples:
            fh.write(json.dumps(example.to_json()) + "\n")
    print(
        f"model {model_dir} ({student['weights']}, {student['tokenizer']} tokenizer); "
        f"{len(examples)} rows, {steps or f'{args.epochs} epoch(s)'} steps of "
        f"{args.batch or 'auto'} on {device}; {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.2f}",
        flush=True,
    )

    t0 = time.perf_counter()
    ours = run_ours(cfg, work, examples)
    print(f"ours trained in {time.perf_counter() - t0:.0f}s", flush=True)
    default: dict[str, Any] | None = None
    if not args.skip_default:
        t0 = time.perf_counter()
        env = dict(os.environ)
        env.pop("LD_PRELOAD", None)
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        subprocess.run(
            [sys.executable, __file__, "--run-default", str(work / "config.json")],
            check=True,
            env=env,
        )
        default = json.loads((work / "default_result.json").read_text())
        print(f"default trained in {time.perf_counter() - t0:.0f}s", flush=True)

    test_messages = [e.messages for e in test_examples]
    golds = [r["label"] for r in test_rows]
    ours["accuracy"] = accuracy(
        ours["merged_dir"],
        test_messages,
        golds,
        label_task,
        task_system_prompt_only=True,
        batch=64 if device == "cuda" else 16,
        device=device,
    )
    if default is not None:
        default["accuracy"] = accuracy(
            default["merged_dir"], test_messages, golds, label_task, task_system_prompt_only=False
        )

    def rates(r: dict[str, Any]) -> tuple[float, float]:
        return r["samples"] / r["train_runtime_s"], r["tokens"] / r["train_runtime_s"]

    ours_sps, ours_tps = rates(ours)
    print(
        f"ours:    {ours_sps:.2f} samples/s, {ours_tps:.0f} tokens/s, "
        f"peak RSS {ours['peak_rss_mb']:.0f} MB, accuracy {ours['accuracy']:.3f}"
    )
    final: dict[str, Any] = {
        "ours_samples_per_s": round(ours_sps, 3),
        "ours_tokens_per_s": round(ours_tps, 1),
        "ours_accuracy": ours["accuracy"],
        "ours_peak_rss_mb": round(ours["peak_rss_mb"], 0),
        "ours_train_loss": round(ours["train_loss"], 4),
        "ours_timings": {k: round(v, 1) for k, v in ours["timings"].items()},
        "ours_bf16_autocast": ours["bf16"],
    }
    if default is not None:
        d_sps, d_tps = rates(default)
        print(
            f"default: {d_sps:.2f} samples/s, {d_tps:.0f} tokens/s, "
            f"peak RSS {default['peak_rss_mb']:.0f} MB, accuracy {default['accuracy']:.3f}"
        )
        final = {
            "ratio": round(ours_sps / d_sps, 2),
            **final,
            "default_samples_per_s": round(d_sps, 3),
            "default_tokens_per_s": round(d_tps, 1),
            "default_accuracy": default["accuracy"],
            "default_peak_rss_mb": round(default["peak_rss_mb"], 0),
            "default_train_loss": round(default["train_loss"], 4),
        }
    if device == "cuda":
        final.update(gpu_figures(str(model_dir), examples, ours, ours_tps))
    final.update(
        {
            "device": device,
            "student": student,
            "rows": len(examples),
            "test_rows": len(test_rows),
            "steps": ours["steps"],
            "batch": ours["batch"],
            "task_kind": args.task_kind,
            "cpus": len(os.sched_getaffinity(0)),
            "quick": args.quick,
        }
    )
    print(json.dumps(final))


if __name__ == "__main__":
    main()
