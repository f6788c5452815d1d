"""Writes for teams, projects, task specs, credentials and inputs. Keyword-only arguments."""

from __future__ import annotations

import hashlib
import json
import shutil
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, cast

from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils.text import get_valid_filename

from jobs.models import Job
from projects.models import InputRow, InputUpload, Project
from teams.models import Team
from worker import ingest
from worker.taskspec import TaskSpec, TaskSpecError, check_template_on_rows

# Projects and task specs -----------------------------------------------------------------------


def project_create(*, team: Team, user: User, name: str, description: str = "") -> Project:
    if not name.strip():
        raise ValidationError({"name": "a project needs a name"})
    return Project.objects.create(
        team=team, name=name.strip(), description=description, created_by=user
    )


def parse_input_fields(text: str | list[str]) -> list[str]:
    items = text if isinstance(text, list) else text.replace("\n", ",").split(",")
    fields: list[str] = []
    for item in items:
        name = item.strip()
        if name and name not in fields:
            fields.append(name)
    return fields


def parse_label_set(text: str | list[str]) -> list[str]:
    items = text if isinstance(text, list) else text.splitlines()
    labels: list[str] = []
    for item in items:
        label = item.strip()
        if label and label not in labels:
            labels.append(label)
    return labels


#: The task fields the task form shows an error next to.
TASK_FORM_FIELDS = frozenset(
    {"instruction_template", "input_fields", "label_set", "json_schema", "output_kind"}
)

#: How many of the project's own input rows a template is rendered on when the task is saved.
TEMPLATE_SAMPLE_ROWS = 20


def _task_error(exc: TaskSpecError) -> ValidationError:
    """The engine's error keyed by the task field it names in ``field`` (its ``message`` says
    what is wrong, without the field); one naming no form field is for the whole form."""
    if exc.field in TASK_FORM_FIELDS:
        return ValidationError({exc.field: exc.message})
    return ValidationError(str(exc))


def task_spec_validate(spec: TaskSpec, *, sample_rows: Iterable[Mapping[str, Any]] = ()) -> None:
    """Raise ValidationError keyed by form field. Besides the spec itself (its JSON Schema
    included: no remote or recursive references), the template is rendered on ``sample_rows``
    and on a long synthetic row, so one that blows up (a huge number, a padded string, a
    sandbox escape) is refused when saved instead of failing on every row of a run."""
    try:
        spec.validate()
        check_template_on_rows(spec, sample_rows)
    except TaskSpecError as exc:
        raise _task_error(exc) from None


def _sample_rows(project: Project) -> list[dict[str, Any]]:
    rows = InputRow.objects.filter(project=project).order_by("id")[:TEMPLATE_SAMPLE_ROWS]
    return [dict(row.data) for row in rows]


def project_update_task(
    *,
    project: Project,
    input_fields: list[str],
    instruction_template: str,
    system_prompt: str,
    output_kind: str,
    label_set: list[str],
    json_schema: dict[str, Any] | None,
) -> Project:
    spec = TaskSpec(
        instruction_template=instruction_template,
        output_kind=output_kind,  # type: ignore[arg-type]
        input_fields=tuple(input_fields),
        system_prompt=system_prompt,
        label_set=tuple(label_set) if output_kind == "label" else (),
        json_schema=json_schema if output_kind == "json" else None,
    )
    task_spec_validate(spec, sample_rows=_sample_rows(project))
    project.input_fields = list(spec.input_fields)
    project.instruction_template = spec.instruction_template
    project.system_prompt = spec.system_prompt
    project.output_kind = spec.output_kind
    project.label_set = list(spec.label_set)
    project.json_schema = spec.json_schema
    project.save()
    return project


# Inputs ----------------------------------------------------------------------------------------


def _uploads_dir(project: Project) -> Path:
    return settings.DATA_DIR / "uploads" / f"team-{project.team_id}" / f"project-{project.pk}"


def input_upload_create(
    *, project: Project, user: User, file_name: str, source: Any
) -> InputUpload:
    """Store an uploaded file (a Django UploadedFile or a path) and read its columns.

    Raises ingest.IngestError with the file (and line) named when any row cannot be used;
    nothing is kept then.
    """
    file_name = Path(file_name).name
    fmt = ingest.detect_format(file_name)
    relative = (
        Path("uploads") / f"team-{project.team_id}" / f"project-{project.pk}" / uuid.uuid4().hex
    )
    destination = settings.DATA_DIR / relative / get_valid_filename(file_name)
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        if isinstance(source, (str, Path)):
            shutil.copyfile(source, destination)
        else:
            with destination.open("wb") as out:
                for chunk in source.chunks():
                    out.write(chunk)
        ingest.check_file(destination, file_name, max_bytes=settings.MAX_UPLOAD_BYTES)
        # Every row, not just the ones the column sniff reads: a bad line anywhere is shown on
        # the upload form (file and line named) instead of failing the import job later.
        ingest.validate_file(destination, file_name, fmt)
        columns = ingest.sniff_columns(destination, file_name, fmt)
    except Exception:
        shutil.rmtree(destination.parent, ignore_errors=True)
        raise
    return InputUpload.objects.create(
        project=project,
        file_name=file_name,
        file_path=str(destination.relative_to(settings.DATA_DIR)),
        format=fmt,
        columns=columns,
        size_bytes=destination.stat().st_size,
        created_by=user,
    )


