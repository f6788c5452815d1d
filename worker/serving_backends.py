"""Inference backends for the serving process: the same token-level operations on every engine,
so the answering logic (worker.serving_engine) is written once. Here: the Backend protocol, what
the engines share (decoding a batch in lockstep, converting a student once), the engine choice,
and two engines; the others have their own modules — llama.cpp (worker.serving_llama), ONNX
Runtime (worker.serving_onnx), CTranslate2 (worker.serving_ct2).

- ``TransformersBackend``: plain PyTorch + transformers, a hand-written greedy loop over the KV
  cache (so log-probabilities come for free). The fallback when ctranslate2 is not installed.
- ``VLLMBackend``: on a CUDA machine with vllm installed (not exercised on CPU machines).

Every backend answers: ``greedy`` (a batch of prompts, greedy, with each chosen token's
log-probability), ``next_logprobs`` (log-probabilities of given tokens after given sequences, for
the label-constrained fallback), ``stream`` (one prompt, token by token, greedy or sampled) and
``sample`` (a batch, sampled, for JSON retries). Heavy libraries are imported inside functions.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from worker.inference_hardware import available_cores
from worker.model_loading import load_causal_lm, load_tokenizer

log = logging.getLogger(__name__)

# Asked after each greedy token with (the prompt's index in the batch, its tokens so far): True
# ends that prompt's decoding there (the token stays in the result). Label answers stop as soon
# as the label is decided, instead of generating its remaining tokens.
StopRule = Callable[[int, Sequence[int]], bool]
# Asked after each chosen token, with the same arguments: the tokens that must follow it (the
# only way on, e.g. the one label continuation left). An engine that can appends them without
# a pass of their own (they are evaluated with the next chosen token's pass) and gives them no
# log-probability (nan); one that cannot ignores the rule: its answer is the same where a rule
# forces only what the caller would accept anyway (the caller checks what came out).
ForceRule = Callable[[int, Sequence[int]], Sequence[int]]


@dataclass(frozen=True)
class Generated:
    tokens: list[int]  # generated ids, the end token excluded
    # one per generated id (nan for one a ForceRule appended), plus the end token's if it ended
    logprobs: list[float]
    ended: bool  # stopped on an end token (else: the token budget ran out)

    @property
    def logprob(self) -> float:
        return float(sum(self.logprobs))


class Backend(Protocol):
    name: str
    eos_token_ids: tuple[int, ...]

    def greedy(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        stop: StopRule | None = None,
        force: ForceRule | None = None,
    ) -> list[Generated]: ...

    def next_logprobs(
        self, sequences: Sequence[Sequence[int]], wanted: Sequence[int]
    ) -> list[list[float]]: ...

    def stream(
        self, prompt: Sequence[int], max_new_tokens: int, temperature: float = 0.0
    ) -> Iterator[tuple[int, float]]: ...

    def continuation_logprob(self, prompt: Sequence[int], continuation: Sequence[int]) -> float: ...

    def sample(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, temperature: float
    ) -> list[Generated]: ...


def eos_ids_of(model_dir: Path, tokenizer: Any) -> tuple[int, ...]:
    """The end-of-turn ids, from generation_config.json (as evaluation reads them)."""
    import json

    ids: list[int] = []
    try:
        config = json.loads((model_dir / "generation_config.json").read_text(encoding="utf-8"))
        eos = config.get("eos_token_id")
        ids = [int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None]
    except (OSError, ValueError):
        pass
    if not ids and tokenizer.eos_token_id is not None:
        ids = [int(tokenizer.eos_token_id)]
    if not ids:
        raise ValueError(f"{model_dir}: the model has no end-of-sequence token")
    return tuple(ids)


def context_limit_of(model_dir: Path) -> int:
    import json

    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        return int(config.get("max_position_embeddings") or 2048)
    except (OSError, ValueError, TypeError):
        return 2048


def finished(tokens: list[int], logprobs: list[float], eos: tuple[int, ...]) -> Generated:
    """Cut at the first end token (its log-probability stays: P(answer, then stop))."""
    for i, t in enumerate(tokens):
        if t in eos:
            return Generated(tokens[:i], logprobs[: i + 1], True)
    return Generated(tokens, logprobs[: len(tokens)], False)


def pick(logprobs: Any, temperature: float, rng: Any) -> int:
    """The next token from one position's log-probabilities (numpy): the arg-max at temperature
    0 (or below), else drawn with ``rng`` (a numpy Generator) at that temperature."""
    if temperature <= 0:
        return int(logprobs.argmax())
    import numpy as np

    weights = np.exp((logprobs - logprobs.max()) / temperature)
    return int(rng.choice(len(weights), p=weights / weights.sum()))


def lockstep(
    first: Sequence[Any],
    step: Callable[[list[int], list[list[int]]], Sequence[Any]],
    *,
    temperature: float,
    rng: Any,
    eos: tuple[int, ...],
    max_new: int,
    index: Callable[[int], int],
    stop: StopRule | None = None,
    force: ForceRule | None = None,
) -> list[Generated]:
    """Decode a batch in lockstep. ``first[k]``: prompt k's next-token log-probabilities after
    its own tokens. Each round chooses every unfinished prompt's next token and appends what
    ``force`` says must follow it (log-probability nan); ``step(going, new)`` then evaluates
    each going prompt's new tokens in one pass and returns its next log-probabilities. Stop and
    force rules are asked with ``index(k)``, the prompt's index in the caller's list."""
    logprobs = list(first)
    tokens: list[list[int]] = [[] for _ in logprobs]
    lps: list[list[float]] = [[] for _ in logprobs]
    fed = [0] * len(logprobs)  # generated tokens already evaluated
    active = list(range(len(logprobs)))
    while active:
        going = []
        for k in active:
            row = logprobs[k]
            token = pick(row, temperature, rng)
            tokens[k].append(token)
            lps[k].append(float(row[token]))
            ended = token in eos or len(tokens[k]) >= max_new
            if not ended and force is not None:
                forced = list(force(index(k), tokens[k]))[: max_new - len(tokens[k])]
                tokens[k].extend(forced)
                lps[k].extend([math.nan] * len(forced))
                ended = len(tokens[k]) >= max_new
            if not ended and (stop is None or not stop(index(k), tokens[k])):
                going.append(k)
        if not going:
            break
        stepped = step(going, [tokens[k][fed[k] :] for k in going])
        for k, row in zip(going, stepped, strict=True):
            logprobs[k] = row
            fed[k] = len(tokens[k])
        active = going
    return [finished(t, lp, eos) for t, lp in zip(tokens, lps, strict=True)]


class BatchBackend:
    """``greedy`` and ``sample`` for an engine that answers a whole batch in one call: both are
    its ``_run(prompts, max_new, temperature, stop, force)``. An engine that decodes in lockstep
    (llama.cpp, ONNX Runtime) applies the stop and force rules; one that generates whole
    (CTranslate2: stop only; vLLM: neither) says so in its ``_run`` — the caller's answer is the
    same, the rules only save steps."""

    _run: Callable[..., list[Generated]]

    def greedy(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        stop: StopRule | None = None,
        force: ForceRule | None = None,
    ) -> list[Generated]:
        return self._run(prompts, max_new_tokens, 0.0, stop, force)

    def sample(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, temperature: float
    ) -> list[Generated]:
        return self._run(prompts, max_new_tokens, temperature, None, None)


def log_softmax(logits: Any) -> Any:
    """Log-probabilities from one position's logits (a numpy vector, its dtype kept)."""
    import numpy as np

    top = logits.max()
    return logits - (top + np.log(np.exp(logits - top).sum()))


