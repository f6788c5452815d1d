"""Local students (worker.inference): label tasks by the label trie with free-greedy proof, other
kinds by length-sorted left-padded batches; single-request latency measured separately; the
hardware recorded."""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from evaluations.answers import Progress, store_answers
from evaluations.choices import DEFAULT_MAX_NEW_TOKENS, EvalOptions
from evaluations.models import EvalCandidate, EvalExample
from jobs import services as job_services
from worker.taskspec import TaskSpec

if TYPE_CHECKING:
    from worker.inference import EvalModel, Generation

    Prompt = list[dict[str, str]]

# Rows per inference call between progress reports (and cancel checks).
CHUNK = 64


def _label_token_depth(tokenizer: Any, labels: Sequence[str]) -> int:
    return max(len(tokenizer(label, add_special_tokens=False)["input_ids"]) for label in labels)


@dataclass
class _Batched:
    """The answers of the batched pass, with what throughput is computed from."""

    answers: list[str] = field(default_factory=list)
    # label tasks: P(answer, then end of turn) under the student (the serving engine's confidence)
    confidences: list[float | None] = field(default_factory=list)
    seconds: float = 0.0
    fallbacks: int = 0
    reruns: int = 0


def run_local(
    candidate: EvalCandidate,
    examples: list[EvalExample],
    spec: TaskSpec,
    options: EvalOptions,
    progress: Progress,
) -> None:
    from jobs.storage import data_path
    from worker.inference import load_model

    loaded = time.perf_counter()
    model = load_model(data_path(candidate.model_path))
    load_s = time.perf_counter() - loaded
    try:
        prompts = [model.prompt(e.messages) for e in examples]
        if spec.output_kind == "label":
            max_new = (
                options.max_new_tokens or _label_token_depth(model.tokenizer, spec.label_set) + 4
            )
            how = "label trie, free greedy verified (generation where it could not be proved)"
        else:
            max_new = options.max_new_tokens or DEFAULT_MAX_NEW_TOKENS[spec.output_kind]
            how = "greedy generation, length-sorted left-padded batches"
        batched = _answer_batched(model, prompts, spec, options, max_new, candidate, progress)
        latencies, latency = _measure_latency(model, prompts, batched.answers, options, max_new)
        if latency:
            job_services.job_progress(job=progress.job, figures={"phase": "latency measured"})
        store_answers(
            candidate,
            examples,
            spec,
            batched.answers,
            latencies_ms=latencies,
            confidences=batched.confidences or None,
        )
        performance = {
            "throughput": {
                "examples_per_s": (
                    len(batched.answers) / batched.seconds if batched.seconds > 0 else 0.0
                ),
                "n": len(batched.answers),
                "seconds": batched.seconds,
                "batch_size": options.batch_size,
                "how": how,
                "fallbacks": batched.fallbacks,
                "reruns": batched.reruns,
            },
            "latency": latency,
            "hardware": {**asdict(model.hardware), "description": model.hardware.describe()},
            "load_s": load_s,
            "max_new_tokens": max_new,
            "prompt": {
                "label_list": model.label_list_in_prompt,
                "mean_tokens": (
                    sum(len(model.encode(p)) for p in prompts) / len(prompts) if prompts else 0.0
                ),
            },
        }
        EvalCandidate.objects.filter(pk=candidate.pk).update(performance=performance)
    finally:
        _release(model)


def _answer_batched(
    model: EvalModel,
    prompts: list[Prompt],
    spec: TaskSpec,
    options: EvalOptions,
    max_new: int,
    candidate: EvalCandidate,
    progress: Progress,
) -> _Batched:
    """Every prompt answered in batches, CHUNK rows per call between progress reports."""
    batched = _Batched()
    for start in range(0, len(prompts), CHUNK):
        chunk = prompts[start : start + CHUNK]
        out: Generation
        if spec.output_kind == "label":
            classified = model.classify(
                chunk,
                spec.label_set,
                constrained=False,
                max_new_tokens=max_new,
                batch_size=options.batch_size,
            )
            batched.fallbacks += classified.fallbacks
            batched.confidences.extend(math.exp(lp) for lp in classified.logprobs)
            out = classified
        else:
            out = model.generate_batched(
                chunk, max_new_tokens=max_new, batch_size=options.batch_size
            )
        batched.reruns += out.reruns
        batched.answers.extend(out.outputs)
        batched.seconds += out.seconds
        progress.add(len(chunk), phase=f"{candidate.name}: {len(batched.answers)} answered")
    return batched


def _measure_latency(
    model: EvalModel,
    prompts: list[Prompt],
    answers: list[str],
    options: EvalOptions,
    max_new: int,
) -> tuple[list[float | None], dict[str, Any]]:
    """Single requests, one at a time, on the first ``latency_requests`` prompts: each row's
    latency (ms, None where not measured) and the percentiles."""
    from worker.inference import latency_percentiles

    latencies: list[float | None] = [None] * len(prompts)
    k = min(options.latency_requests, len(prompts))
    if not k:
        return latencies, {}
    single = model.generate_sequential(prompts[:k], max_new_tokens=max_new)
    for i, seconds_i in enumerate(single.latencies):
        latencies[i] = seconds_i * 1000
    latency = {
        **latency_percentiles(single.latencies),
        "n": k,
        "how": "single requests, one at a time (model.generate, greedy)",
        "same_answers": sum(1 for a, b in zip(single.outputs, answers[:k], strict=True) if a == b),
    }
    return latencies, latency


def _release(model: EvalModel) -> None:
    """Free the model's memory before the next candidate loads (the GPU's too)."""
    device = model.device
    del model
    gc.collect()
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
