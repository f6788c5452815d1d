"""CTranslate2 as a serving engine (``CT2Backend``): int8 weights on CPU (PyPI wheels, no
compiler). The student is converted once into ``<cache>/ct2-int8`` and loaded from there
afterwards. Chosen automatically where llama.cpp is not installed or cannot convert the model
(bench/serve_latency.py --engine ct2 measures it). Heavy libraries are imported inside functions.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from worker.inference_hardware import available_cores
from worker.model_loading import load_tokenizer
from worker.serving_backends import (
    BatchBackend,
    ForceRule,
    Generated,
    StopRule,
    engine_workers,
    eos_ids_of,
    finished,
    log_softmax,
)

CT2_DIR = "ct2-int8"
CT2_MARK = "distillery_ct2_source.txt"


def ct2_available() -> bool:
    try:
        import ctranslate2  # noqa: F401
    except ImportError:
        return False
    return True


def convert_to_ct2(model_dir: Path, cache_dir: Path) -> Path:
    """Convert the merged student to CTranslate2 int8 once; later calls reuse the folder (the
    mark file records which model folder it came from, so a re-trained student converts anew)."""
    from ctranslate2.converters import TransformersConverter

    out = cache_dir / CT2_DIR
    source = str(model_dir.resolve())
    mark = out / CT2_MARK
    if mark.is_file() and mark.read_text(encoding="utf-8") == source:
        return out
    tmp = cache_dir / (CT2_DIR + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    TransformersConverter(source, low_cpu_mem_usage=True).convert(
        str(tmp), quantization="int8", force=True
    )
    (tmp / CT2_MARK).write_text(source, encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # a half-written conversion is never loaded
    return out


def ct2_threads() -> int:
    """Threads for one CTranslate2 request: DISTILLERY_SERVE_THREADS, else 1 on a machine with
    two cores or fewer, else every core. Measured on 2 vCPUs (SmolLM2-135M int8, one 45-token
    label prompt, bench/serve_latency.py's student): 1 thread 80 ms, 2 threads 217 ms."""
    chosen = os.environ.get("DISTILLERY_SERVE_THREADS", "").strip()
    if chosen:
        return max(1, int(chosen))
    cores = available_cores()
    return 1 if cores <= 2 else cores


class CT2Backend(BatchBackend):
    name = "ctranslate2-int8"

    def __init__(self, model_dir: Path, cache_dir: Path, *, threads: int | None = None) -> None:
        import ctranslate2

        self.tokenizer = load_tokenizer(model_dir)
        self.eos_token_ids = eos_ids_of(model_dir, self.tokenizer)
        self.path = convert_to_ct2(model_dir, cache_dir)
        self.generator = ctranslate2.Generator(
            str(self.path),
            device="cpu",
            compute_type="int8",
            intra_threads=threads or ct2_threads(),
            inter_threads=engine_workers("ct2"),
        )
        self._end = [self.tokenizer.convert_ids_to_tokens(e) for e in self.eos_token_ids]
        # The tokens every prompt of the task starts with (chat template + instruction up to the
        # input), set by the engine: the model's state after them is computed once and reused
        # (CTranslate2's static prompt), so a request pays only for its own tokens.
        self.static_prefix: list[int] = []

    def _tokens(self, ids: Sequence[int]) -> list[str]:
        return list(self.tokenizer.convert_ids_to_tokens(list(ids)))

    def _inputs(self, prompts: Sequence[Sequence[int]]) -> tuple[list[list[str]], dict[str, Any]]:
        """The prompts as CTranslate2 takes them: after the cached static prefix when every one
        starts with it (token for token, so the answer is the same), else whole."""
        k = len(self.static_prefix)
        if k and all(len(p) > k and list(p[:k]) == self.static_prefix for p in prompts):
            static = self._tokens(self.static_prefix)
            return [self._tokens(p[k:]) for p in prompts], {"static_prompt": static}
        return [self._tokens(p) for p in prompts], {}

    def _run(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        temperature: float,
        stop: StopRule | None = None,
        force: ForceRule | None = None,  # not applied: generate_batch chooses every token
    ) -> list[Generated]:
        inputs, options = self._inputs(prompts)
        if stop is not None:
            so_far: list[list[int]] = [[] for _ in prompts]

            def callback(step: Any) -> bool:
                tokens = so_far[step.batch_id]
                tokens.append(int(step.token_id))
                return bool(stop(step.batch_id, tokens))

            options["callback"] = callback
        results = self.generator.generate_batch(
            inputs,
            **options,
            max_length=max_new_tokens,
            sampling_topk=1 if temperature <= 0 else 0,
            sampling_temperature=max(temperature, 1e-6),
            beam_size=1,
            include_prompt_in_result=False,
            end_token=self._end,
            return_end_token=True,
            return_scores=True,
            length_penalty=0.0,  # the score is then the plain sum of log-probabilities
        )
        out = []
        for r in results:
            ids = [int(i) for i in r.sequences_ids[0]]
            # The score is the sequence's summed log-probability (end token included): kept as
            # a total on the last token (the engine reads .logprob).
            total = float(r.scores[0]) if r.scores else 0.0
            logprobs = [0.0] * len(ids)
            if logprobs:
                logprobs[-1] = total
            out.append(finished(ids, logprobs, self.eos_token_ids))
        return out

    def next_logprobs(
        self, sequences: Sequence[Sequence[int]], wanted: Sequence[int]
    ) -> list[list[float]]:
        import numpy as np

        out = []
        for seq in sequences:  # the rare path (constrained fallback): one at a time
            logits = np.asarray(self.generator.forward_batch([list(seq)]), dtype=np.float32)
            norm = log_softmax(logits[0, -1])
            out.append([float(norm[t]) for t in wanted])
        return out

    def continuation_logprob(self, prompt: Sequence[int], continuation: Sequence[int]) -> float:
        # score_batch gives each token's log-probability given the ones before it.
        result = self.generator.score_batch([self._tokens(list(prompt) + list(continuation))])[0]
        return float(sum(result.log_probs[-len(continuation) :]))

    def stream(
        self, prompt: Sequence[int], max_new_tokens: int, temperature: float = 0.0
    ) -> Iterator[tuple[int, float]]:
        for step in self.generator.generate_tokens(
            self._tokens(prompt),
            max_length=max_new_tokens,
            sampling_topk=1 if temperature <= 0 else 0,
            sampling_temperature=max(temperature, 1e-6),
            end_token=self._end,
            return_log_prob=True,
        ):
            yield int(step.token_id), float(step.log_prob or 0.0)
            if step.token_id in self.eos_token_ids:
                return