def collect(
    steps: Iterable[tuple[int, float]],
    eos: tuple[int, ...],
    stop: Callable[[Sequence[int]], bool] | None = None,
) -> Generated:
    """A ``Generated`` from (token, log-probability) steps, ended early where ``stop`` says
    (an engine that decodes one prompt a token at a time: transformers)."""
    tokens: list[int] = []
    logprobs: list[float] = []
    for token, lp in steps:
        tokens.append(token)
        logprobs.append(lp)
        if stop is not None and token not in eos and stop(tokens):
            break
    return finished(tokens, logprobs, eos)


def stepwise_continuation_logprob(
    backend: Backend, prompt: Sequence[int], continuation: Sequence[int]
) -> float:
    """log P(continuation | prompt), one next-token query per token (engines without scoring)."""
    seq, total = list(prompt), 0.0
    for token in continuation:
        total += backend.next_logprobs([seq], [token])[0][0]
        seq.append(token)
    return total


def built_once(
    model_dir: Path,
    cache_dir: Path,
    name: str,
    build: Callable[[Path], None],
    *,
    also: Sequence[str] = (),
    version: str = "",
) -> Path:
    """``cache_dir / name`` built from the student in ``model_dir`` once: ``build(work)`` writes
    ``name`` (and the files in ``also``) into a scratch folder, and they are moved in only when
    complete (a half-written file is never loaded); the mark file ``name``.source.txt records
    the source folder and the builder's ``version``, so a re-trained student, or one built by
    an older builder, builds anew."""
    out = cache_dir / name
    mark = cache_dir / f"{name}.source.txt"
    source = str(model_dir.resolve()) + (f"\nbuilder {version}" if version else "")
    if out.is_file() and mark.is_file() and mark.read_text(encoding="utf-8") == source:
        return out
    work = cache_dir / f"{name}.partial"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        build(work)
        for file in (*also, name):  # the main file last: it is what "built" is judged by
            (work / file).replace(cache_dir / file)
        mark.write_text(source, encoding="utf-8")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def engine_workers(engine: str = "auto") -> int:
    """Batches the serving process runs at once: DISTILLERY_SERVE_WORKERS, else for
    CTranslate2 one per group of ``ct2_threads()`` cores (each batch on its own core(s); the
    library runs them in parallel), else 1 (transformers and vLLM use every core themselves)."""
    chosen = os.environ.get("DISTILLERY_SERVE_WORKERS", "").strip()
    if chosen:
        return max(1, int(chosen))
    if resolve_engine(engine) != "ct2":
        return 1
    from worker.serving_ct2 import ct2_threads

    return max(1, available_cores() // ct2_threads())


# -- transformers --------------------------------------------------------------------------------


class TransformersBackend:
    name = "transformers"

    def __init__(self, model_dir: Path, *, threads: int | None = None) -> None:
        import torch

        torch.set_num_threads(threads or available_cores())
        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.tokenizer = load_tokenizer(model_dir)
        self.model = load_causal_lm(model_dir, dtype="float32", attention="sdpa")
        self.model.to(self.device)
        self.model.eval()
        self.eos_token_ids = eos_ids_of(model_dir, self.tokenizer)

    def stream(
        self, prompt: Sequence[int], max_new_tokens: int, temperature: float = 0.0
    ) -> Iterator[tuple[int, float]]:
        torch = self.torch
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        x = torch.tensor([list(prompt)], device=self.device)
        with torch.inference_mode():
            for _ in range(max_new_tokens):
                out = self.model(input_ids=x, cache=cache, use_cache=True)
                logprobs = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
                if temperature > 0:
                    probs = torch.softmax(out.logits[0, -1].float() / temperature, dim=-1)
                    token = int(torch.multinomial(probs, 1))
                else:
                    token = int(torch.argmax(logprobs))
                yield token, float(logprobs[token])
                if token in self.eos_token_ids:
                    return
                x = torch.tensor([[token]], device=self.device)

    def continuation_logprob(self, prompt: Sequence[int], continuation: Sequence[int]) -> float:
        torch = self.torch
        ids = list(prompt) + list(continuation)
        with torch.inference_mode():
            logits = self.model(input_ids=torch.tensor([ids], device=self.device)).logits[0]
            lp = torch.log_softmax(logits[len(prompt) - 1 : -1].float(), dim=-1)
            picked = lp.gather(1, torch.tensor(list(continuation), device=self.device)[:, None])
        return float(picked.sum())

    def _collect(
        self,
        prompt: Sequence[int],
        max_new: int,
        temperature: float,
        stop: Callable[[Sequence[int]], bool] | None = None,
    ) -> Generated:
        return collect(self.stream(prompt, max_new, temperature), self.eos_token_ids, stop)

    def greedy(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        stop: StopRule | None = None,
        force: ForceRule | None = None,  # not applied: the fallback engine chooses every token
    ) -> list[Generated]:
        out = []
        for i, p in enumerate(prompts):
            rule = None if stop is None else functools.partial(stop, i)
            out.append(self._collect(p, max_new_tokens, 0.0, rule))
        return out

    def sample(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: int, temperature: float
    ) -> list[Generated]:
        return [self._collect(p, max_new_tokens, temperature) for p in prompts]

    def next_logprobs(
        self, sequences: Sequence[Sequence[int]], wanted: Sequence[int]
    ) -> list[list[float]]:
        torch = self.torch
        out = []
        with torch.inference_mode():
            for seq in sequences:
                x = torch.tensor([list(seq)], device=self.device)
                logits = self.model(input_ids=x, logits_to_keep=1).logits[0, -1].float()
                lp = torch.log_softmax(logits, dim=-1)
                out.append([float(lp[t]) for t in wanted])
        return out


# -- vLLM (CUDA) ---------------------------------------------------------------------------------


def vllm_available() -> bool:
    try:
        import torch
        import vllm  # noqa: F401
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


class VLLMBackend(BatchBackend):
    """vLLM on a GPU worker: the merged student folder as is (no conversion)."""

    name = "vllm"

    def __init__(self, model_dir: Path) -> None:
        from vllm import LLM

        self.tokenizer = load_tokenizer(model_dir)
        self.eos_token_ids = eos_ids_of(model_dir, self.tokenizer)
        self.llm = LLM(model=str(model_dir), dtype="auto", enforce_eager=False)

    def _params(self, max_new: int, temperature: float, logprobs: int | None = 1) -> Any:
        from vllm import SamplingParams

        return SamplingParams(
            max_tokens=max_new,
            temperature=temperature,
            stop_token_ids=list(self.eos_token_ids),
            logprobs=logprobs,
            skip_special_tokens=False,
        )

    def _run(
        self,
        prompts: Sequence[Sequence[int]],
        max_new: int,
        temp: float,
        stop: StopRule | None = None,
        force: ForceRule | None = None,
    ) -> list[Generated]:
        # The offline engine has no per-token hook: it generates whole, so neither rule applies.
        from vllm.inputs import TokensPrompt

        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(p)) for p in prompts], self._params(max_new, temp)
        )
        done = []
        for o in outputs:
            c = o.outputs[0]
            ids = [int(t) for t in c.token_ids]
            lps = [float(step[t].logprob) for t, step in zip(ids, c.logprobs or [], strict=False)]
            done.append(finished(ids, lps + [0.0] * (len(ids) - len(lps)), self.eos_token_ids))
        return done

    def next_logprobs(
        self, sequences: Sequence[Sequence[int]], wanted: Sequence[int]
    ) -> list[list[float]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=20)
        out = []
        for o in self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(s)) for s in sequences], params
        ):
            step = (o.outputs[0].logprobs or [{}])[0]
            out.append([float(step[t].logprob) if t in step else -math.inf for t in wanted])
        return out

    def continuation_logprob(self, prompt: Sequence[int], continuation: Sequence[int]) -> float:
        return stepwise_continuation_logprob(self, prompt, continuation)

    def stream(
        self, prompt: Sequence[int], max_new_tokens: int, temperature: float = 0.0
    ) -> Iterator[tuple[int, float]]:
        # The offline LLM answers whole; the server streams it chunk by chunk.
        g = self._run([prompt], max_new_tokens, temperature)[0]
        yield from zip(g.tokens, g.logprobs, strict=False)


