"""A run's requests: the provider configuration, the (input, sample) pairs still missing, the
rendered TeacherRequests, and which of their answers the team's cache already holds."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from projects.models import InputRow
from teachers.models import CachedResponse, TeacherOutput, TeacherRun
from teachers.prices import LOCAL_PROVIDER
from teachers.runs import resolve_local_model_path
from worker.taskspec import TaskSpec, TemplateError, teacher_messages
from worker.teachers.base import ProviderConfig, TeacherRequest

# Building requests -----------------------------------------------------------------------------


def provider_config_for_run(run: TeacherRun) -> ProviderConfig:
    """The engine's configuration, with the decrypted key. Worker-side only; never log it."""
    if run.provider == LOCAL_PROVIDER:
        return ProviderConfig(
            kind="local_hf",
            local_model_path=str(
                resolve_local_model_path(run.local_model_path, team=run.project.team)
            ),
        )
    credential = run.credential
    if credential is None:
        raise ValueError("the run's credential was deleted; start a new run with another one")
    return credential.provider_config_dangerously()


def custom_id_for(input_id: int, sample_index: int) -> str:
    return f"{input_id}-{sample_index}"


def missing_pairs(run: TeacherRun) -> list[tuple[int, int]]:
    have = set(TeacherOutput.objects.filter(run=run).values_list("input_id", "sample_index"))
    return [
        (input_id, sample)
        for input_id in run.input_ids
        for sample in range(run.samples_per_input)
        if (input_id, sample) not in have
    ]


def _request_for(run: TeacherRun, spec: TaskSpec, input_id: int, sample: int, data: Any) -> Any:
    return TeacherRequest(
        custom_id=custom_id_for(input_id, sample),
        messages=teacher_messages(spec, data),
        model=run.model,
        temperature=run.temperature,
        max_tokens=run.max_tokens,
        sample_index=sample,
        output_kind=spec.output_kind,
        json_schema=spec.json_schema,
        label_set=tuple(spec.label_set),
        want_logprobs=spec.output_kind == "label"
        and run.provider in ("openai", "openai_compatible", "local_hf"),
    )


def build_requests(
    run: TeacherRun, spec: TaskSpec, pairs: list[tuple[int, int]]
) -> tuple[list[TeacherRequest], list[str]]:
    """Requests for the pairs (inputs that cannot be rendered are reported, not sent)."""
    requests: list[TeacherRequest] = []
    errors: list[str] = []
    ids = sorted({input_id for input_id, _ in pairs})
    data: dict[int, Any] = {}
    for start in range(0, len(ids), 2000):
        chunk = ids[start : start + 2000]
        data.update(InputRow.objects.filter(pk__in=chunk).values_list("id", "data"))
    for input_id, sample in pairs:
        if input_id not in data:
            continue  # the input was deleted since the run started
        try:
            requests.append(_request_for(run, spec, input_id, sample, data[input_id]))
        except TemplateError as exc:
            if len(errors) < 20:
                errors.append(f"input #{input_id}: {exc}")
    return requests, errors


def existing_cache_keys(team_id: int, keys: Iterable[str]) -> set[str]:
    found: set[str] = set()
    keys = list(keys)
    for start in range(0, len(keys), 2000):
        found.update(
            CachedResponse.objects.filter(
                team_id=team_id, key__in=keys[start : start + 2000]
            ).values_list("key", flat=True)
        )
    return found


def pair_of(custom_id: str) -> tuple[int, int]:
    input_id, _, sample = custom_id.partition("-")
    return int(input_id), int(sample or 0)
