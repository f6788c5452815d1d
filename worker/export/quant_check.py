"""The quant check: each GGUF answers the test split in llama.cpp; its task metric stands next
to the unquantised student's (the merged safetensors in transformers, float32).

Both sides get the same prompt tokens (the student's own chat template through its Hugging Face
tokenizer, as in evaluation) and decode greedily to the first end-of-turn token, so the only
difference measured is the weights (and llama.cpp's arithmetic). A quant whose metric is more
than ``margin_points`` below the unquantised student's is marked "do not use".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from worker.export.llama_cpp_tools import greedy_answer, load_gguf
from worker.storable import storable
from worker.taskspec import TaskSpec
from worker.training_data import TrainExample

#: Longest answer generated for json/text tasks (labels: the longest label, in tokens, + 2).
MAX_NEW_TOKENS = {"json": 256, "text": 256}

Progress = Callable[[str, int, int], None]


@dataclass
class QuantScore:
    name: str  # "unquantised" or the quant type (F16, Q8_0, Q4_K_M)
    file: str
    metric: str  # the task's headline metric, e.g. "accuracy"
    value: float  # 0..1
    n: int
    seconds: float
    runtime: str
    delta_points: float = 0.0  # value minus the unquantised student's, in points
    do_not_use: bool = False
    outputs: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.outputs = storable(self.outputs)  # kept in the bundle's JSON: no NUL

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def max_new_tokens(spec: TaskSpec, tokenizer: Any) -> int:
    if spec.output_kind == "label" and spec.label_set:
        longest = max(
            len(tokenizer.encode(label, add_special_tokens=False)) for label in spec.label_set
        )
        return longest + 2
    return MAX_NEW_TOKENS.get(spec.output_kind, 256)


def _score(spec: TaskSpec, outputs: Sequence[str], references: Sequence[str]) -> tuple[str, float]:
    from worker.metrics import evaluate_outputs

    metrics = evaluate_outputs(spec, outputs, references)
    return metrics.headline_name, float(metrics.headline)


def check_quants(
    *,
    spec: TaskSpec,
    examples: Sequence[TrainExample],
    merged_dir: Path,
    ggufs: dict[str, Path],
    margin_points: float,
    threads: int | None = None,
    progress: Progress | None = None,
) -> list[QuantScore]:
    """The unquantised student first, then each GGUF in ``ggufs`` (name → file)."""
    from worker.inference import load_model

    references = [e.completion for e in examples]
    total = len(examples) * (1 + len(ggufs))
    done = 0

    def tick(phase: str) -> None:
        if progress is not None:
            progress(phase, done, total)

    model = load_model(merged_dir, device="cpu", dtype="float32", threads=threads)
    prompts = [model.prompt(e.messages) for e in examples]
    prompt_ids = [model.encode(p) for p in prompts]
    max_new = max_new_tokens(spec, model.tokenizer)
    eos = set(model.eos_token_ids)

    started = time.perf_counter()
    reference_outputs: list[str] = []
    for start in range(0, len(prompts), 8):
        chunk = prompts[start : start + 8]
        reference_outputs += model.generate_sequential(chunk, max_new_tokens=max_new).outputs
        done += len(chunk)
        tick("checking the unquantised student")
    metric, value = _score(spec, reference_outputs, references)
    scores = [
        QuantScore(
            name="unquantised",
            file=merged_dir.name,
            metric=metric,
            value=value,
            n=len(examples),
            seconds=round(time.perf_counter() - started, 3),
            runtime="transformers, float32",
            outputs=reference_outputs,
        )
    ]
    tokenizer = model.tokenizer
    del model
    for name, path in ggufs.items():
        started = time.perf_counter()
        llm = load_gguf(path, threads=threads)
        outputs = []
        for ids in prompt_ids:
            answer = greedy_answer(llm, ids, eos_ids=eos, max_new=max_new)
            outputs.append(str(tokenizer.decode(answer, skip_special_tokens=True)).strip())
            done += 1
            if done % 8 == 0:
                tick(f"checking {name}")
        if hasattr(llm, "close"):
            llm.close()
        metric, quant_value = _score(spec, outputs, references)
        delta = round((quant_value - value) * 100, 2)
        scores.append(
            QuantScore(
                name=name,
                file=path.name,
                metric=metric,
                value=quant_value,
                n=len(examples),
                seconds=round(time.perf_counter() - started, 3),
                runtime="llama.cpp (llama-cpp-python), CPU",
                delta_points=delta,
                do_not_use=delta < -margin_points,
                outputs=outputs,
            )
        )
    return scores