def resolve_engine(engine: str = "auto") -> str:
    """The engine for this machine: vLLM on a CUDA machine where installed; on CPU ONNX Runtime
    int8 (worker.serving_onnx) where onnxruntime and onnx are installed (``make venv`` installs
    them), else llama.cpp (Q8_0) where llama-cpp-python and the converter are installed, else
    CTranslate2 int8, else transformers. ``engine`` (or DISTILLERY_SERVE_ENGINE) forces one:
    vllm, onnx, llama, ct2 or transformers. Chosen by measurement (bench/serve_latency.py, the
    distilled BANKING77 student on 2 vCPUs, one session): ONNX Runtime p50 32.5 ms, 40.3
    requests/s with 8 clients, 0.67 points from the evaluated accuracy; llama.cpp Q8_0 65.0 ms,
    20.3 requests/s, 0 points; CTranslate2 (another machine) p50 86.6 ms, 2.5 points off."""
    engine = engine or os.environ.get("DISTILLERY_SERVE_ENGINE", "auto")
    if engine != "auto":
        return engine
    return "vllm" if vllm_available() else _cpu_engines()[0]


def _cpu_engines() -> list[str]:
    """The CPU engines installed here, in the order ``resolve_engine`` prefers them."""
    from worker.serving_ct2 import ct2_available
    from worker.serving_llama import llama_cpp_available
    from worker.serving_onnx_graph import onnx_available

    installed = {"onnx": onnx_available, "llama": llama_cpp_available, "ct2": ct2_available}
    return [name for name, available in installed.items() if available()] + ["transformers"]


