"""Teacher runs: choose inputs, estimate, start, execute (live or batch), pause, resume, cancel.

The public entry point of the app's services. This is the adapter between the database and the
teacher engine (worker.teacher_runner, worker.teachers), split by responsibility:

- teachers.prices: the team's price table and a run's frozen price;
- teachers.runs: choosing inputs, settings, estimate, start, pause, resume, cancel;
- teachers.run_requests: a run's provider configuration and requests;
- teachers.recording: the ledger, the cache, the outputs and the run's totals;
- teachers.live / teachers.batch: executing a run with live calls or as one provider batch;
- teachers.calls: the one path every teacher call takes (runs, the LLM judge, endpoints).
"""

from __future__ import annotations

from typing import Any

from jobs.models import Job
from teachers.batch import batch_begin, teacher_batch_poll_step
from teachers.live import execute_live
from teachers.models import TeacherRun, TeacherRunMode
from teachers.prices import (
    price_entry_delete,
    price_entry_save,
    price_for_model,
    price_from_json,
    price_table_for_team,
    price_to_json,
)
from teachers.recording import ledger_totals
from teachers.run_requests import custom_id_for, provider_config_for_run
from teachers.runs import (
    RunSettings,
    local_model_roots,
    resolve_local_model_path,
    select_input_ids,
    teacher_run_cancel,
    teacher_run_estimate,
    teacher_run_pause,
    teacher_run_resume,
    teacher_run_start,
)


def teacher_run_execute(*, job: Job) -> dict[str, Any]:
    """The work of the ``jobs.teacher_run`` task (live or batch). Raises JobPaused, JobCancelled,
    JobHandedOff (batch: polling continues in ``jobs.teacher_batch_poll``) or an error."""
    run = TeacherRun.objects.select_related("project__team", "credential").get(job=job)
    spec = run.project.task_spec()
    if run.mode == TeacherRunMode.BATCH:
        return batch_begin(job, run, spec)
    return execute_live(job, run, spec)


__all__ = [
    "RunSettings",
    "custom_id_for",
    "ledger_totals",
    "local_model_roots",
    "price_entry_delete",
    "price_entry_save",
    "price_for_model",
    "price_from_json",
    "price_table_for_team",
    "price_to_json",
    "provider_config_for_run",
    "resolve_local_model_path",
    "select_input_ids",
    "teacher_batch_poll_step",
    "teacher_run_cancel",
    "teacher_run_estimate",
    "teacher_run_execute",
    "teacher_run_pause",
    "teacher_run_resume",
    "teacher_run_start",
]
