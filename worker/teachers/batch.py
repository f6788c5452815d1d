"""Batch mode (OpenAI Batch API, Anthropic Message Batches) as plain synchronous steps.

A Celery task stores only the ``batch_id`` between steps, so it can resume after a restart::

    submission = submit(config, requests)          # once; store submission.batch_id
    status = poll(config, batch_id)                # every few minutes until status.done
    responses = collect(config, batch_id, requests)  # {custom_id: TeacherResponse}

Batch calls are billed at the batch price: ``worker.pricing.cost(model, i, o, batch=True)``.
Custom ids missing from ``collect``'s answer were not processed (the batch expired or was
cancelled); run them again, directly or in a new batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from worker.teachers import BATCH_KINDS, make_provider
from worker.teachers.base import (
    BatchStatus,
    BatchSubmission,
    BatchTeacherProvider,
    ProviderConfig,
    TeacherConfigError,
    TeacherRequest,
    TeacherResponse,
)

T = TypeVar("T")


def _batch_provider(config: ProviderConfig) -> BatchTeacherProvider:
    if config.kind not in BATCH_KINDS:
        raise TeacherConfigError(
            f"batch mode is available for OpenAI and Anthropic, not {config.kind!r}"
        )
    provider = make_provider(config)
    assert isinstance(provider, BatchTeacherProvider)
    return provider


async def _with_provider(
    config: ProviderConfig, step: Callable[[BatchTeacherProvider], Awaitable[T]]
) -> T:
    provider = _batch_provider(config)
    try:
        return await step(provider)
    finally:
        await provider.aclose()


def submit(config: ProviderConfig, requests: Sequence[TeacherRequest]) -> BatchSubmission:
    return asyncio.run(_with_provider(config, lambda p: p.submit_batch(requests)))


def poll(config: ProviderConfig, batch_id: str) -> BatchStatus:
    return asyncio.run(_with_provider(config, lambda p: p.poll_batch(batch_id)))


def collect(
    config: ProviderConfig, batch_id: str, requests: Sequence[TeacherRequest] = ()
) -> dict[str, TeacherResponse]:
    """Pass the submitted requests so json answers are unwrapped and label confidences set."""
    return asyncio.run(_with_provider(config, lambda p: p.collect_batch(batch_id, requests)))


def cancel(config: ProviderConfig, batch_id: str) -> BatchStatus:
    return asyncio.run(_with_provider(config, lambda p: p.cancel_batch(batch_id)))
