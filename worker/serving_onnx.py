"""ONNX Runtime as a serving engine (``OnnxBackend``, engine ``onnx``, the CPU default): the
student's int8 graph (worker/serving_onnx_graph.py: built once, smoothed, activations quantised
per token) run with a KV cache.

Why: measured on the distilled BANKING77 student, 2 vCPUs, through the ``openai`` SDK
(bench/serve_latency.py, one session): p50 32.8 ms, p95 55.1 ms, 41.9 requests/s with 8 clients,
0.33 points from the evaluated accuracy; llama.cpp Q8_0 on the same machine and student 65.0 ms,
116.1 ms, 20.3 requests/s.

The task's prompt start (``static_prefix``, set by the serving engine) is evaluated once and kept;
a batch of prompts that begin with it evaluates only their own tokens, padded on the left, in one
pass with a mask; each further pass takes every unfinished prompt's new tokens (the one it
chose, and those a force rule appends). One batch runs at a time (a lock), on every core.
Heavy libraries (onnxruntime, numpy) are imported inside functions.
"""

from __future__ import annotations

import threading
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
    context_limit_of,
    eos_ids_of,
    lockstep,
    log_softmax,
    pick,
)
from worker.serving_onnx_graph import ONNX_FILE, convert_to_serving_onnx, supported_config

BATCH = 8  # prompts per pass (the engine pool hands over every waiting request at once)


