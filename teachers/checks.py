"""Writes for review: decisions (single, bulk, by rule, by correction), undo, comments,
assignments, conflict resolution, automatic checks and the LLM judge. Every one of them writes
an AuditEvent in the same transaction as the change it records.

Concurrency: a decision locks the output row (SELECT ... FOR UPDATE) and is accepted only
against the `review_version` the reviewer saw; the version is bumped by every change. Twenty
people pressing "approve" at the same moment therefore produce one decision and one audit row;
the others are told who decided first.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from django.db import transaction

from projects.models import Project
from teachers.models import OutputFlag, TeacherOutput
from worker import checks

POPULATION_CODES = (checks.LENGTH_OUTLIER, checks.REPEATED_OUTPUT)


JUDGE_CODES = (checks.JUDGE_LOW_SCORE, checks.JUDGE_ERROR)


def flags_replace(
    *,
    project: Project,
    codes: Iterable[str],
    flags: dict[int, list[checks.Flag]],
    scope: Any = None,
) -> int:
    """Replace the flags with these `codes` (on every output of the project, or on `scope`, a
    queryset of outputs) by `flags`, and keep each output's `flag_codes` in step."""
    codes = tuple(codes)
    existing = OutputFlag.objects.filter(project=project, code__in=codes)
    if scope is not None:
        existing = existing.filter(output__in=scope)
    touched = set(existing.values_list("output_id", flat=True)) | set(flags)
    existing.delete()
    OutputFlag.objects.bulk_create(
        [
            OutputFlag(
                output_id=pk, project=project, code=f.code, message=f.message[:2000], score=f.score
            )
            for pk, found in flags.items()
            for f in found
            if f.code in codes
        ],
        batch_size=5000,
        ignore_conflicts=True,
    )
    _sync_flag_codes(sorted(touched))
    return sum(len(v) for v in flags.values())


def _sync_flag_codes(output_ids: Sequence[int]) -> None:
    """flag_codes := the sorted codes of each output's OutputFlag rows."""
    for start in range(0, len(output_ids), 5000):
        chunk = list(output_ids[start : start + 5000])
        codes: dict[int, list[str]] = {pk: [] for pk in chunk}
        for pk, code in OutputFlag.objects.filter(output_id__in=chunk).values_list(
            "output_id", "code"
        ):
            codes[pk].append(code)
        TeacherOutput.objects.bulk_update(
            [TeacherOutput(pk=pk, flag_codes=sorted(found)) for pk, found in codes.items()],
            ["flag_codes"],
            batch_size=1000,
        )


def population_checks_run(*, project: Project) -> dict[str, int]:
    """Length outliers and repeated outputs over all of the project's outputs (worker.checks),
    replacing the previous population flags. Call after a teacher run, or from the checks job."""
    spec = project.task_spec()
    outputs = [
        checks.OutputToCheck(output_id=pk, raw=raw, input_id=input_id)
        for pk, raw, input_id in TeacherOutput.objects.filter(project=project)
        .order_by("pk")
        .values_list("pk", "raw_text", "input_id")
        .iterator(chunk_size=10000)
    ]
    found = checks.check_population(spec, outputs)
    typed = {int(k): v for k, v in found.items()}
    with transaction.atomic():
        flags_replace(project=project, codes=POPULATION_CODES, flags=typed)
    counts = Counter(f.code for v in typed.values() for f in v)
    return {"outputs_checked": len(outputs), **{c: counts.get(c, 0) for c in POPULATION_CODES}}
