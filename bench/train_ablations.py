"""Ablations of the CPU LoRA recipe for bench/train_throughput.py --ablations: each difference
between trl's default SFT recipe and ours on its own, the variants interleaved step by step in
one process so a slow minute on a shared machine slows all alike."""

from __future__ import annotations

import os
import random
import time
from typing import Any

from bench.student_model import LORA

ABLATIONS = [
    ("trl defaults", True, True, True, False, False, False, False, False),
    ("fp32, no checkpointing", False, False, True, False, False, False, False, False),
    ("+ completion-only loss and LM head", False, False, True, True, False, False, False, False),
    ("+ no default system prompt", False, False, False, True, False, False, False, False),
    ("+ group-by-length", False, False, False, True, True, False, False, False),
    ("+ bf16 autocast (native bf16 CPU)", True, False, False, True, True, False, False, False),
    ("+ geometric-gap LoRA dropout", True, False, False, True, True, True, False, False),
    ("+ eager attention (short sequences)", True, False, False, True, True, True, True, False),
    ("+ bf16 frozen base (ours)", True, False, False, True, True, True, True, True),
]


def run_ablations(
    model_dir: str, examples: list[Any], batch: int, steps: int, lr: float
) -> list[dict[str, Any]]:
    """Each recipe difference on its own: the same rows, ``steps`` timed optimiser steps
    (after one warm-up step) per variant, interleaved, in this process."""
    import contextlib

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from worker.gap_dropout import use_gap_dropout
    from worker.training_data import tokenize_example
    from worker.training_loop import completion_nll, skip_adapter_input_casts

    torch.set_num_threads(len(os.sched_getaffinity(0)))  # the bench machine's cores, as ours
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    models: dict[tuple[bool, bool, bool], tuple[Any, Any]] = {}

    def model_for(gap: bool, eager: bool, bf16_base: bool) -> tuple[Any, Any]:
        key = (gap, eager, bf16_base)
        if key not in models:
            torch.manual_seed(0)
            model = get_peft_model(
                AutoModelForCausalLM.from_pretrained(
                    model_dir,
                    dtype=torch.bfloat16 if bf16_base else torch.float32,
                    attn_implementation="eager" if eager else "sdpa",
                ),
                LoraConfig(
                    r=LORA["r"],
                    lora_alpha=LORA["alpha"],
                    lora_dropout=LORA["dropout"],
                    target_modules="all-linear",
                    task_type="CAUSAL_LM",
                ),
            )
            if gap:
                use_gap_dropout(model)
            if bf16_base:
                skip_adapter_input_casts(model)
            model.train()
            params = [p for p in model.parameters() if p.requires_grad]
            models[key] = (model, torch.optim.AdamW(params, lr=lr))
        return models[key]

    pool = examples[: batch * (steps + 1)]  # the same rows for every variant
    plans = []
    for (
        name,
        bf16,
        checkpointing,
        default_system,
        completion_only,
        grouped,
        gap,
        eager,
        bf16_base,
    ) in ABLATIONS:
        if completion_only:
            seqs = [
                tokenize_example(
                    e, tokenizer, max_length=512, inject_empty_system=not default_system
                )
                for e in pool
            ]
            pairs = [(t.input_ids, t.labels) for t in seqs]
        else:
            pairs = []
            for e in pool:
                ids = tokenizer.apply_chat_template(
                    [*e.messages, {"role": "assistant", "content": e.completion}]
                )
                ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
                pairs.append((ids, list(ids)))
        if grouped:
            # What LengthGroupedSampler does within a mega-batch: similar lengths together.
            pairs = sorted(pairs, key=lambda p: len(p[0]))
            batches = [pairs[i : i + batch] for i in range(0, len(pairs), batch)]
            random.Random(0).shuffle(batches)
        else:
            batches = [pairs[i : i + batch] for i in range(0, len(pairs), batch)]
        plans.append(
            {
                "name": name,
                "bf16": bf16,
                "checkpointing": checkpointing,
                "completion_only": completion_only,
                "model": model_for(gap, eager, bf16_base),
                "batches": batches[: steps + 1],
                "seconds": 0.0,
                "samples": 0,
                "tokens": 0,
            }
        )

    def one_step(plan: dict[str, Any], chunk: list[Any], timed: bool) -> None:
        model, optimiser = plan["model"]
        if plan["checkpointing"]:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
            model.enable_input_require_grads()
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), tokenizer.pad_token_id)
        labels = torch.full((len(chunk), width), -100)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for j, (ids, lab) in enumerate(chunk):
            input_ids[j, : len(ids)] = torch.tensor(ids)
            labels[j, : len(lab)] = torch.tensor(lab)
            attention[j, : len(ids)] = 1
        inputs = {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
        start = time.perf_counter()
        bf16 = plan["bf16"]
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            if plan["completion_only"]:
                nll, count, _, _ = completion_nll(model, inputs)
                loss = nll / count.clamp(min=1)
            else:
                loss = model(**inputs, use_cache=False).loss
        loss.backward()
        optimiser.step()
        optimiser.zero_grad()
        if timed:
            plan["seconds"] += time.perf_counter() - start
            plan["samples"] += len(chunk)
            plan["tokens"] += int(attention.sum())
        if plan["checkpointing"]:
            model.gradient_checkpointing_disable()

    # Step i of every variant, then step i + 1: a slow minute on a shared machine slows all
    # variants alike. The first step of each warms up allocators and kernels, untimed.
    for i in range(steps + 1):
        order = plans if i % 2 == 0 else plans[::-1]
        for plan in order:
            if i < len(plan["batches"]):
                one_step(plan, plan["batches"][i], timed=i > 0)
    rows = []
    for plan in plans:
        rows.append(
            {
                "variant": plan["name"],
                "samples_per_s": round(plan["samples"] / plan["seconds"], 3),
                "tokens_per_s": round(plan["tokens"] / plan["seconds"], 1),
                "mean_tokens": round(plan["tokens"] / max(plan["samples"], 1), 1),
            }
        )
        print(f"  {plan['name']:40s} {rows[-1]['samples_per_s']:6.2f} samples/s", flush=True)
    base = rows[0]["samples_per_s"]
    for row in rows:
        row["speedup"] = round(row["samples_per_s"] / base, 2)
    return rows


# ------------------------------------------------------------------ GPU figures
