"""Freeze reviewed outputs into an immutable dataset version (worker.datasets does the splitting,
hashing, leakage report, stats and exports; this module turns rows into its inputs and its
result into rows and files).

What goes in: approved teacher outputs (edited ones with the edit), one per input, never one
whose reviewers disagree and no owner has resolved; plus, when asked, inputs that carry a human
reference output. An input with a human reference that is included is taught the reference,
not the teacher's answer.
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, cast

from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Max, Q

from dataset_versions.models import DatasetItem, DatasetVersion
from jobs.models import Job
from projects.models import InputRow, Project
from review.models import AuditAction, ReviewDecision
from review.services import audit_record
from teachers.models import ReviewStatus, TeacherOutput
from worker import datasets
from worker.taskspec import TaskSpec, canonical_output

logger = logging.getLogger(__name__)

Progress = Callable[[int, int, dict[str, Any]], None]

#: (format key, file stem, title) of the downloads every version has.
EXPORT_FORMATS = {
    "openai": ("openai_chat", "OpenAI chat JSONL"),
    "hf": ("prompt_completion", "Hugging Face prompt/completion JSONL"),
    "csv": ("dataset", "CSV (formula-safe)"),
}
EXPORT_SPLITS = ("all", *datasets.SPLITS)


@dataclass(frozen=True)
class FreezeOptions:
    """What the freeze form asks: the engine's params plus which rows to select."""

    name: str
    params: datasets.FreezeParams
    include_references: bool = False

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self.params), "include_references": self.include_references}


def freeze_options(
    *,
    name: str,
    seed: int = 0,
    train: float = 0.8,
    validation: float = 0.1,
    test: float = 0.1,
    include_references: bool = False,
    real_ratio: float | None = None,
    stratify: bool = True,
    near_duplicate_threshold: float = 0.8,
    group_near_duplicates: bool = True,
    max_synthetic_train_share: float | None = None,
) -> FreezeOptions:
    params = datasets.FreezeParams(
        seed=seed,
        train=train,
        validation=validation,
        test=test,
        real_ratio=real_ratio if include_references else None,
        stratify=stratify,
        near_duplicate_threshold=near_duplicate_threshold,
        near_duplicates="group" if group_near_duplicates else "report",
        on_invalid="skip",
        max_synthetic_train_share=max_synthetic_train_share,
    )
    try:
        params.validate()
    except datasets.DatasetError as exc:
        raise ValidationError({exc.field or "__all__": exc.message}) from None
    name = name.strip()
    if not name:
        raise ValidationError({"name": "a dataset version needs a name"})
    return FreezeOptions(name=name[:120], params=params, include_references=include_references)


def _options_from_json(name: str, data: dict[str, Any]) -> FreezeOptions:
    include = bool(data.pop("include_references", False))
    return FreezeOptions(
        name=name, params=datasets.FreezeParams(**data), include_references=include
    )


# Selection --------------------------------------------------------------------------------------


def _accepted_outputs(project: Project) -> Any:
    return TeacherOutput.objects.filter(
        project=project,
        review_status__in=[ReviewStatus.APPROVED, ReviewStatus.EDITED],
        review_conflict=False,
    )


def freeze_candidates_count(*, project: Project, include_references: bool) -> dict[str, int]:
    """What a freeze would start from (before validation, the ratio and one-per-input)."""
    accepted = _accepted_outputs(project)
    counts = {
        "approved": accepted.filter(review_status=ReviewStatus.APPROVED).count(),
        "edited": accepted.filter(review_status=ReviewStatus.EDITED).count(),
        "inputs_with_accepted_output": accepted.values("input_id").distinct().count(),
        "references": InputRow.objects.filter(project=project)
        .filter(reference_output__isnull=False)
        .exclude(reference_output="")
        .count(),
        "conflicts": TeacherOutput.objects.filter(project=project, review_conflict=True).count(),
    }
    counts["include_references"] = int(include_references)
    return counts