def suggested_mapping(*, project: Project, columns: list[str]) -> dict[str, str]:
    lowered = {c.lower(): c for c in columns}
    return {
        field: lowered[field.lower()] for field in project.input_fields if field.lower() in lowered
    }


def input_import_start(
    *, upload: InputUpload, user: User, field_map: dict[str, str], reference_column: str = ""
) -> Job:
    """Validate the mapping and start the import as a background job."""
    from jobs.models import JobKind
    from jobs.services import job_create

    project = upload.project
    missing = [f for f in project.input_fields if not field_map.get(f)]
    if not project.input_fields:
        raise ValidationError("define the task's input fields before importing inputs")
    if missing:
        raise ValidationError(
            {"field_map": f"choose a column for input field(s): {', '.join(missing)}"}
        )
    unknown = sorted(
        {c for c in [*field_map.values(), reference_column] if c and c not in upload.columns}
    )
    if unknown:
        raise ValidationError(
            {"field_map": f"no column named {unknown[0]!r} in {upload.file_name}"}
        )
    with transaction.atomic():
        job = job_create(
            team=project.team,
            project=project,
            kind=JobKind.IMPORT_INPUTS,
            user=user,
            params={
                "upload_id": upload.pk,
                "field_map": {f: field_map[f] for f in project.input_fields},
                "reference_column": reference_column,
            },
            total=_estimate_rows(upload),
        )
        upload.job = job
        upload.save(update_fields=["job"])
    return job


