"""The layout reads like the journey, and the code keeps to it.

Each Django app is one stage. A stage may use the stages before it, never one after it — at
module level or inside a function — so there is no import circle to hide. Job status changes
only in jobs/services.py, and Celery tasks stay thin and keep their registered names.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

#: The journey, in the order data flows. `worker` is the Django-free engine under all of them;
#: `distillery` (settings, URLs, the Celery app) may be read by every app.
JOURNEY = (
    "worker",
    "teams",
    "jobs",
    "projects",
    "teachers",
    "review",
    "dataset_versions",
    "finetunes",
    "evaluations",
    "serving",
    "gateway",
    "reports",
)
RANK = {app: i for i, app in enumerate(JOURNEY)}


def app_modules(app: str, root: Path = REPO) -> Iterator[Path]:
    for path in sorted((root / app).rglob("*.py")):
        if "migrations" not in path.parts:
            yield path


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: use absolute imports"
            yield node.lineno, node.module or ""


def upward_imports(root: Path = REPO) -> list[str]:
    found = []
    for app in JOURNEY:
        for path in app_modules(app, root):
            for line, module in imported_modules(path):
                target = module.split(".")[0]
                if target in RANK and RANK[target] > RANK[app]:
                    rel = path.relative_to(root)
                    found.append(f"{rel}:{line} ({app}) imports {module} ({target}, a later stage)")
    return found


def test_every_app_of_the_journey_is_installed_in_journey_order():
    from django.conf import settings

    ours = [a for a in settings.INSTALLED_APPS if a in RANK]
    assert ours == list(JOURNEY[1:])


def test_imports_only_go_down_the_journey():
    assert upward_imports() == []


def test_the_layering_check_names_an_upward_import(tmp_path):
    """The check itself can fail: an upward import planted in a copy of an app is reported."""
    bad = tmp_path / "teams"
    bad.mkdir()
    (bad / "leak.py").write_text("def f():\n    from reports.selectors import report_for\n")
    assert upward_imports(tmp_path) == [
        "teams/leak.py:2 (teams) imports reports.selectors (reports, a later stage)"
    ]


def status_writes(path: Path) -> list[str]:
    """Places that set a job's status: `x.status = JobStatus.…`, or `status=JobStatus.…` in an
    update()/create() call."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if (
                    isinstance(target, ast.Attribute)
                    and target.attr == "status"
                    and "JobStatus" in ast.unparse(node.value)
                ):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr not in {"update", "create", "get_or_create", "update_or_create"}:
                continue
            for kw in node.keywords:
                if kw.arg == "status" and "JobStatus" in ast.unparse(kw.value):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def test_job_status_changes_only_in_jobs_services():
    outside = [
        place
        for app in JOURNEY[1:]
        for path in app_modules(app)
        if path != REPO / "jobs" / "services.py"
        for place in status_writes(path)
    ]
    assert outside == []
    assert status_writes(REPO / "jobs" / "services.py")  # the check sees real writes


#: Registered Celery task names: messages already in a queue carry these, so they never change.
TASK_NAMES = {
    "jobs.import_inputs",
    "jobs.reap_stale_jobs",
    "jobs.review_checks",
    "jobs.dataset_freeze",
    "jobs.teacher_run",
    "jobs.teacher_batch_poll",
    "jobs.evaluation",
    "jobs.experiment",
    "jobs.fine_tune",
}


def test_celery_task_names_are_stable_and_every_job_kind_has_its_task():
    from distillery.celery import app
    from jobs.services import TASK_FOR_KIND

    app.loader.import_default_modules()
    registered = {name for name in app.tasks if not name.startswith("celery.")}
    assert registered >= TASK_NAMES
    assert {name for name, _ in TASK_FOR_KIND.values()} <= registered


@pytest.mark.parametrize("app", JOURNEY[1:])
def test_celery_tasks_are_thin(app):
    """A task takes ids and makes one service call (plus the claim wrapper): no ORM queries."""
    path = REPO / app / "tasks.py"
    if not path.exists():
        return
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and any(
            "shared_task" in ast.unparse(d) for d in node.decorator_list
        ):
            source = ast.unparse(node)
            assert ".objects." not in source, f"{app}/tasks.py:{node.name} queries the ORM"
            assert len(node.body) <= 12, f"{app}/tasks.py:{node.name} is not thin"
