"""The CLI's commands for the journey after inputs: teacher, review, dataset, fine-tune, evaluation,
report, export. Each long operation takes ``--wait`` (a progress line on stderr; exit 3 when the
job fails or is cancelled)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from distillery_client.cli import Context, emit, fail, json_option, main, pass_ctx, table, wait_for


def parse_pairs(pairs: tuple[str, ...], option: str) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"{option} takes KEY=VALUE, got {pair!r}", code=2)
        out[key.strip()] = value.strip()
    return out


# Teacher -----------------------------------------------------------------------------------------


@main.group()
def teacher() -> None:
    """Teacher runs: estimate, start, follow."""


def run_settings(
    credential: str | None, model: str, selection: str, sample: int | None, budget: float | None
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "selection": "sample" if sample else selection}
    if credential:
        body["credential"] = credential
    if sample:
        body["sample_size"] = sample
    if budget is not None:
        body["budget_usd"] = str(budget)
    return body


teacher_options = [
    click.option("--project", "-p", required=True, help="The project's slug."),
    click.option("--credential", "-c", help="The provider credential's name or id."),
    click.option("--model", "-m", default="", help="The teacher model, e.g. gpt-4o-mini."),
    click.option("--sample", type=int, help="Only a seeded sample of this many inputs."),
]


def with_teacher_options(command: Any) -> Any:
    for option in reversed(teacher_options):
        command = option(command)
    return command


@teacher.command("estimate")
@with_teacher_options
@json_option
@pass_ctx
def teacher_estimate(
    ctx: Context, project: str, credential: str | None, model: str, sample: int | None
) -> None:
    """What a run would cost, before starting it."""
    body = run_settings(credential, model, "all", sample, None)
    estimate = ctx.client.post(f"/projects/{project}/teacher-runs/estimate", body)
    emit(ctx, estimate, lambda e: "\n".join(f"{k}: {v}" for k, v in e.items()))


@teacher.command("run")
@with_teacher_options
@click.option("--budget", type=float, help="Stop before spending more than this (USD).")
@click.option("--wait", is_flag=True, help="Follow the run until it finishes.")
@json_option
@pass_ctx
def teacher_run(
    ctx: Context,
    project: str,
    credential: str | None,
    model: str,
    sample: int | None,
    budget: float | None,
    wait: bool,
) -> None:
    """Start a teacher run on the project's inputs."""
    body = run_settings(credential, model, "all", sample, budget)
    started = ctx.client.post(f"/projects/{project}/teacher-runs", body)
    run = started["run"]
    if wait:
        wait_for(ctx, started["job"]["id"])
        run = ctx.client.get(f"/teacher-runs/{run['id']}")
    emit(
        ctx,
        run,
        lambda r: (
            f"teacher run {r['id']} ({r['model'] or 'local'}): {r['status']}, "
            f"{r['progress']['done']}/{r['progress']['total']} answered, ${r['cost_usd']} spent"
        ),
    )


# Review ------------------------------------------------------------------------------------------


@main.group()
def review() -> None:
    """Decide teacher outputs in bulk by the review queue's filters."""


def _bulk(ctx: Context, action: str, project: str, filters: tuple[str, ...], yes: bool) -> None:
    body: dict[str, Any] = {"action": action, "filters": parse_pairs(filters, "--filter")}
    path = f"/projects/{project}/outputs/bulk-decision"
    preview = ctx.client.post(path, {**body, "dry_run": True})
    if not yes and not ctx.as_json:
        click.confirm(f"{action} {preview['matched']} output(s)?", abort=True, err=True)
    done = ctx.client.post(path, {**body, "expected_count": preview["matched"]})
    emit(ctx, done, lambda d: f"{d['changed']} of {d['matched']} output(s) {action}d")


def review_command(action: str) -> Any:
    @click.option("--project", "-p", required=True)
    @click.option(
        "--filter",
        "filters",
        multiple=True,
        help="KEY=VALUE as on the review page: status=unreviewed, flag=none, label=…, q=…",
    )
    @click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
    @json_option
    @pass_ctx
    def command(ctx: Context, project: str, filters: tuple[str, ...], yes: bool) -> None:
        _bulk(ctx, action, project, filters, yes)

    command.__doc__ = f"{action.title()} every output the filters match (a dry run counts first)."
    return review.command(action)(command)


review_command("approve")
review_command("reject")


# Dataset versions --------------------------------------------------------------------------------


@main.group()
def dataset() -> None:
    """Frozen dataset versions."""


@dataset.command("freeze")
@click.option("--project", "-p", required=True)
@click.option("--name", required=True, help="The version's name, e.g. v1.")
@click.option("--option", "options", multiple=True, help="KEY=VALUE of the freeze form (seed=1).")
@click.option("--wait/--no-wait", default=True, show_default=True)
@json_option
@pass_ctx
def dataset_freeze(
    ctx: Context, project: str, name: str, options: tuple[str, ...], wait: bool
) -> None:
    """Freeze the approved outputs into a new version."""
    started = ctx.client.post(
        f"/projects/{project}/versions", {"name": name, **parse_pairs(options, "--option")}
    )
    result: dict[str, Any] = started
    if wait:
        wait_for(ctx, started["job"]["id"])
        versions = ctx.client.get(f"/projects/{project}/versions")["results"]
        result = next(v for v in versions if v["name"] == name)
    emit(ctx, result, lambda v: f"version {v.get('id', '(freezing)')} {name}")


