"""The one interface every teacher provider speaks: requests, responses, errors, configuration.

A provider turns a ``TeacherRequest`` into a ``TeacherResponse`` or raises a ``TeacherError``.
It never retries by itself (the SDKs are built with ``max_retries=0``): the runner owns retries,
so every attempt is counted, ledgered and bounded by the budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from worker.storable import storable_text
from worker.taskspec import OutputKind

ProviderKind = Literal["openai", "anthropic", "openai_compatible", "local_hf"]
PROVIDER_KINDS: tuple[ProviderKind, ...] = ("openai", "anthropic", "openai_compatible", "local_hf")

# Finish reasons are normalised across providers so review checks can rely on them.
FinishReason = str  # "stop" | "length" | "content_filter" | "tool_use" | provider's own word


@dataclass(frozen=True)
class TeacherRequest:
    """One call to a teacher: a rendered conversation plus generation settings.

    ``custom_id`` is the caller's handle (Django uses ``"<input id>-<sample index>"``); it is
    echoed back in the response and used to match batch results. Anthropic batches accept only
    ``[A-Za-z0-9_-]{1,64}``, so keep ids in that alphabet.
    """

    custom_id: str
    messages: tuple[dict[str, str], ...] | list[dict[str, str]]
    model: str
    temperature: float = 0.0
    max_tokens: int = 256
    sample_index: int = 0
    output_kind: OutputKind = "text"
    json_schema: dict[str, Any] | None = None
    label_set: tuple[str, ...] = ()
    want_logprobs: bool = False


@dataclass
class TeacherResponse:
    """What came back for one request (or from the cache, or from a batch result)."""

    custom_id: str
    raw_text: str
    input_tokens: int = 0
    output_tokens: int = 0
    finish_reason: FinishReason = ""
    latency_ms: int | None = None
    label_confidence: float | None = None
    # Per output position, up to where the label is decided:
    # [{"token": str, "logprob": float, "top": [{"token": str, "logprob": float}, ...]}, ...]
    top_logprobs: list[dict[str, Any]] | None = None
    provider_request_id: str = ""
    error: str | None = None
    # Filled in by the runner: how many HTTP attempts this answer took, and whether it was
    # served from the cache (no call, no cost).
    attempts: int = 1
    from_cache: bool = False

    def __post_init__(self) -> None:
        self.raw_text = storable_text(self.raw_text)  # stored as text and jsonb: no NUL

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        """A plain dict for a cache row or a JSON column; ``from_json`` reverses it."""
        return {
            "custom_id": self.custom_id,
            "raw_text": self.raw_text,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "finish_reason": self.finish_reason,
            "latency_ms": self.latency_ms,
            "label_confidence": self.label_confidence,
            "top_logprobs": self.top_logprobs,
            "provider_request_id": self.provider_request_id,
            "error": self.error,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TeacherResponse:
        return cls(
            custom_id=str(data.get("custom_id", "")),
            raw_text=str(data.get("raw_text", "")),
            input_tokens=int(data.get("input_tokens") or 0),
            output_tokens=int(data.get("output_tokens") or 0),
            finish_reason=str(data.get("finish_reason") or ""),
            latency_ms=data.get("latency_ms"),
            label_confidence=data.get("label_confidence"),
            top_logprobs=data.get("top_logprobs"),
            provider_request_id=str(data.get("provider_request_id") or ""),
            error=data.get("error"),
        )


# --------------------------------------------------------------------------------------------
# Errors


class TeacherError(Exception):
    """A call failed. ``retryable`` says whether trying again can help; ``fatal`` says that no
    other request of the run can succeed either (bad key, unknown model), so the run stops."""

    retryable: bool = False
    fatal: bool = False

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        retry_after_s: float | None = None,
        provider_request_id: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.retry_after_s = retry_after_s
        self.provider_request_id = provider_request_id

    def __str__(self) -> str:
        return self.message


class TeacherConfigError(TeacherError):
    """The provider configuration is unusable (no key, unsafe base URL, missing model path)."""

    fatal = True


class TeacherAuthError(TeacherError):
    """401/403: the key is wrong, revoked, or lacks permission. Never retried."""

    fatal = True


class TeacherNotFoundError(TeacherError):
    """404: the model (or endpoint) does not exist for this key. Never retried."""

    fatal = True


class TeacherBadRequestError(TeacherError):
    """400/422 and other 4xx: this request is wrong (too long, bad schema). Never retried."""


class TeacherRateLimitError(TeacherError):
    """429: slow down; ``retry_after_s`` is what the server asked for, when it said."""

    retryable = True


class TeacherServerError(TeacherError):
    """5xx (and 529 overloaded): the provider failed; retried with backoff."""

    retryable = True


class TeacherTimeoutError(TeacherError):
    retryable = True


class TeacherConnectionError(TeacherError):
    retryable = True


class TeacherMalformedResponseError(TeacherError):
    """The provider answered 2xx with a body we cannot read. Retried: the body is lost anyway."""

    retryable = True


class TeacherEgressRefusedError(TeacherError):
    """A request was about to leave for somewhere other than the credential's own host (a
    redirect, or a URL the provider's answer named), or the host now resolves to an address
    the SSRF guard refuses. Nothing was sent. Fatal: the endpoint cannot be trusted with the
    key. ``refused_url`` (without query) and ``allowed_origin`` say where it went and where
    it may go."""

    fatal = True

    def __init__(self, message: str, *, refused_url: str, allowed_origin: str) -> None:
        super().__init__(message)
        self.refused_url = refused_url
        self.allowed_origin = allowed_origin


# --------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class ProviderConfig:
    """Everything needed to build a provider client. Holds the decrypted key: build it inside the
    worker, right before use, and never log or pickle it (``repr`` hides the key)."""

    kind: ProviderKind
    credential_name: str = ""
    api_key: str = field(default="", repr=False)
    base_url: str = ""
    request_timeout_s: float = 120.0
    connect_timeout_s: float = 10.0
    # Custom base URLs on loopback/private addresses (vLLM on the LAN) need an owner's explicit
    # permission; see worker.ssrf.
    allow_private_network: bool = False
    # local_hf only
    local_model_path: str = ""
    local_batch_size: int = 16
    local_device: str = ""  # "" = cuda when available, else cpu
    local_dtype: str = "auto"

    @property
    def label(self) -> str:
        """How errors name this configuration: the credential's name, else the kind."""
        return f"credential {self.credential_name!r}" if self.credential_name else self.kind