def dataset_rows(*, project: Project, include_references: bool) -> list[datasets.DatasetRow]:
    """The candidate rows for a freeze, with the decisions that let each teacher row in."""
    spec = project.task_spec()
    chosen = _chosen_teacher_outputs(project)
    references = _human_references(project) if include_references else {}
    data, synthetic = _input_data(project, needed=set(chosen) | set(references))
    decisions = _counting_decision_ids(project)
    rows: list[datasets.DatasetRow] = []
    for input_id, (pk, _, status, parsed, parse_error, raw, edited, *signals) in chosen.items():
        rationale, distribution = signals
        if input_id in references:
            continue  # the human reference is taught for this input
        rows.append(
            datasets.DatasetRow(
                row_id=f"out-{pk}",
                inputs=data[input_id],
                output=_teacher_output_text(spec, status, parsed, parse_error, raw, edited),
                source="teacher_edited" if status == ReviewStatus.EDITED else "teacher",
                decision_ids=(decisions[pk],) if pk in decisions else (),
                synthetic_input=input_id in synthetic,
                rationale=rationale or "",
                # A reviewer's edit is taught as given (one-hot), never as the teacher's guess.
                label_distribution=distribution if status != ReviewStatus.EDITED else None,
            )
        )
    for input_id, reference in references.items():
        rows.append(
            datasets.DatasetRow(
                row_id=f"ref-{input_id}",
                inputs=data[input_id],
                output=reference,
                source="human_reference",
                synthetic_input=input_id in synthetic,
            )
        )
    return rows


def _chosen_teacher_outputs(project: Project) -> dict[int, tuple[Any, ...]]:
    """Input id -> the (pk, input_id, review_status, parsed, parse_error, raw_text, edited_value,
    rationale, label_distribution) of the one accepted output taught for it."""
    outputs = list(
        _accepted_outputs(project).values_list(
            "pk",
            "input_id",
            "review_status",
            "parsed",
            "parse_error",
            "raw_text",
            "edited_value",
            "rationale",
            "label_distribution",
        )
    )
    # Per input, one teacher row: an edited output first, else the earliest approved one.
    outputs.sort(key=lambda o: (o[1], o[2] != ReviewStatus.EDITED, o[0]))
    chosen: dict[int, tuple[Any, ...]] = {}
    for row in outputs:
        chosen.setdefault(row[1], row)
    return chosen


def _human_references(project: Project) -> dict[int, str]:
    """Input id -> its non-empty human reference output."""
    return {
        pk: reference or ""
        for pk, reference in InputRow.objects.filter(
            project=project, reference_output__isnull=False
        )
        .exclude(reference_output="")
        .values_list("pk", "reference_output")
    }


def _input_data(project: Project, *, needed: set[int]) -> tuple[dict[int, Any], set[int]]:
    """(input id -> its data, the ids of synthetic inputs) for the ``needed`` inputs; past 20000
    ids the whole project is read instead of one very long IN list."""
    data: dict[int, Any] = {}
    synthetic: set[int] = set()
    for pk, values, is_synthetic in (
        InputRow.objects.filter(project=project, pk__in=needed).values_list(
            "pk", "data", "synthetic"
        )
        if len(needed) < 20000
        else InputRow.objects.filter(project=project).values_list("pk", "data", "synthetic")
    ):
        data[pk] = values
        if is_synthetic:
            synthetic.add(pk)
    return data, synthetic


def _counting_decision_ids(project: Project) -> dict[int, int]:
    """Output id -> the id of the last live review decision that accepted it (the audit link
    each teacher row carries)."""
    return dict(
        ReviewDecision.objects.filter(
            project=project,
            counts_for_output=True,
            undone_at__isnull=True,
            output__review_status__in=[ReviewStatus.APPROVED, ReviewStatus.EDITED],
        )
        .values_list("output_id")
        .annotate(last=Max("id"))
        .order_by()
    )


def _teacher_output_text(
    spec: TaskSpec, status: str, parsed: Any, parse_error: str, raw: str, edited: Any
) -> str:
    if status == ReviewStatus.EDITED and edited is not None:
        return canonical_output(spec, edited)
    if parsed is not None and not parse_error:
        return canonical_output(spec, parsed)
    return raw  # the engine validates it and lists it as skipped if it does not parse


# Freeze -----------------------------------------------------------------------------------------


def _versions_dir(project: Project) -> Path:
    return settings.DATA_DIR / "datasets" / f"team-{project.team_id}" / f"project-{project.pk}"


class _Tee:
    """A text sink that writes to two files (the whole version's and the row's split's)."""

    def __init__(self, *sinks: Any) -> None:
        self.sinks = sinks

    def write(self, text: str) -> int:
        for sink in self.sinks:
            sink.write(text)
        return len(text)