@dataset.command("list")
@click.option("--project", "-p", required=True)
@json_option
@pass_ctx
def dataset_list(ctx: Context, project: str) -> None:
    """A project's versions."""
    rows = list(ctx.client.paginate(f"/projects/{project}/versions"))
    emit(ctx, rows, lambda r: table(r, ["id", "name", "created_at"]))


# Fine-tunes and evaluations ---------------------------------------------------------------------


@main.group()
def finetune() -> None:
    """Fine-tune a student on a version."""


@finetune.command("start")
@click.option("--version", "version_id", required=True, type=int, help="The dataset version id.")
@click.option("--student", required=True, help="A registered student's id (see `students`).")
@click.option("--preset", help="fast, balanced or thorough (default: the page's suggestion).")
@click.option("--set", "values", multiple=True, help="KEY=VALUE hyperparameter (epochs=2).")
@click.option("--wait", is_flag=True)
@json_option
@pass_ctx
def finetune_start(
    ctx: Context,
    version_id: int,
    student: str,
    preset: str | None,
    values: tuple[str, ...],
    wait: bool,
) -> None:
    """Start a fine-tune."""
    body: dict[str, Any] = {"student": student, **parse_pairs(values, "--set")}
    if preset:
        body["preset"] = preset
    fine_tune = ctx.client.post(f"/versions/{version_id}/finetunes", body)
    if wait:
        wait_for(ctx, fine_tune["job_id"])
        fine_tune = ctx.client.get(f"/finetunes/{fine_tune['id']}")
    emit(
        ctx,
        fine_tune,
        lambda f: (
            f"fine-tune {f['id']} of version {f['dataset_version_id']}"
            + (f": student {f['result_student_id']}" if f.get("result_student_id") else "")
        ),
    )


@main.command()
@json_option
@pass_ctx
def students(ctx: Context) -> None:
    """The team's students (base models and distilled)."""
    rows = list(ctx.client.paginate("/students"))
    emit(ctx, rows, lambda r: table(r, ["id", "name", "kind", "project", "created_at"]))


@main.group(name="eval")
def evaluation() -> None:
    """Evaluate teacher and students on a version's test split."""


@evaluation.command("start")
@click.option("--project", "-p", required=True)
@click.option("--version", "version_id", required=True, type=int)
@click.option("--distilled", multiple=True, type=int, help="A distilled student's id (repeat).")
@click.option("--option", "options", multiple=True, help="KEY=VALUE of the evaluation form.")
@click.option("--wait", is_flag=True)
@json_option
@pass_ctx
def evaluation_start(
    ctx: Context,
    project: str,
    version_id: int,
    distilled: tuple[int, ...],
    options: tuple[str, ...],
    wait: bool,
) -> None:
    """Start an evaluation."""
    body: dict[str, Any] = {"dataset_version": version_id, **parse_pairs(options, "--option")}
    if distilled:
        body["distilled"] = list(distilled)
    result = ctx.client.post(f"/projects/{project}/evaluations", body)
    if wait:
        wait_for(ctx, result["job_id"])
        result = ctx.client.get(f"/evaluations/{result['id']}")
    emit(ctx, result, lambda e: f"evaluation {e['id']}: {e['status']}")


# Report and exports ------------------------------------------------------------------------------


@main.command()
@click.option("--project", "-p", required=True)
@json_option
@pass_ctx
def report(ctx: Context, project: str) -> None:
    """The go/no-go report (the numbers of the report page)."""
    body = ctx.client.get(f"/projects/{project}/report")

    def human(r: dict[str, Any]) -> str:
        lines = [f"{r['verdict']['title']}: {r['verdict']['sentence']}"]
        if r.get("break_even_month"):
            lines.append(f"break-even in month {r['break_even_month']}")
        return "\n".join(lines)

    emit(ctx, body, human)


@main.command()
@click.option("--version", "version_id", type=int, help="A dataset version to export.")
@click.option("--format", "fmt", default="openai", show_default=True, help="openai, hf or csv.")
@click.option("--split", default="all", show_default=True)
@click.option("--student", "student_id", type=int, help="A student to download instead.")
@click.option("--artifact", default="model", show_default=True, help="model, adapter, tokenizer.")
@click.option("--out", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True)
@pass_ctx
def export(
    ctx: Context,
    version_id: int | None,
    fmt: str,
    split: str,
    student_id: int | None,
    artifact: str,
    out: Path,
) -> None:
    """Download a dataset version's export or a student's files."""
    if (version_id is None) == (student_id is None):
        fail("give exactly one of --version or --student", code=2)
    if version_id is not None:
        path = f"/versions/{version_id}/export?format={fmt}&split={split}"
    else:
        path = f"/students/{student_id}/download/{artifact}"
    partial = out.with_name(out.name + ".part")
    try:
        with partial.open("wb") as fh:
            size = ctx.client.download(path, fh)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(out)  # never leave half a file under the real name
    click.echo(f"{out} ({size:,} bytes)", err=True)
