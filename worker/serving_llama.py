"""llama.cpp as a serving engine (``LlamaCppBackend``): the student converted once to a GGUF
(Q8_0 unless DISTILLERY_SERVE_GGUF names another format) with llama.cpp's own converter and
quantiser (worker.export.llama_cpp_tools, the same tools the export bundle uses), run through
llama.cpp's batch API (llama-cpp-python's low-level binding) with the KV cache under our control.

Why, on CPU: a request pays for its own tokens only. The model state after the prompt's shared
start (and after any longer shared beginning) stays in the KV cache; the request's own tokens are
evaluated in one pass that also gives the first answer token; each further token is one step.
CTranslate2's generate needs one pass more (its last prompt token goes through the decoding loop)
and its int8 steps are slower here. Q8_0 (8-bit blocks of 32 with their own scale) stays close to
the evaluated student; the quant check of the export bundle measures the same format.

Concurrent requests share the passes: the engine pool hands over every waiting request at once,
and they run on up to ``SEQUENCES`` sequences of one unified cache — one pass evaluates all their
own tokens, then each pass the new tokens of each unfinished answer: the one it chose, and any
a force rule appends (a label token that is the only way on needs no pass of its own; 8 BANKING77
requests measured ~15 % less engine time each with them). A decoding step reads the weights
once for all of them (measured, SmolLM2-135M Q8_0 on 2 EPYC cores: one step 6.9 ms alone, 28.6 ms
for 8 = 3.6 ms each; 19-token prompts 38.6 ms alone, 30.2 ms each for 8). One batch runs at a time
(a lock) on every core. llama.cpp multiplies a pass of many tokens with other kernels than a pass
of few, which round differently: an answer whose two best choices are nearly tied can depend on
what it was batched with (measured on the served BANKING77 student: first-token
log-probabilities within 0.1 of one-at-a-time; 1 of 300 labels differed with 8 concurrent clients).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import weakref
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
    built_once,
    context_limit_of,
    eos_ids_of,
    lockstep,
    log_softmax,
    pick,
)

# The weights' format (DISTILLERY_SERVE_GGUF): Q8_0 by default — it answered the evaluated
# student's labels (bench/serve_latency.py); the others trade fidelity or speed, measure first.
GGUF_TYPES = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "BF16", "F16")
DEFAULT_GGUF_TYPE = "Q8_0"
MAX_CONTEXT = 8192
# Prompts evaluated together (the engine pool batches up to this many waiting requests per pass)
# and the tokens one pass takes.
SEQUENCES = 8
N_BATCH = 512


def llama_cpp_available() -> bool:
    try:
        import llama_cpp  # noqa: F401

        from worker.export.llama_cpp_tools import converter_script

        converter_script()
    except Exception:
        return False
    return True


def gguf_type(chosen: str | None = None) -> str:
    """The serving weights' format: ``chosen``, else DISTILLERY_SERVE_GGUF, else Q8_0."""
    value = (chosen or os.environ.get("DISTILLERY_SERVE_GGUF", "") or DEFAULT_GGUF_TYPE).upper()
    if value not in GGUF_TYPES:
        raise ValueError(
            f"DISTILLERY_SERVE_GGUF must be one of {', '.join(GGUF_TYPES)}, not {value!r}"
        )
    return value


def gguf_file(quant: str) -> str:
    return f"student-{quant.lower()}.gguf"


def gguf_mark(quant: str) -> str:
    """The file beside the GGUF that names the model folder it was converted from."""
    return f"{gguf_file(quant)}.source.txt"


def convert_to_serving_gguf(
    model_dir: Path, cache_dir: Path, quant: str = DEFAULT_GGUF_TYPE
) -> Path:
    """The merged student as a GGUF in ``quant``, converted once (the mark file records the
    source folder, so a re-trained student converts anew); a half-written file is never loaded."""
    from worker.export.llama_cpp_tools import convert_to_gguf, quantize

    name = gguf_file(quant)

    def build(work: Path) -> None:
        if quant in ("BF16", "F16"):
            convert_to_gguf(model_dir, work / name, outtype=quant.lower())
        else:
            quantize(convert_to_gguf(model_dir, work / "student-f16.gguf"), work / name, quant)

    return built_once(model_dir, cache_dir, name, build)


