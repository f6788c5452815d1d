"""The project page's "what next" card: the next step of the journey and the latest verdict.

It lives in reports because the verdict is the report's (``reports.selectors``); the project
page, one stage below, loads it as a template tag, so no module of ``projects`` imports reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django import template
from django.urls import reverse

from dataset_versions.models import DatasetVersion
from projects.models import Project
from reports import selectors
from teams.models import Membership

register = template.Library()


@dataclass(frozen=True)
class NextStep:
    """One step of the journey: what to do, where, and the permission it takes."""

    key: str
    title: str
    why: str
    url: str
    permission: str


def next_step(project: Project, stages: dict[str, bool]) -> NextStep | None:
    """The first step not done yet, in the order data flows; None once the project has a report."""
    pk = project.pk
    latest_version = DatasetVersion.objects.filter(project=project).order_by("-pk").first()
    steps = [
        (
            project.has_task,
            NextStep(
                "task",
                "Define the task",
                "An instruction template over the input fields and the kind of answer.",
                reverse("projects:task_edit", args=[pk]),
                "write",
            ),
        ),
        (
            stages["inputs"],
            NextStep(
                "inputs",
                "Upload inputs",
                "Real production inputs as CSV or JSONL, with a reference answer where you have one.",
                reverse("projects:inputs_upload", args=[pk]),
                "write",
            ),
        ),
        (
            stages["teacher"],
            NextStep(
                "teacher",
                "Start a teacher run",
                "A large model answers the inputs; the estimate comes before anything is paid.",
                reverse("teachers:teacher_run_new", args=[pk]),
                "write",
            ),
        ),
        (
            stages["review"],
            NextStep(
                "review",
                "Review the teacher's answers",
                "Approve, reject or edit them before they teach the student.",
                reverse("review:review_queue", args=[pk]) + "?status=unreviewed",
                "review",
            ),
        ),
        (
            latest_version is not None,
            NextStep(
                "dataset",
                "Freeze a dataset version",
                "The approved answers become an immutable version with train/validation/test splits.",
                reverse("dataset_versions:dataset_new", args=[pk]),
                "write",
            ),
        ),
        (
            stages["trained"],
            NextStep(
                "finetune",
                "Fine-tune a student",
                "A small open model learns from the latest frozen version.",
                reverse("finetunes:finetune_new", args=[pk, latest_version.pk])
                if latest_version is not None
                else "",
                "write",
            ),
        ),
        (
            stages["evaluated"],
            NextStep(
                "evaluate",
                "Evaluate the student against the teacher",
                "On the version's test split: quality, latency and cost.",
                reverse("evaluations:evaluation_new", args=[pk]),
                "write",
            ),
        ),
    ]
    return next((step for done, step in steps if not done), None)


@register.inclusion_tag("projects/_journey.html")
def project_journey(project: Project, membership: Membership) -> dict[str, Any]:
    stages = selectors.project_stages(project)
    step = next_step(project, stages)
    verdict = selectors.report_for(project=project).verdict if stages["evaluated"] else None
    return {
        "project": project,
        "step": step,
        "can_take_step": step is not None and membership.can(step.permission),
        "verdict": verdict,
        "report_url": reverse("reports:report", args=[project.pk]),
    }