def _estimate_rows(upload: InputUpload) -> int:
    # Newlines over-count multi-line CSV records; the job corrects the total when it finishes.
    count = 0
    with (settings.DATA_DIR / upload.file_path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            count += block.count(b"\n")
    return max(count - (1 if upload.format == "csv" else 0), 1)


def content_hash(data: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class _ImportBatch:
    """Rows of one import waiting to be written, deduplicated against the database one batch at
    a time (rows this job already wrote carry its id), never against an in-memory set of every
    hash in the file."""

    def __init__(self, *, project: Project, job_id: int) -> None:
        self.project = project
        self.job_id = job_id
        self.rows: dict[str, InputRow] = {}
        # Hashes of rows that were in the project before this import and appear in the file:
        # only those need remembering (to count their second appearance as a duplicate).
        self.present_before: set[str] = set()

    def flush(self) -> int:
        """Write the batch; return how many of its rows were already in the file earlier."""
        repeated = 0
        known = InputRow.objects.filter(
            project=self.project, content_hash__in=list(self.rows)
        ).values_list("content_hash", "import_job_id")
        for digest, import_job_id in known:
            del self.rows[digest]
            if import_job_id == self.job_id or digest in self.present_before:
                repeated += 1
            else:
                self.present_before.add(digest)
        InputRow.objects.bulk_create(self.rows.values(), ignore_conflicts=True)
        self.rows.clear()
        return repeated


def _mapped_inputs(
    record: ingest.Record, *, file_name: str, field_map: dict[str, str]
) -> dict[str, str]:
    """A record's values for the task's input fields; a line that cannot be one is an error."""
    data = {}
    for field, column in field_map.items():
        if column not in record.values:
            raise ingest.IngestError(
                file_name, f"the row has no {column!r} field", record.line, field=column
            )
        data[field] = ingest.as_text(record.values[column])
    if not any(v.strip() for v in data.values()):
        raise ingest.IngestError(file_name, "every mapped input field is empty", record.line)
    return data


def _reference_of(record: ingest.Record, reference_column: str) -> str | None:
    if not reference_column:
        return None
    raw = record.values.get(reference_column)
    return ingest.as_text(raw) if raw not in (None, "") else None


def inputs_import_run(*, job: Job, progress: Callable[[int, int], None]) -> dict[str, int]:
    """Import an uploaded file in ONE transaction: a failing line imports nothing.

    `progress(done, total)` is called every batch; it raises to cancel (which rolls back).
    Memory stays flat: the file is streamed and deduplicated one batch at a time.
    """
    upload = InputUpload.objects.get(pk=job.params["upload_id"], project=job.project)
    project = upload.project
    field_map: dict[str, str] = job.params["field_map"]
    reference_column: str = job.params.get("reference_column") or ""
    path = settings.DATA_DIR / upload.file_path
    ingest.check_file(path, upload.file_name, max_bytes=settings.MAX_UPLOAD_BYTES)
    total = job.progress_total
    rows_read = duplicates_in_file = 0
    batch = _ImportBatch(project=project, job_id=job.pk)
    records = ingest.iter_records(path, upload.file_name, cast(ingest.Format, upload.format))
    with transaction.atomic():
        for record in records:
            data = _mapped_inputs(record, file_name=upload.file_name, field_map=field_map)
            rows_read += 1
            digest = content_hash(data)
            if digest in batch.rows:
                duplicates_in_file += 1
                continue
            batch.rows[digest] = InputRow(
                project=project,
                data=data,
                reference_output=_reference_of(record, reference_column),
                content_hash=digest,
                search_text=" ".join(data.values()).lower(),
                source_line=record.line,
                import_job_id=job.pk,
            )
            if len(batch.rows) >= settings.IMPORT_BATCH_SIZE:
                duplicates_in_file += batch.flush()
                total = max(total, rows_read)
                progress(rows_read, total)
        if batch.rows:
            duplicates_in_file += batch.flush()
        if rows_read == 0:
            raise ingest.IngestError(upload.file_name, "the file has no data rows")
        imported = InputRow.objects.filter(project=project, import_job_id=job.pk).count()
    return {
        "rows_read": rows_read,
        "imported": imported,
        "duplicates_in_file": duplicates_in_file,
        "already_present": rows_read - duplicates_in_file - imported,
    }


class InputRowsError(Exception):
    """Rows of a batch that cannot be inputs; nothing of the batch was written. ``errors`` are
    ``{"row": n (1-based), "field": name or None, "message": …}``, at most MAX_ROW_ERRORS."""

    MAX_ROW_ERRORS = 50

    def __init__(self, errors: list[dict[str, Any]], total: int) -> None:
        self.errors = errors
        self.total = total
        shown = f" (first {len(errors)} shown)" if total > len(errors) else ""
        super().__init__(f"{total} row(s) are not valid inputs{shown}; nothing was written")


def _batch_row_data(
    row: Mapping[str, Any], number: int, fields: list[str], errors: list[dict[str, Any]]
) -> dict[str, str] | None:
    unknown = sorted(set(row) - set(fields))
    if unknown:
        errors.append(
            {
                "row": number,
                "field": unknown[0],
                "message": f"unknown field {unknown[0]!r}; the input fields are "
                + ", ".join(fields),
            }
        )
        return None
    missing = [name for name in fields if row.get(name) is None]
    if missing:
        errors.append({"row": number, "field": missing[0], "message": "missing"})
        return None
    data = {name: ingest.as_text(row[name]) for name in fields}
    if not any(value.strip() for value in data.values()):
        errors.append({"row": number, "field": None, "message": "every input field is empty"})
        return None
    return data


def inputs_create(
    *, project: Project, rows: list[Mapping[str, Any]], references: list[str | None] | None = None
) -> dict[str, int]:
    """Add a batch of input rows (each a mapping of the task's input fields) in ONE write:
    any invalid row writes nothing and raises InputRowsError naming each row and field. Rows
    already in the project (same content) and repeats inside the batch are skipped and counted.
    The same rows as the file import stores (content hash, search text), without a source line."""
    if not project.has_task:
        raise ValidationError({"rows": "define the task's input fields before adding inputs"})
    fields = list(project.input_fields)
    errors: list[dict[str, Any]] = []
    total_errors = 0
    pending: dict[str, InputRow] = {}
    for number, row in enumerate(rows, start=1):
        before = len(errors)
        data = _batch_row_data(row, number, fields, errors)
        if data is None:
            total_errors += 1
            del errors[max(before, InputRowsError.MAX_ROW_ERRORS) :]
            continue
        digest = content_hash(data)
        if digest not in pending:
            reference = references[number - 1] if references else None
            pending[digest] = InputRow(
                project=project,
                data=data,
                reference_output=reference,
                content_hash=digest,
                search_text=" ".join(data.values()).lower(),
            )
    if total_errors:
        raise InputRowsError(errors, total_errors)
    with transaction.atomic():
        present = set(
            InputRow.objects.filter(project=project, content_hash__in=list(pending)).values_list(
                "content_hash", flat=True
            )
        )
        new = [row for digest, row in pending.items() if digest not in present]
        InputRow.objects.bulk_create(new, batch_size=2000, ignore_conflicts=True)
    return {
        "received": len(rows),
        "created": len(new),
        "duplicates_in_batch": len(rows) - len(pending),
        "already_present": len(present),
    }
