"""`distillery`: the REST API from a shell or a pipeline.

Exit status: 0 done; 1 the API refused (the message names the field, row or line); 2 a usage
error; 3 a job that was waited for failed or was cancelled. ``--json`` prints machine-readable
output on stdout (progress goes to stderr), for scripts.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from distillery_client import config
from distillery_client.client import ApiError, Distillery, JobFailed

EXIT_API = 1
EXIT_JOB = 3


class Context:
    def __init__(self, url: str | None, token: str | None, as_json: bool) -> None:
        self._url = url
        self._token = token
        self.as_json = as_json
        self._client: Distillery | None = None

    @property
    def client(self) -> Distillery:
        if self._client is None:
            try:
                settings = config.load(self._url, self._token)
            except config.ConfigError as exc:
                fail(str(exc), code=2)
            self._client = Distillery(settings.url, settings.token)
        return self._client


pass_ctx = click.make_pass_decorator(Context)


def fail(message: str, *, code: int = EXIT_API) -> NoReturn:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


def json_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--json`` after the command as well as before it (`distillery report -p x --json`)."""

    def set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        found = ctx.find_object(Context)
        if value and found is not None:
            found.as_json = True

    return click.option(
        "--json",
        "as_json_flag",
        is_flag=True,
        expose_value=False,
        callback=set_json,
        help="Print JSON for scripts.",
    )(command)


def emit(ctx: Context, data: Any, human: Callable[[Any], str | None]) -> None:
    if ctx.as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    text = human(data)
    if text:
        click.echo(text)


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [
        [str(row.get(c, "") if row.get(c) is not None else "—") for c in columns] for row in rows
    ]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def show_progress(job: dict[str, Any]) -> None:
    """One line on stderr, redrawn in place: a bar when the job knows its total."""
    done = job.get("progress_done") or 0
    total = job.get("progress_total") or 0
    status = job.get("status", "?")
    if total:
        width = 30
        filled = int(width * min(done, total) / total)
        bar = "#" * filled + "-" * (width - filled)
        line = f"[{bar}] {done}/{total} {status}"
    else:
        line = f"{status}…"
    extra = job.get("message") or ""
    click.echo(f"\r{line} {extra}"[:120].ljust(120), nl=False, err=True)


def wait_for(ctx: Context, job_id: int) -> dict[str, Any]:
    try:
        job = ctx.client.wait(job_id, on_progress=show_progress)
    except JobFailed as exc:
        click.echo("", err=True)
        if ctx.as_json:
            click.echo(json.dumps(exc.job, indent=2, default=str))
        fail(str(exc), code=EXIT_JOB)
    click.echo("", err=True)
    return job


class ApiGroup(click.Group):
    """Turns an API error anywhere below into its message and exit status 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ApiError as exc:
            fail(exc.describe())


@click.group(cls=ApiGroup)
@click.option("--url", envvar="DISTILLERY_URL", help="The server, e.g. http://127.0.0.1:8000.")
@click.option("--token", envvar="DISTILLERY_TOKEN", help="A team API token (dst_…).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.version_option(package_name="distillery")
@click.pass_context
def main(ctx: click.Context, url: str | None, token: str | None, as_json: bool) -> None:
    """Distillery from the command line: push inputs, run the teacher, review, freeze,
    fine-tune, evaluate and read the go/no-go report."""
    ctx.obj = Context(url, token, as_json)


@main.command()
@click.option("--url", "login_url", required=True, help="The server's address.")
@click.option("--token", "login_token", required=True, help="A token from the API tokens page.")
@pass_ctx
def login(ctx: Context, login_url: str, login_token: str) -> None:
    """Check a URL and token and store them in the config file (mode 600)."""
    client = Distillery(login_url, login_token)
    client.get("/projects", page_size=1)
    path = config.save(config.Settings(url=login_url, token=login_token))
    click.echo(f"signed in to {login_url}; saved in {path}")


# The commands of each stage live next to this module; importing registers them.
from distillery_client import commands, journey  # noqa: E402,F401
