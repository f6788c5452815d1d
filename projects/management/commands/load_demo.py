"""Create the demo team, user and BANKING77 project (idempotent), importing through the real path."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from jobs import services as job_services
from jobs.models import JobStatus
from projects import services
from projects.models import Project
from projects.tasks import import_inputs
from teams import services as team_services
from teams.models import Membership, Role, Team

DEMO_DIR = Path(__file__).resolve().parents[2] / "demo_data" / "banking77"
DEMO_PROJECT = "Support ticket intents (BANKING77)"


class Command(BaseCommand):
    help = "Load the demo team, user and project (BANKING77 support tickets). Safe to run twice."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--username", default="demo")
        parser.add_argument(
            "--url", default="http://127.0.0.1:8000", help="where the app will be served"
        )

    def handle(self, *args: Any, username: str, url: str, **options: Any) -> None:
        User = get_user_model()
        user = User.objects.filter(username=username).first()
        if user is None:
            password = secrets.token_urlsafe(12)
            user = User.objects.create_user(username=username, password=password)
            self.stdout.write(
                self.style.SUCCESS(
                    f"Demo user created — sign in at {url} as "
                    f"{username} / {password}  (shown once; reset with "
                    f"`manage.py changepassword {username}`)"
                )
            )
        team = Team.objects.filter(memberships__user=user, name="Demo team").first()
        if team is None:
            team = team_services.team_create(name="Demo team", owner=user)
        elif not Membership.objects.filter(team=team, user=user, role=Role.OWNER).exists():
            Membership.objects.update_or_create(team=team, user=user, defaults={"role": Role.OWNER})
        project = Project.objects.filter(team=team, name=DEMO_PROJECT).first()
        if project is not None and project.inputs.exists():
            self.stdout.write(f"Demo project already loaded ({project.inputs.count()} inputs).")
            return
        labels = sorted({json.loads(line)["label"] for line in (DEMO_DIR / "train.jsonl").open()})
        with transaction.atomic():
            if project is None:
                project = services.project_create(
                    team=team,
                    user=user,
                    name=DEMO_PROJECT,
                    description=(
                        "Route online-banking support tickets to one of 77 intents. Inputs are real "
                        "BANKING77 customer queries (CC BY 4.0, PolyAI); the reference outputs are "
                        "the dataset's human gold labels."
                    ),
                )
            services.project_update_task(
                project=project,
                input_fields=["text"],
                instruction_template="Classify this customer support ticket by its intent.\n\nTicket: {{ text }}",
                system_prompt="You route online-banking support tickets to the right team.",
                output_kind="label",
                label_set=labels,
                json_schema=None,
            )
        upload = services.input_upload_create(
            project=project,
            user=user,
            file_name="banking77_demo_train.jsonl",
            source=DEMO_DIR / "train.jsonl",
        )
        job = services.input_import_start(
            upload=upload, user=user, field_map={"text": "text"}, reference_column="label"
        )
        # Run the import here rather than waiting for a worker, so the demo is ready at once.
        # The message the commit sent finds the job already done and does nothing.
        import_inputs(job.pk)
        job.refresh_from_db()
        if job.status != JobStatus.SUCCEEDED:
            job_services.job_fail(job=job, error=job.error)
            raise SystemExit(f"demo import failed: {job.error}")
        self.stdout.write(
            self.style.SUCCESS(
                f"Demo project “{project.name}” loaded with {job.result['imported']} inputs."
            )
        )