@dataclass(frozen=True)
class BatchSubmission:
    """What ``submit_batch`` returns; store ``batch_id`` to poll and collect after a restart."""

    batch_id: str
    request_count: int
    input_file_id: str = ""  # OpenAI only


@dataclass(frozen=True)
class BatchStatus:
    """Provider-neutral batch state. ``state`` is one of
    "in_progress" | "finalizing" | "completed" | "failed" | "expired" | "cancelling" | "cancelled";
    ``done`` is true once results (possibly partial) can be collected or never will be."""

    batch_id: str
    state: str
    provider_status: str
    total: int
    completed: int
    failed: int
    done: bool
    error: str = ""


@runtime_checkable
class TeacherProvider(Protocol):
    """One module per provider implements this."""

    config: ProviderConfig

    async def generate(self, request: TeacherRequest) -> TeacherResponse:
        """One attempt; raises TeacherError. Never retries."""
        ...

    async def aclose(self) -> None: ...


@runtime_checkable
class BatchTeacherProvider(TeacherProvider, Protocol):
    """Providers with an offline batch API (OpenAI Batch, Anthropic Message Batches)."""

    async def submit_batch(self, requests: Sequence[TeacherRequest]) -> BatchSubmission: ...

    async def poll_batch(self, batch_id: str) -> BatchStatus: ...

    async def collect_batch(
        self, batch_id: str, requests: Sequence[TeacherRequest] = ()
    ) -> dict[str, TeacherResponse]: ...

    async def cancel_batch(self, batch_id: str) -> BatchStatus: ...