def _refusals(engine: str) -> tuple[type[Exception], ...]:
    """What ``engine`` raises for a student it cannot take (chosen automatically, the next
    engine then serves it)."""
    if engine == "onnx":
        from worker.serving_onnx_graph import UnsupportedModel

        return (UnsupportedModel,)
    if engine == "llama":
        from worker.export.llama_cpp_tools import ExportToolError

        return (ExportToolError,)
    return ()


def open_backend(model_dir: Path, cache_dir: Path, *, engine: str = "auto") -> Backend:
    """The backend of ``resolve_engine(engine)``. Chosen automatically, an engine that cannot
    take this student gives way to the next: ONNX Runtime (Llama-architecture students with
    plain rotary positions) to llama.cpp, llama.cpp (an architecture its converter lacks) to
    CTranslate2."""
    requested = engine or os.environ.get("DISTILLERY_SERVE_ENGINE", "auto")
    chosen = resolve_engine(requested)
    if requested != "auto" or chosen == "vllm":
        return _open(model_dir, cache_dir, chosen)
    engines = _cpu_engines()
    for candidate in engines[engines.index(chosen) : -1]:
        try:
            return _open(model_dir, cache_dir, candidate)
        except _refusals(candidate) as exc:
            log.warning(
                "serving: %s cannot take %s (%s); the next engine", candidate, model_dir, exc
            )
    return _open(model_dir, cache_dir, engines[-1])


def _open(model_dir: Path, cache_dir: Path, engine: str) -> Backend:
    if engine == "vllm":
        return VLLMBackend(model_dir)
    if engine == "ct2":
        from worker.serving_ct2 import CT2Backend

        return CT2Backend(model_dir, cache_dir)
    if engine == "llama":
        from worker.serving_llama import LlamaCppBackend

        return LlamaCppBackend(model_dir, cache_dir)
    if engine == "onnx":
        from worker.serving_onnx import OnnxBackend

        return OnnxBackend(model_dir, cache_dir)
    if engine == "transformers":
        return TransformersBackend(model_dir)
    raise ValueError(f"engine must be auto, vllm, llama, onnx, ct2 or transformers, not {engine!r}")