def _write_exports(spec: TaskSpec, frozen: datasets.FrozenVersion, folder: Path) -> dict[str, str]:
    """Every download, written once at freeze time (a version never changes, so neither do
    they): per JSONL format one file for all rows and one per split, and one CSV."""
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    writers: dict[str, Callable[[TaskSpec, Iterable[datasets.FrozenRow], IO[str]], int]] = {
        "openai": datasets.write_openai_chat_jsonl,
        "hf": datasets.write_prompt_completion_jsonl,
    }
    for key, writer in writers.items():
        handles = {}
        try:
            for split in EXPORT_SPLITS:
                path = folder / f"{EXPORT_FORMATS[key][0]}-{split}.jsonl"
                handles[split] = path.open("w", encoding="utf-8")
                files[f"{key}:{split}"] = str(path.relative_to(settings.DATA_DIR))
            # Each row is rendered once and lands in both the all-rows file and its split's.
            tees = {s: _Tee(handles["all"], handles[s]) for s in datasets.SPLITS}
            for row in frozen.rows:
                writer(spec, (row,), cast(IO[str], tees[row.split]))
        finally:
            for handle in handles.values():
                handle.close()
    path = folder / "dataset.csv"
    with path.open("w", encoding="utf-8", newline="") as fh:
        datasets.write_csv(spec, frozen.rows, fh)
    files["csv:all"] = str(path.relative_to(settings.DATA_DIR))
    return files


def _no_progress(done: int, total: int, figures: dict[str, Any]) -> None:
    return None


def dataset_version_create(
    *,
    project: Project,
    user: User | None,
    options: FreezeOptions,
    job: Job | None = None,
    progress: Progress | None = None,
) -> DatasetVersion:
    """Freeze now: select rows, split, hash, store the version with its rows and export files,
    and record the freeze in the audit trail (all in one transaction)."""
    progress = progress or _no_progress
    spec = project.task_spec()
    timings: dict[str, float] = {}
    started = time.perf_counter()
    if DatasetVersion.objects.filter(project=project, name=options.name).exists():
        raise ValidationError(
            {"name": f"this project already has a version named {options.name!r}"}
        )
    progress(0, 4, {"phase": "selecting rows"})
    rows = dataset_rows(project=project, include_references=options.include_references)
    timings["select_s"] = time.perf_counter() - started
    if not rows:
        raise ValidationError(
            "Nothing to freeze: approve (or edit) some teacher outputs first"
            + (
                ", or include inputs with human references."
                if not options.include_references
                else "."
            )
        )
    progress(1, 4, {"phase": "splitting"})
    mark = time.perf_counter()
    frozen = datasets.freeze(spec, rows, options.params)
    timings["freeze_s"] = time.perf_counter() - mark
    if not frozen.rows:
        reasons = "; ".join(f"{s.row_id}: {s.reason}" for s in frozen.skipped[:3])
        raise ValidationError(f"No row is valid for the task ({reasons}).")
    progress(2, 4, {"phase": "writing exports"})
    mark = time.perf_counter()
    folder = _versions_dir(project) / f"{frozen.content_hash[:12]}-{uuid.uuid4().hex[:8]}"
    try:
        files = _write_exports(spec, frozen, folder)
        timings["exports_s"] = time.perf_counter() - mark
        progress(3, 4, {"phase": "storing rows"})
        mark = time.perf_counter()
        with transaction.atomic():
            version = _store_version(
                project=project, user=user, options=options, frozen=frozen, files=files, job=job
            )
            _audit_freeze(version=version, user=user, options=options, frozen=frozen)
        timings["store_s"] = time.perf_counter() - mark
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    logger.info(
        "dataset freeze project=%s rows=%d %s total=%.2fs",
        project.pk,
        len(frozen.rows),
        " ".join(f"{k}={v:.2f}" for k, v in timings.items()),
        time.perf_counter() - started,
    )
    progress(4, 4, {"phase": "done"})
    return version


def _store_version(
    *,
    project: Project,
    user: User | None,
    options: FreezeOptions,
    frozen: datasets.FrozenVersion,
    files: dict[str, str],
    job: Job | None,
) -> DatasetVersion:
    """The version row and its items, from the engine's frozen version."""
    version = DatasetVersion.objects.create(
        project=project,
        name=options.name,
        content_hash=frozen.content_hash,
        params=options.as_json(),
        stats=asdict(frozen.stats),
        leakage=frozen.leakage.to_dict(),
        skipped=[asdict(s) for s in frozen.skipped[:1000]],
        row_count=len(frozen.rows),
        decision_count=len(frozen.decision_ids),
        files=files,
        job=job,
        created_by=user if getattr(user, "pk", None) else None,
    )
    DatasetItem.objects.bulk_create(
        (
            DatasetItem(
                version=version,
                row_id=str(r.row_id),
                split=r.split,
                source=r.source,
                group=r.group,
                inputs=dict(r.inputs),
                output=r.output,
                decision_ids=list(r.decision_ids),
                rationale=r.rationale,
                label_distribution=dict(r.label_distribution) if r.label_distribution else None,
                teacher_output_id=_id_after(str(r.row_id), "out-"),
                input_row_id=_id_after(str(r.row_id), "ref-"),
                synthetic_input=r.synthetic_input,
            )
            for r in frozen.rows
        ),
        batch_size=5000,
    )
    return version


