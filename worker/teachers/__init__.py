"""Teacher providers: one small interface (worker.teachers.base), one module per provider.

``make_provider(config)`` builds the right one; adding a provider is a module with a class that
has ``generate(request)`` and ``aclose()`` (plus the batch methods if it has a batch API) and a
line in ``_PROVIDERS``. Provider modules import their SDK lazily, so importing this package is
cheap.
"""

from __future__ import annotations

import importlib

from worker.teachers.base import (
    PROVIDER_KINDS,
    BatchStatus,
    BatchSubmission,
    BatchTeacherProvider,
    ProviderConfig,
    ProviderKind,
    TeacherAuthError,
    TeacherBadRequestError,
    TeacherConfigError,
    TeacherConnectionError,
    TeacherEgressRefusedError,
    TeacherError,
    TeacherMalformedResponseError,
    TeacherNotFoundError,
    TeacherProvider,
    TeacherRateLimitError,
    TeacherRequest,
    TeacherResponse,
    TeacherServerError,
    TeacherTimeoutError,
)

# kind -> "module:Class"
_PROVIDERS: dict[str, str] = {
    "openai": "worker.teachers.openai_chat:OpenAIChatProvider",
    "openai_compatible": "worker.teachers.openai_chat:OpenAIChatProvider",
    "anthropic": "worker.teachers.anthropic_messages:AnthropicMessagesProvider",
    "local_hf": "worker.teachers.local_hf:LocalHFProvider",
}
BATCH_KINDS: tuple[ProviderKind, ...] = ("openai", "anthropic")


def make_provider(config: ProviderConfig) -> TeacherProvider:
    """Build the provider for ``config.kind``; raises TeacherConfigError with a clear message."""
    target = _PROVIDERS.get(config.kind)
    if target is None:
        raise TeacherConfigError(
            f"unknown provider kind {config.kind!r}; expected one of {', '.join(_PROVIDERS)}"
        )
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    provider: TeacherProvider = cls(config)
    return provider


__all__ = [
    "BATCH_KINDS",
    "PROVIDER_KINDS",
    "BatchStatus",
    "BatchSubmission",
    "BatchTeacherProvider",
    "ProviderConfig",
    "ProviderKind",
    "TeacherAuthError",
    "TeacherBadRequestError",
    "TeacherConfigError",
    "TeacherConnectionError",
    "TeacherEgressRefusedError",
    "TeacherError",
    "TeacherMalformedResponseError",
    "TeacherNotFoundError",
    "TeacherProvider",
    "TeacherRateLimitError",
    "TeacherRequest",
    "TeacherResponse",
    "TeacherServerError",
    "TeacherTimeoutError",
    "make_provider",
]