class _Context:
    """One llama.cpp context with ``seqs`` sequences over one unified KV cache, driven through
    llama.cpp's batch API: a batch of prompts is evaluated in one pass per step (every prompt's
    own tokens together, then one token per unfinished prompt), and every sequence keeps the
    tokens its cache holds so the next prompt on it evaluates only what differs."""

    def __init__(self, path: Path, *, n_ctx: int, seqs: int, threads: int) -> None:
        import llama_cpp

        self.L = llama_cpp
        # llama-cpp-python prints llama.cpp's log lines at or above its logger's level (as
        # Llama(verbose=False) does: errors only, unless the operator set the level).
        quiet = logging.getLogger("llama-cpp-python")
        if quiet.level == logging.NOTSET:
            quiet.setLevel(logging.ERROR)
        llama_cpp.llama_backend_init()
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = 0
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), model_params)
        if not model:
            raise RuntimeError(f"llama.cpp could not load {path}")
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = params.n_ubatch = N_BATCH
        params.n_seq_max = seqs
        params.n_threads = params.n_threads_batch = threads
        params.kv_unified = True  # one cache for all sequences: a shared start is stored once
        ctx = llama_cpp.llama_init_from_model(model, params)
        if not ctx:
            llama_cpp.llama_model_free(model)
            raise RuntimeError(f"llama.cpp could not create a context for {path}")
        batch = llama_cpp.llama_batch_init(N_BATCH, 0, 1)
        self.model, self.ctx, self.batch = model, ctx, batch
        self.memory = llama_cpp.llama_get_memory(ctx)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model)))
        self.n_ctx = n_ctx
        self.seqs = seqs
        self.held: list[list[int]] = [[] for _ in range(seqs)]  # what each sequence's cache holds
        self.passes = 0  # llama_decode calls so far: the engine's work, as benches and tests see it
        self._free = weakref.finalize(self, _free_context, llama_cpp, model, ctx, batch)

    def _make_room(self, need: int) -> None:
        """Empty the cache when ``need`` more tokens might not fit beside what it holds (the
        sum over sequences over-counts a shared start, so this errs towards clearing)."""
        if need + sum(len(h) for h in self.held) > self.n_ctx:
            self.clear()

    def clear(self) -> None:
        self.L.llama_memory_clear(self.memory, True)
        self.held = [[] for _ in range(self.seqs)]

    def _plan(self, prompts: Sequence[Sequence[int]]) -> list[int]:
        """A sequence for each prompt (``len(prompts) <= seqs``): the free sequence whose cache
        shares the longest beginning with it; a sequence that shares less than another one
        copies that one's beginning first (cells are shared, not duplicated). Leaves each
        sequence's cache trimmed to what its prompt reuses; returns each prompt's sequence."""
        held = self.held
        assigned: list[int] = []
        for prompt in prompts:
            limit = len(prompt) - 1  # at least the last token is evaluated: its logits
            free = [s for s in range(self.seqs) if s not in assigned]
            seq = max(free, key=lambda s: (_common(held[s], prompt, limit), -s))
            assigned.append(seq)
        reused = [_common(held[s], p, len(p) - 1) for s, p in zip(assigned, prompts, strict=True)]
        # Copies read the caches as they are, so they come before any trimming; a sequence that
        # is copied from is not itself replaced.
        copies = []
        for i, prompt in enumerate(prompts):
            src = max(range(self.seqs), key=lambda s: _common(held[s], prompt, len(prompt) - 1))
            best = _common(held[src], prompt, len(prompt) - 1)
            if best > reused[i]:
                copies.append((i, src, best))
        sources = {src for _, src, _ in copies}
        for i, src, best in copies:
            seq = assigned[i]
            if seq in sources:
                continue
            self.L.llama_memory_seq_rm(self.memory, seq, -1, -1)
            self.L.llama_memory_seq_cp(self.memory, src, seq, 0, best)
            held[seq] = list(prompts[i][:best])
            reused[i] = best
        for i, seq in enumerate(assigned):
            self.L.llama_memory_seq_rm(self.memory, seq, reused[i], -1)
            held[seq] = held[seq][: reused[i]]
        return assigned

    def evaluate(self, items: Sequence[tuple[int, Sequence[int]]]) -> list[Any]:
        """Append each (sequence, tokens) to its cache in as few passes as fit the batch; returns,
        per item, the next-token log-probabilities after its last token (float64)."""
        L, batch = self.L, self.batch
        out: list[Any] = [None] * len(items)
        rows: list[tuple[int, int]] = []  # (item, row in the current pass) with logits
        n = 0

        def run() -> None:
            nonlocal n, rows
            batch.n_tokens = n
            self.passes += 1
            status = L.llama_decode(self.ctx, batch)
            if status != 0:
                self.clear()  # the cache is in an unknown state: start from nothing next time
                raise RuntimeError(f"llama.cpp decode failed ({status})")
            for item, row in rows:
                out[item] = self._logprobs(row)
            n, rows = 0, []

        for item, (seq, tokens) in enumerate(items):
            start = len(self.held[seq])
            for i, token in enumerate(tokens):
                if n == N_BATCH:
                    run()
                batch.token[n] = token
                batch.pos[n] = start + i
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = seq
                last = i == len(tokens) - 1
                batch.logits[n] = last
                if last:
                    rows.append((item, n))
                n += 1
            self.held[seq].extend(tokens)
        if n:
            run()
        return out

    def _logprobs(self, row: int) -> Any:
        import numpy as np

        pointer = self.L.llama_get_logits_ith(self.ctx, row)
        return log_softmax(np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).astype(np.float64))

    def start(
        self, prompts: Sequence[Sequence[int]], new_tokens: int = 0
    ) -> tuple[list[int], list[Any]]:
        """Evaluate the prompts (each on its own sequence, reusing what the caches hold), with
        room left for ``new_tokens`` more per prompt: their sequences and next-token
        log-probabilities."""
        self._make_room(sum(len(p) + new_tokens for p in prompts))
        seqs = self._plan(prompts)
        items = [(s, list(p[len(self.held[s]) :])) for s, p in zip(seqs, prompts, strict=True)]
        return seqs, self.evaluate(items)


