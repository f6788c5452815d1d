"""A local Hugging Face causal LM as a teacher (open-weight teachers on a team's own GPUs).

Requests arriving concurrently from the runner are gathered into batches of up to
``config.local_batch_size`` and generated together: chat template applied, left padding (so
every row's answer starts right after its prompt), greedy decoding at temperature 0, sampling
otherwise. Generation runs in a worker thread so the event loop keeps serving.

torch and transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

from worker.teachers.base import (
    ProviderConfig,
    TeacherConfigError,
    TeacherError,
    TeacherRequest,
    TeacherResponse,
)

# Alternatives kept per answer position (the APIs return up to 20; a local model has them all).
LOCAL_TOP_LOGPROBS = 20


@dataclass
class _Pending:
    request: TeacherRequest
    future: asyncio.Future[TeacherResponse]


class LocalHFProvider:
    def __init__(self, config: ProviderConfig) -> None:
        if config.kind != "local_hf":
            raise TeacherConfigError(f"LocalHFProvider cannot serve kind {config.kind!r}")
        if not config.local_model_path:
            raise TeacherConfigError(f"{config.label}: no local model path")
        self.config = config
        self.batch_size = max(1, int(config.local_batch_size))
        self._model: Any = None
        self._tokenizer: Any = None
        self._device = ""
        self._queue: list[_Pending] = []
        self._wakeup: asyncio.Event | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._load_lock: asyncio.Lock | None = None
        self.batch_sizes: list[int] = []  # one entry per generate pass (progress/diagnostics)

    # -- loading ------------------------------------------------------------------------------

    def load(self) -> None:
        """Load the model and tokenizer (blocking; called once, in a thread)."""
        if self._model is not None:
            return
        import torch

        from worker.model_loading import load_causal_lm, load_tokenizer

        path = self.config.local_model_path
        device = self.config.local_device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype: Any = self.config.local_dtype or "auto"
        on_cuda = device.startswith("cuda")
        try:
            # A local path only: a teacher run never downloads weights or kernels from a hub.
            tokenizer = load_tokenizer(path)
            model: Any = load_causal_lm(
                path,
                dtype=dtype,
                device_map={"": device} if on_cuda else None,
                attention="sdpa",
            )
        except (OSError, ValueError, AttributeError) as exc:
            raise TeacherConfigError(
                f"{self.config.label}: cannot load model at {path}: {exc}"
            ) from exc
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if not on_cuda:
            model.to(device)
        model.eval()
        self._tokenizer, self._model, self._device = tokenizer, model, device

    # -- the provider interface ---------------------------------------------------------------

    async def generate(self, request: TeacherRequest) -> TeacherResponse:
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
            self._load_lock = asyncio.Lock()
        assert self._load_lock is not None
        async with self._load_lock:
            if self._model is None:
                await asyncio.to_thread(self.load)
        future: asyncio.Future[TeacherResponse] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(request, future))
        if self._loop_task is None or self._loop_task.done():
            self._loop_task = asyncio.create_task(self._batch_loop())
        self._wakeup.set()
        return await future

    async def aclose(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            # The loop only ends by cancellation; whatever it raised was delivered to the callers.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._loop_task
        self._model = None
        self._tokenizer = None

    async def _batch_loop(self) -> None:
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            # Let every coroutine that is about to enqueue do so before we cut a batch.
            await asyncio.sleep(0)
            while self._queue:
                first = self._queue[0].request
                group_key = (first.temperature, first.max_tokens)
                batch = [
                    p
                    for p in self._queue
                    if (p.request.temperature, p.request.max_tokens) == group_key
                ][: self.batch_size]
                for pending in batch:
                    self._queue.remove(pending)
                try:
                    responses = await asyncio.to_thread(
                        self.generate_batch, [p.request for p in batch]
                    )
                except Exception as exc:
                    error = (
                        exc
                        if isinstance(exc, TeacherError)
                        else TeacherError(f"{self.config.label}: local generation failed: {exc}")
                    )
                    for pending in batch:
                        if not pending.future.done():
                            pending.future.set_exception(error)
                    continue
                for pending, response in zip(batch, responses, strict=True):
                    if not pending.future.done():
                        pending.future.set_result(response)

    # -- batched generation (blocking) --------------------------------------------------------

    def generate_batch(self, requests: list[TeacherRequest]) -> list[TeacherResponse]:
        """Generate answers for requests sharing temperature and max_tokens, in one pass."""
        import torch

        self.load()
        tokenizer, model = self._tokenizer, self._model
        prompts = [
            tokenizer.apply_chat_template(
                [dict(m) for m in r.messages], tokenize=False, add_generation_prompt=True
            )
            for r in requests
        ]
        encoded = tokenizer(
            prompts, return_tensors="pt", padding=True, add_special_tokens=False
        ).to(self._device)
        temperature = float(requests[0].temperature)
        max_new = int(requests[0].max_tokens)
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        }
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=1.0, top_k=0)
        else:
            kwargs.update(do_sample=False)
        # Label tasks: the full next-token distribution is right here (raw logits, before
        # any sampling temperature); keep its top LOCAL_TOP_LOGPROBS per position, as the APIs return them, for the label confidence and
        # the teacher's distribution over the labels (soft labels).
        want_scores = any(r.want_logprobs and r.output_kind == "label" for r in requests)
        if want_scores:
            kwargs.update(output_logits=True, return_dict_in_generate=True)
        self.batch_sizes.append(len(requests))
        started = time.perf_counter()
        with torch.inference_mode():
            generated_out = model.generate(**encoded, **kwargs)
        elapsed_ms = int((time.perf_counter() - started) * 1000)
        output = generated_out.sequences if want_scores else generated_out
        scores = generated_out.logits if want_scores else None
        prompt_len = encoded["input_ids"].shape[1]
        responses = []
        for row, request in enumerate(requests):
            generated = output[row, prompt_len:].tolist()
            finish = "length"
            kept: list[int] = []
            for token in generated:
                if token == tokenizer.eos_token_id:
                    finish = "stop"
                    break
                if (
                    token == tokenizer.pad_token_id
                    and tokenizer.pad_token_id != tokenizer.eos_token_id
                ):
                    finish = "stop"
                    break
                kept.append(token)
            text = tokenizer.decode(kept, skip_special_tokens=True)
            confidence, positions = None, None
            if scores is not None and request.want_logprobs and request.output_kind == "label":
                confidence, positions = _label_logprobs(tokenizer, scores, row, kept, request)
            responses.append(
                TeacherResponse(
                    custom_id=request.custom_id,
                    raw_text=text.strip(),
                    input_tokens=int(encoded["attention_mask"][row].sum().item()),
                    # the stop token is generated too: count it, as the APIs do
                    output_tokens=len(kept) + (1 if finish == "stop" else 0),
                    finish_reason=finish,
                    latency_ms=elapsed_ms,
                    label_confidence=confidence,
                    top_logprobs=positions,
                )
            )
        return responses


def _label_logprobs(
    tokenizer: Any, scores: Any, row: int, kept: list[int], request: TeacherRequest
) -> tuple[float | None, list[dict[str, Any]]]:
    """(label confidence, positions) from the generation's scores, as the APIs' logprobs."""
    import torch

    from worker.teachers.confidence import TokenLogprob, label_confidence

    tokens = []
    for step, token_id in enumerate(kept[: len(scores)]):
        logprobs = torch.log_softmax(scores[step][row].float(), dim=-1)
        top = torch.topk(logprobs, min(LOCAL_TOP_LOGPROBS, logprobs.shape[-1]))
        tokens.append(
            TokenLogprob(
                token=tokenizer.decode([token_id]),
                logprob=float(logprobs[token_id]),
                top=tuple(
                    (tokenizer.decode([int(i)]), float(v))
                    for v, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
                ),
            )
        )
    return label_confidence(tokens, request.label_set)