class OnnxBackend(BatchBackend):
    def __init__(
        self,
        model_dir: Path,
        cache_dir: Path | None = None,
        *,
        graph: Path | None = None,
        threads: int | None = None,
    ) -> None:
        """``graph``: an ONNX file of ``build_graph``'s inputs and outputs to run (benches);
        else the int8 serving graph, built into ``cache_dir`` once."""
        import numpy as np
        import onnxruntime as ort

        self.np = np
        cfg = supported_config(model_dir)
        if graph is None:
            if cache_dir is None:
                raise ValueError("a cache_dir for the graph, or a graph")
            graph = convert_to_serving_onnx(model_dir, cache_dir)
        self.layers, self.kv_heads = cfg["num_hidden_layers"], cfg["num_key_value_heads"]
        self.dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        self.rep = cfg["num_attention_heads"] // self.kv_heads
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or available_cores()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        self.tokenizer = load_tokenizer(model_dir)
        self.eos_token_ids = eos_ids_of(model_dir, self.tokenizer)
        self.context_limit = context_limit_of(model_dir)
        self.name = "onnxruntime-int8" if graph.name == ONNX_FILE else f"onnxruntime-{graph.stem}"
        self._static: list[int] = []
        self._prefix_cache: list[tuple[Any, Any]] | None = None
        self._lock = threading.Lock()
        self._rng = np.random.default_rng()

    # The task's prompt start (ServedStudent sets it): evaluated once, on first use.
    @property
    def static_prefix(self) -> list[int]:
        return self._static

    @static_prefix.setter
    def static_prefix(self, tokens: Sequence[int]) -> None:
        with self._lock:
            self._static = [int(t) for t in tokens]
            self._prefix_cache = None

    def reset(self) -> None:
        """Forget the evaluated prompt start (the next batch evaluates it again)."""
        with self._lock:
            self._prefix_cache = None

    def _empty(self, n: int) -> list[tuple[Any, Any]]:
        empty = self.np.zeros((n, self.kv_heads, 0, self.dim), self.np.float32)
        return [(empty, empty)] * self.layers

    def _forward(
        self, ids: Any, pos: Any, allowed: Any, cache: list[tuple[Any, Any]], rows: list[int]
    ) -> tuple[Any, list[tuple[Any, Any]]]:
        """One pass: ``ids``/``pos`` [B, T], ``allowed`` [B, T, cached + T] (which cells each
        token attends to), ``rows`` the flat indexes (b * T + t) whose logits come back."""
        np = self.np
        batch, width = ids.shape
        mask = np.where(allowed, 0.0, -1e9).astype(np.float32)
        mask = np.repeat(mask[:, None], self.rep, axis=1).reshape(batch, 1, self.rep * width, -1)
        feed: dict[str, Any] = {
            "input_ids": ids,
            "position_ids": pos,
            "mask": mask,
            "rows": np.asarray(rows, np.int64),
        }
        for i, (k, v) in enumerate(cache):
            feed[f"past_k{i}"], feed[f"past_v{i}"] = k, v
        out = self.session.run(None, feed)
        return out[0], [(out[1 + 2 * i], out[2 + 2 * i]) for i in range(self.layers)]

    def _start_of(self, prompts: Sequence[Sequence[int]]) -> tuple[int, list[tuple[Any, Any]]]:
        """The cached start these prompts share (the static prefix when every one begins with
        it and has a token of its own after it, else nothing) and its cache, for one prompt."""
        np = self.np
        k = len(self._static)
        if not k or any(len(p) <= k or list(p[:k]) != self._static for p in prompts):
            return 0, self._empty(1)
        if self._prefix_cache is None:
            _, self._prefix_cache = self._forward(
                np.array([self._static], np.int64),
                np.arange(k)[None],
                np.tril(np.ones((k, k), bool))[None],
                self._empty(1),
                [k - 1],
            )
        return k, self._prefix_cache

    def _decode(
        self,
        prompts: Sequence[Sequence[int]],
        max_new: int,
        temperature: float,
        stop: StopRule | None,
        force: ForceRule | None,
        offset: int = 0,
    ) -> list[Generated]:
        """One batch: its prompts' own tokens in one pass (padded on the left), then each pass
        the new tokens of every prompt that is not done. ``offset``: the batch's first index
        in the caller's list (what stop and force rules are asked with)."""
        np = self.np
        n = len(prompts)
        start, cache = self._start_of(prompts)
        cache = [(np.repeat(k, n, 0), np.repeat(v, n, 0)) for k, v in cache]
        cells = np.ones((n, start), bool)  # which cached cells each row attends to
        next_pos = [start] * n

        def step(going: list[int], new_tokens: list[list[int]]) -> list[Any]:
            """The going rows' new tokens (first: their prompts' own), padded on the left, in one
            pass over the cache."""
            nonlocal cells, cache
            width = max(map(len, new_tokens))
            ids = np.zeros((n, width), np.int64)
            pos = np.zeros((n, width), np.int64)
            new = np.zeros((n, width), bool)
            for b, mine in zip(going, new_tokens, strict=True):
                ids[b, width - len(mine) :] = mine
                new[b, width - len(mine) :] = True
                pos[b, width - len(mine) :] = np.arange(next_pos[b], next_pos[b] + len(mine))
                next_pos[b] += len(mine)
            allowed = np.concatenate(
                [
                    np.repeat(cells[:, None, :], width, 1),
                    np.tril(np.ones((width, width), bool))[None] & new[:, None, :],
                ],
                -1,
            )
            allowed[:, :, 0] |= ~allowed.any(-1)  # a padding or done row still needs one cell
            logits, cache = self._forward(
                ids, pos, allowed, cache, [b * width + width - 1 for b in going]
            )
            cells = np.concatenate([cells, new], -1)
            return [log_softmax(row.astype(np.float64)) for row in logits]

        return lockstep(
            step(list(range(n)), [list(p[start:]) for p in prompts]),
            step,
            temperature=temperature,
            rng=self._rng,
            eos=self.eos_token_ids,
            max_new=max_new,
            index=lambda b: offset + b,
            stop=stop,
            force=force,
        )

    def _run(
        self,
        prompts: Sequence[Sequence[int]],
        max_new: int,
        temperature: float,
        stop: StopRule | None = None,
        force: ForceRule | None = None,
    ) -> list[Generated]:
        out: list[Generated] = []
        with self._lock:
            for first in range(0, len(prompts), BATCH):
                batch = prompts[first : first + BATCH]
                out += self._decode(batch, max_new, temperature, stop, force, offset=first)
        return out

    # -- the backend's other operations ------------------------------------------------------

    def _scores(self, sequence: Sequence[int], first: int | None = None) -> Any:
        """Log-probabilities (float64) after each of ``sequence``'s tokens from index ``first``
        on (None: after its last token only), in one pass."""
        np = self.np
        start, cache = self._start_of([sequence if first is None else sequence[: first + 1]])
        own = list(sequence[start:])
        width = len(own)
        allowed = np.concatenate(
            [np.ones((1, width, start), bool), np.tril(np.ones((width, width), bool))[None]], -1
        )
        rows = [width - 1] if first is None else list(range(first - start, width))
        logits, _ = self._forward(
            np.array([own], np.int64), np.arange(start, start + width)[None], allowed, cache, rows
        )
        return [log_softmax(row.astype(np.float64)) for row in logits]

    def next_logprobs(
        self, sequences: Sequence[Sequence[int]], wanted: Sequence[int]
    ) -> list[list[float]]:
        with self._lock:
            out = []
            for sequence in sequences:
                row = self._scores(sequence)[0]
                out.append([float(row[t]) for t in wanted])
            return out

    def continuation_logprob(self, prompt: Sequence[int], continuation: Sequence[int]) -> float:
        if not continuation:
            return 0.0
        whole = [*prompt, *continuation]
        with self._lock:
            # one pass: the rows after the prompt's last token and each continuation token but
            # the last
            rows = self._scores(whole[:-1], len(prompt) - 1)
        return float(sum(row[t] for row, t in zip(rows, continuation, strict=True)))

    def stream(
        self, prompt: Sequence[int], max_new_tokens: int, temperature: float = 0.0
    ) -> Iterator[tuple[int, float]]:
        np = self.np
        with self._lock:
            start, cache = self._start_of([prompt])
            own = list(prompt[start:])
            width = len(own)
            allowed = np.concatenate(
                [np.ones((1, width, start), bool), np.tril(np.ones((width, width), bool))[None]],
                -1,
            )
            logits, cache = self._forward(
                np.array([own], np.int64),
                np.arange(start, start + width)[None],
                allowed,
                cache,
                [width - 1],
            )
            position = start + width
            for n in range(max_new_tokens):
                logprobs = log_softmax(logits[0].astype(np.float64))
                token = pick(logprobs, temperature, self._rng)
                yield token, float(logprobs[token])
                if token in self.eos_token_ids or n + 1 == max_new_tokens:
                    return
                logits, cache = self._forward(
                    np.array([[token]], np.int64),
                    np.array([[position]], np.int64),
                    np.ones((1, 1, position + 1), bool),
                    cache,
                    [0],
                )
                position += 1