def _audit_freeze(
    *,
    version: DatasetVersion,
    user: User | None,
    options: FreezeOptions,
    frozen: datasets.FrozenVersion,
) -> None:
    counts = frozen.stats.counts
    audit_record(
        project=version.project,
        actor=user,
        action=AuditAction.FREEZE,
        dataset_version=version,
        summary=(
            f"{getattr(user, 'username', '') or 'someone'} froze dataset version "
            f"{version.name!r}: {len(frozen.rows):,} rows (train {counts['train']:,}, "
            f"validation {counts['validation']:,}, test {counts['test']:,}), "
            f"hash {frozen.content_hash[:12]}"
        ),
        after={
            "content_hash": frozen.content_hash,
            "rows": len(frozen.rows),
            "counts": counts,
            "params": options.as_json(),
        },
        detail={
            "decision_ids_count": len(frozen.decision_ids),
            "skipped": len(frozen.skipped),
            "leakage_ok": frozen.leakage.ok,
        },
    )


def _id_after(row_id: str, prefix: str) -> int | None:
    return int(row_id[len(prefix) :]) if row_id.startswith(prefix) else None


def dataset_freeze_start(*, project: Project, user: User, options: FreezeOptions) -> Job:
    """Check the options, then freeze in a background job (large projects take seconds)."""
    from jobs.models import JobKind
    from jobs.services import job_create

    if DatasetVersion.objects.filter(project=project, name=options.name).exists():
        raise ValidationError(
            {"name": f"this project already has a version named {options.name!r}"}
        )
    counts = freeze_candidates_count(project=project, include_references=options.include_references)
    if not (
        counts["approved"] + counts["edited"]
        or (options.include_references and counts["references"])
    ):
        raise ValidationError(
            "Nothing to freeze yet: approve (or edit) some teacher outputs first"
            + ("." if options.include_references else ", or include inputs with human references.")
        )
    return job_create(
        team=project.team,
        project=project,
        kind=JobKind.DATASET_FREEZE,
        user=user,
        params={"name": options.name, "options": options.as_json()},
        total=4,
    )


def dataset_freeze_job_run(*, job: Job, progress: Progress) -> dict[str, Any]:
    if job.project_id is None:
        raise RuntimeError("a dataset freeze job belongs to a project")
    project = Project.objects.get(pk=job.project_id)
    options = _options_from_json(job.params["name"], dict(job.params["options"]))
    try:
        version = dataset_version_create(
            project=project, user=job.created_by, options=options, job=job, progress=progress
        )
    except ValidationError as exc:
        raise RuntimeError(" ".join(exc.messages)) from None
    return {
        "dataset_version_id": version.pk,
        "name": version.name,
        "rows": version.row_count,
        "content_hash": version.content_hash,
    }


def versions_for(*, project: Project) -> Any:
    return DatasetVersion.objects.filter(project=project).select_related("created_by")


def export_file(*, version: DatasetVersion, fmt: str, split: str) -> tuple[Path, str]:
    """The stored export file for a format and split, and the download's file name."""
    if fmt not in EXPORT_FORMATS:
        raise ValidationError(f"unknown format {fmt!r}; choose {', '.join(EXPORT_FORMATS)}")
    key = f"{fmt}:{'all' if fmt == 'csv' else split}"
    if key not in version.files:
        raise ValidationError(f"no {fmt} export for split {split!r}")
    path = settings.DATA_DIR / version.files[key]
    stem, _ = EXPORT_FORMATS[fmt]
    safe_name = "".join(c if c.isalnum() or c in "-_" else "-" for c in version.name)[:60]
    suffix = "csv" if fmt == "csv" else f"{split}.jsonl"
    return path, f"{safe_name}-{stem}.{suffix}"


def items_query(*, version: DatasetVersion, split: str = "", q: str = "") -> Any:
    items = DatasetItem.objects.filter(version=version)
    if split in datasets.SPLITS:
        items = items.filter(split=split)
    if q:
        items = items.filter(Q(output__icontains=q) | Q(row_id=q))
    return items.order_by("id")
