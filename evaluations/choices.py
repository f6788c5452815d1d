"""What an evaluation compares and how: the teacher, local students and endpoints a user
chooses, and the run's options. Plain values the forms build and the services check."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from dataclasses import fields as dataclass_fields
from typing import Any

from django.core.exceptions import ValidationError

from evaluations.models import CandidateSource
from finetunes.models import StudentModel
from teachers.models import TeacherRun
from teams.models import ProviderCredential
from worker.inference import DEFAULT_BATCH_SIZE

DEFAULT_LATENCY_REQUESTS = 20
DEFAULT_MAX_NEW_TOKENS = {"json": 256, "text": 256}
# Bounds of the options (the forms use the same ones).
MAX_NEW_TOKENS_LIMIT = 4096
BATCH_SIZE_LIMIT = 256
LATENCY_REQUESTS_LIMIT = 1000
CONCURRENCY_LIMIT = 64


@dataclass(frozen=True)
class TeacherChoice:
    """Where the teacher's answers come from.

    ``stored``: the answers already stored (from ``run`` if given, else the latest per input);
    inputs without one are sent to ``credential``/``model`` when given (a metered teacher run),
    else they count as missing. ``references``: the inputs' human reference outputs stand in for a
    teacher (nothing is called; the page says so)."""

    source: str = CandidateSource.STORED
    run: TeacherRun | None = None
    credential: ProviderCredential | None = None
    model: str = ""


@dataclass(frozen=True)
class StudentChoice:
    """A local model: the untuned base student or a distilled one."""

    role: str  # CandidateRole.BASE | CandidateRole.DISTILLED
    path: str = ""  # model directory, relative to DATA_DIR or absolute under an allowed root
    name: str = ""
    student_model: StudentModel | None = None  # a registered model (its path is used)


@dataclass(frozen=True)
class EndpointChoice:
    """Any OpenAI-compatible endpoint (vLLM, Ollama, a hosted fine-tune) behind a team credential."""

    credential: ProviderCredential
    model: str
    name: str = ""


@dataclass(frozen=True)
class EvalOptions:
    max_new_tokens: int | None = None  # None: longest label + 4 (label tasks), 256 otherwise
    batch_size: int = DEFAULT_BATCH_SIZE
    latency_requests: int = DEFAULT_LATENCY_REQUESTS
    concurrency: int = 8  # endpoint calls in flight

    def validate(self) -> None:
        if self.max_new_tokens is not None and not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise ValidationError(
                {"max_new_tokens": f"between 1 and {MAX_NEW_TOKENS_LIMIT:,} tokens"}
            )
        if not 1 <= self.batch_size <= BATCH_SIZE_LIMIT:
            raise ValidationError({"batch_size": f"a batch size between 1 and {BATCH_SIZE_LIMIT}"})
        if not 0 <= self.latency_requests <= LATENCY_REQUESTS_LIMIT:
            raise ValidationError(
                {"latency_requests": f"between 0 and {LATENCY_REQUESTS_LIMIT:,} single requests"}
            )
        if not 1 <= self.concurrency <= CONCURRENCY_LIMIT:
            raise ValidationError(
                {"concurrency": f"between 1 and {CONCURRENCY_LIMIT} calls in flight"}
            )

    @classmethod
    def fields(cls) -> set[str]:
        return {f.name for f in dataclass_fields(cls)}

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EvalOptions:
        return cls(**{k: v for k, v in data.items() if k in cls.fields()})
