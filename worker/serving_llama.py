"""llama.cpp as a serving engine (``LlamaCppBackend``): the student converted once to a Q8_0 GGUF
with llama.cpp's own converter and quantiser (worker.export.llama_cpp_tools, the same tools the
export bundle uses), run by llama-cpp-python's runtime with the KV cache under our control.

Why, on CPU: a request pays for its own tokens only. The model state after the prompt's shared
start (and after any longer shared beginning) stays in the KV cache; the request's own tokens are
evaluated in one pass that also gives the first answer token; each further token is one step.
CTranslate2's generate needs one pass more (its last prompt token goes through the decoding loop)
and its int8 steps are slower here. Q8_0 (8-bit blocks of 32 with their own scale) stays close to
the evaluated student; the quant check of the export bundle measures the same format.

One llama.cpp context serves one request at a time (a lock); it uses every core for it.
"""

from __future__ import annotations

import functools
import math
import shutil
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from worker.inference_hardware import available_cores
from worker.model_loading import load_tokenizer
from worker.serving_backends import Generated, StopRule, collect, context_limit_of, eos_ids_of

GGUF_FILE = "student-q8_0.gguf"
MAX_CONTEXT = 8192
GGUF_MARK = "distillery_gguf_source.txt"


def llama_cpp_available() -> bool:
    try:
        import llama_cpp  # noqa: F401

        from worker.export.llama_cpp_tools import converter_script

        converter_script()
    except Exception:
        return False
    return True


def convert_to_q8_gguf(model_dir: Path, cache_dir: Path) -> Path:
    """The merged student as a Q8_0 GGUF, converted once (the mark file records the source
    folder, so a re-trained student converts anew); a half-written file is never loaded."""
    from worker.export.llama_cpp_tools import convert_to_gguf, quantize

    out = cache_dir / GGUF_FILE
    mark = cache_dir / GGUF_MARK
    source = str(model_dir.resolve())
    if out.is_file() and mark.is_file() and mark.read_text(encoding="utf-8") == source:
        return out
    work = cache_dir / "gguf.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        f16 = convert_to_gguf(model_dir, work / "student-f16.gguf")
        quantize(f16, work / GGUF_FILE, "Q8_0")
        (work / GGUF_FILE).replace(out)
        mark.write_text(source, encoding="utf-8")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


class LlamaCppBackend:
    name = "llama.cpp-q8_0"

    def __init__(self, model_dir: Path, cache_dir: Path, *, threads: int | None = None) -> None:
        import llama_cpp
        import numpy as np

        self.np = np
        self.llama_cpp = llama_cpp
        self.tokenizer = load_tokenizer(model_dir)
        self.eos_token_ids = eos_ids_of(model_dir, self.tokenizer)
        self.path = convert_to_q8_gguf(model_dir, cache_dir)
        cores = threads or available_cores()
        # The KV cache is sized for the whole context up front: capped (CPU memory).
        self.context_limit = min(context_limit_of(model_dir), MAX_CONTEXT)
        self.llm = llama_cpp.Llama(
            model_path=str(self.path),
            n_ctx=self.context_limit,
            n_batch=512,
            n_threads=cores,
            n_threads_batch=cores,
            n_gpu_layers=0,
            logits_all=False,
            verbose=False,
        )
        self.n_vocab = int(self.llm.n_vocab())
        self._lock = threading.Lock()
        self._rng = np.random.default_rng()

    # -- the KV cache ----------------------------------------------------------------------------

    def _start(self, prompt: Sequence[int]) -> None:
        """Evaluate ``prompt``, reusing what the KV cache already holds of its beginning (the
        previous request's prompt: every prompt of the task starts the same, so from the second
        request on that shared start is never evaluated again); at least its last token is
        evaluated, so the logits are the prompt's next-token logits."""
        llm = self.llm
        limit = min(llm.n_tokens, len(prompt) - 1)
        common = 0
        while common < limit and int(llm.input_ids[common]) == prompt[common]:
            common += 1
        llm.n_tokens = common
        llm.eval(list(prompt[common:]))  # eval drops the cache beyond n_tokens first

    def _step(self, token: int) -> None:
        self.llm.eval([token])

    def _logprobs(self) -> Any:
        np = self.np
        pointer = self.llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        logits = np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).astype(np.float64)
        top = logits.max()
        return logits - (top + math.log(float(np.exp(logits - top).sum())))

    def _pick(self, logprobs: Any, temperature: float) -> int:
        if temperature <= 0:
            return int(logprobs.argmax())
        np = self.np
        weights = np.exp((logprobs - logprobs.max()) / temperature)
        return int(self._rng.choice(self.n_vocab, p=weights / weights.sum()))

    def _decode(
        self, prompt: Sequence[int], max_new: int, temperature: float
    ) -> Iterator[tuple[int, float]]:
        self._start(prompt)
        for n in range(max_new):
            logprobs = self._logprobs()
            token = self._pick(logprobs, temperature)
            yield token, float(logprobs[token])
            if token in self.eos_token_ids or n + 1 == max_new:
                return
            self._step(token)

    def _collect(
        self, prompt: Sequence[int], max_new: int, temperature: float, index: int, stop: Any
    ) -> Generated:
        rule = None if stop is None else functools.partial(stop, index)
        return collect(self._decode(prompt, max_new, temperature), self.eos_token_ids, rule)

    # -- the backend's operations ------------------------------------------------------------

    def greedy(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        stop: StopRule | None = None,
    ) -> list[Generated]:
        with self._lock:
            return [self._collect(p, max_new_tokens, 0.0, i, stop) for i, p in enumerate(prompts)]

    def sample(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, temperature: float
    ) -> list[Generated]:
        with self._lock:
            return [
                self._collect(p, max_new_tokens, temperature, i, None)
                for i, p in enumerate(prompts)
            ]

    def next_logprobs(
        self, sequences: Sequence[Sequence[int]], wanted: Sequence[int]
    ) -> list[list[float]]:
        out = []
        with self._lock:
            for seq in sequences:
                self._start(seq)
                logprobs = self._logprobs()
                out.append([float(logprobs[t]) for t in wanted])
        return out

    def continuation_logprob(self, prompt: Sequence[int], continuation: Sequence[int]) -> float:
        total = 0.0
        with self._lock:
            self._start(prompt)
            for i, token in enumerate(continuation):
                total += float(self._logprobs()[token])
                if i + 1 < len(continuation):
                    self._step(token)
        return total

    def stream(
        self, prompt: Sequence[int], max_new_tokens: int, temperature: float = 0.0
    ) -> Iterator[tuple[int, float]]:
        with self._lock:
            yield from self._decode(prompt, max_new_tokens, temperature)
