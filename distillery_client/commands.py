"""The CLI's commands, one group per stage of the journey."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import click

from distillery_client.cli import (
    Context,
    emit,
    fail,
    json_option,
    main,
    pass_ctx,
    show_progress,
    table,
    wait_for,
)


@main.command()
@click.option("--name", default="", help="Only projects whose name contains this.")
@json_option
@pass_ctx
def projects(ctx: Context, name: str) -> None:
    """List the team's projects."""
    rows = list(ctx.client.paginate("/projects", name=name))
    emit(ctx, rows, lambda r: table(r, ["slug", "name", "metric", "created_at"]))


@main.group()
def jobs() -> None:
    """Long operations: imports, teacher runs, freezes, fine-tunes, evaluations."""


@jobs.command("show")
@click.argument("job_id", type=int)
@click.option("--wait", is_flag=True, help="Wait until it finishes (exit 3 if it fails).")
@json_option
@pass_ctx
def jobs_show(ctx: Context, job_id: int, wait: bool) -> None:
    """A job's status and progress."""
    job = wait_for(ctx, job_id) if wait else ctx.client.job(job_id)
    emit(
        ctx, job, lambda j: table([j], ["id", "kind", "status", "progress_done", "progress_total"])
    )


# Inputs ------------------------------------------------------------------------------------------


def read_records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line, record) for a CSV, JSONL or JSON-array file; a bad line stops with its number."""
    text = path.read_text(encoding="utf-8-sig")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        return [(reader.line_num, dict(row)) for row in reader]
    if suffix == ".json":
        try:
            items = json.loads(text)
        except ValueError as exc:
            fail(f"{path.name}: not valid JSON ({exc})")
        if not isinstance(items, list):
            fail(f"{path.name}: expected a JSON array of objects")
        return [(n, item) for n, item in enumerate(items, start=1)]
    records = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            fail(f"{path.name}, line {n}: not valid JSON ({exc.msg})")
        if not isinstance(item, dict):
            fail(f"{path.name}, line {n}: expected a JSON object")
        records.append((n, item))
    return records


def to_rows(
    records: list[tuple[int, dict[str, Any]]],
    *,
    file_name: str,
    fields: list[str],
    mapping: dict[str, str],
    reference_column: str,
) -> list[dict[str, Any]]:
    """The API rows for the records, all checked before anything is sent."""
    rows = []
    for line, record in records:
        inputs = {}
        for field in fields:
            column = mapping.get(field, field)
            if column not in record:
                fail(f"{file_name}, line {line}: no {column!r} column (input field {field!r})")
            inputs[field] = record[column]
        row: dict[str, Any] = {"inputs": inputs}
        if reference_column and record.get(reference_column) not in (None, ""):
            row["reference_output"] = str(record[reference_column])
        rows.append(row)
    if not rows:
        fail(f"{file_name}: no data rows")
    return rows


@main.group()
def inputs() -> None:
    """A project's input rows."""


@inputs.command("push")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--project", "-p", required=True, help="The project's slug.")
@click.option("--map", "maps", multiple=True, help="FIELD=COLUMN when a column is named otherwise.")
@click.option("--reference-column", default="", help="A column with a known-good answer.")
@click.option("--batch-size", default=5000, show_default=True, type=click.IntRange(1, 10_000))
@json_option
@pass_ctx
def inputs_push(
    ctx: Context,
    file: Path,
    project: str,
    maps: tuple[str, ...],
    reference_column: str,
    batch_size: int,
) -> None:
    """Add the rows of a CSV, JSONL or JSON file as inputs.

    Every line is checked here before anything is sent; each batch is one all-or-nothing write,
    and rows already in the project are skipped, so running it again after a failure is safe."""
    task = ctx.client.get(f"/projects/{project}")["task"]
    fields = task["input_fields"]
    if not fields:
        fail(f"project {project!r} has no task yet: set its input fields first")
    mapping = dict(m.split("=", 1) for m in maps if "=" in m)
    rows = to_rows(
        read_records(file),
        file_name=file.name,
        fields=fields,
        mapping=mapping,
        reference_column=reference_column,
    )
    totals = {"received": 0, "created": 0, "duplicates_in_batch": 0, "already_present": 0}
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        try:
            counts = ctx.client.post(f"/projects/{project}/inputs", {"rows": batch})
        except Exception:
            if start:
                click.echo(
                    f"\n{start} rows were stored before this batch failed; pushing the file "
                    "again skips them",
                    err=True,
                )
            raise
        for key in totals:
            totals[key] += counts[key]
        show_progress(
            {"status": "pushing", "progress_done": start + len(batch), "progress_total": len(rows)}
        )
    click.echo("", err=True)
    emit(
        ctx,
        totals,
        lambda t: (
            f"{t['created']} new inputs from {t['received']} rows "
            f"({t['already_present']} already in the project, {t['duplicates_in_batch']} repeated "
            "in the file)"
        ),
    )


@inputs.command("upload")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--project", "-p", required=True, help="The project's slug.")
@click.option("--map", "maps", multiple=True, help="FIELD=COLUMN (default: the page's guess).")
@click.option("--reference-column", default="")
@click.option("--wait/--no-wait", default=True, show_default=True)
@json_option
@pass_ctx
def inputs_upload(
    ctx: Context,
    file: Path,
    project: str,
    maps: tuple[str, ...],
    reference_column: str,
    wait: bool,
) -> None:
    """Upload a file for the server to import as one all-or-nothing job (a bad line imports
    nothing and is named)."""
    data: dict[str, Any] = {"reference_column": reference_column}
    if maps:
        data["field_map"] = json.dumps(dict(m.split("=", 1) for m in maps if "=" in m))
    with file.open("rb") as fh:
        job = ctx.client.request(
            "POST", f"/projects/{project}/inputs/upload", files={"file": (file.name, fh)}, data=data
        )
    if wait:
        job = wait_for(ctx, job["id"])
    emit(ctx, job, lambda j: f"import job {j['id']}: {j['status']} {j.get('result') or ''}")