def _common(held: Sequence[int], prompt: Sequence[int], limit: int) -> int:
    n = 0
    limit = min(limit, len(held))
    while n < limit and held[n] == prompt[n]:
        n += 1
    return n


def _free_context(llama_cpp: Any, model: Any, ctx: Any, batch: Any) -> None:
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)


class LlamaCppBackend(BatchBackend):
    def __init__(
        self,
        model_dir: Path,
        cache_dir: Path,
        *,
        threads: int | None = None,
        sequences: int = SEQUENCES,
        quant: str | None = None,
    ) -> None:
        import numpy as np

        self.np = np
        self.quant = gguf_type(quant)
        self.name = f"llama.cpp-{self.quant.lower()}"
        self.tokenizer = load_tokenizer(model_dir)
        self.eos_token_ids = eos_ids_of(model_dir, self.tokenizer)
        self.path = convert_to_serving_gguf(model_dir, cache_dir, self.quant)
        # The KV cache is sized for the whole context up front: capped (CPU memory).
        self.context_limit = min(context_limit_of(model_dir), MAX_CONTEXT)
        self.context = _Context(
            self.path,
            n_ctx=self.context_limit,
            seqs=max(1, sequences),
            threads=threads or available_cores(),
        )
        self.n_vocab = self.context.n_vocab
        self._lock = threading.Lock()
        self._rng = np.random.default_rng()

    def reset(self) -> None:
        """Forget every cached prompt (the next request evaluates all its tokens)."""
        with self._lock:
            self.context.clear()

    def _groups(self, prompts: Sequence[Sequence[int]], max_new: int) -> Iterator[list[int]]:
        """The prompts' indexes in groups that run together: at most one per sequence, and
        their tokens within the cache (a group that would not fit with what other sequences
        hold starts from an empty cache)."""
        group: list[int] = []
        need = 0
        for i, prompt in enumerate(prompts):
            size = len(prompt) + max_new
            if group and (len(group) == self.context.seqs or need + size > self.context.n_ctx):
                yield group
                group, need = [], 0
            group.append(i)
            need += size
        if group:
            yield group

    def _run(
        self,
        prompts: Sequence[Sequence[int]],
        max_new: int,
        temperature: float,
        stop: StopRule | None = None,
        force: ForceRule | None = None,
    ) -> list[Generated]:
        """Decode the prompts in lockstep: one pass evaluates every prompt's own tokens, then
        each pass the new tokens of every prompt that is not done — the one it chose, and
        those ``force`` says must follow it (no choice to make, so no pass of their own)."""
        out: list[Generated | None] = [None] * len(prompts)
        with self._lock:
            for group in self._groups(prompts, max_new):
                seqs, first = self.context.start([prompts[i] for i in group], max_new)
                results = lockstep(
                    first,
                    functools.partial(self._step, seqs),
                    temperature=temperature,
                    rng=self._rng,
                    eos=self.eos_token_ids,
                    max_new=max_new,
                    index=group.__getitem__,
                    stop=stop,
                    force=force,
                )
                for i, generated in zip(group, results, strict=True):
                    out[i] = generated
        return [g for g in out if g is not None]

    def _step(self, seqs: list[int], going: list[int], new: list[list[int]]) -> list[Any]:
        """One pass: each going prompt's new tokens appended to its sequence."""
        return self.context.evaluate([(seqs[k], t) for k, t in zip(going, new, strict=True)])

    # -- the backend's other operations ------------------------------------------------------

    def next_logprobs(
        self, sequences: Sequence[Sequence[int]], wanted: Sequence[int]
    ) -> list[list[float]]:
        out: list[list[float]] = []
        with self._lock:
            for group in self._groups(sequences, 0):
                batch = [sequences[i] for i in group]
                _, logprobs = self.context.start(batch)
                out.extend([float(lp[t]) for t in wanted] for lp in logprobs)
        return out

    def continuation_logprob(self, prompt: Sequence[int], continuation: Sequence[int]) -> float:
        total = 0.0
        with self._lock:
            (seq,), (logprobs,) = self.context.start([prompt], len(continuation))
            for i, token in enumerate(continuation):
                total += float(logprobs[token])
                if i + 1 < len(continuation):
                    (logprobs,) = self.context.evaluate([(seq, [token])])
        return total

    def stream(
        self, prompt: Sequence[int], max_new_tokens: int, temperature: float = 0.0
    ) -> Iterator[tuple[int, float]]:
        with self._lock:
            (seq,), (logprobs,) = self.context.start([prompt], max_new_tokens)
            for n in range(max_new_tokens):
                token = pick(logprobs, temperature, self._rng)
                yield token, float(logprobs[token])
                if token in self.eos_token_ids or n + 1 == max_new_tokens:
                    return
                (logprobs,) = self.context.evaluate([(seq, [token])])
