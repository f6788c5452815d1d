"""A folder a user types resolves inside their own team's area only; the refusal reads the same
whether the folder is missing or another team's, so it tells an outsider nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.exceptions import ValidationError

from teams.paths import resolve_team_model_folder


def model_at(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    return folder


@pytest.fixture
def data_dir(tmp_path, settings):
    settings.DATA_DIR = tmp_path / "data"
    return settings.DATA_DIR


def resolve(text: str, data_dir: Path, team_id: int = 2, roots: list[Path] | None = None) -> Path:
    return resolve_team_model_folder(
        text, team_id=team_id, roots=roots or [data_dir], field="local_path"
    )


def refusal(text: str, data_dir: Path, **kw) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError) as caught:
        resolve(text, data_dir, **kw)
    return caught.value.message_dict["local_path"][0].replace(text, "<path>")


def test_own_team_and_shared_models_are_allowed(data_dir):
    own = model_at(data_dir / "finetunes" / "team-2" / "project-5" / "finetune-9" / "merged")
    shared = model_at(data_dir / "models" / "smollm2-135m")
    assert resolve("finetunes/team-2/project-5/finetune-9/merged", data_dir) == own
    assert resolve(str(shared), data_dir) == shared


def test_another_teams_folder_is_refused_like_a_missing_one(data_dir):
    model_at(data_dir / "finetunes" / "team-1" / "project-1" / "finetune-1" / "merged")
    other = refusal("finetunes/team-1/project-1/finetune-1/merged", data_dir)
    missing = refusal("finetunes/team-1/project-1/finetune-404/merged", data_dir)
    assert other == missing and "team-2" in other and "finetune-1" not in other


def test_symlinks_and_dot_dots_are_resolved_before_the_check(data_dir):
    victim = model_at(data_dir / "finetunes" / "team-1" / "project-1" / "finetune-1" / "merged")
    own = data_dir / "finetunes" / "team-2"
    own.mkdir(parents=True)
    (own / "link").symlink_to(victim)
    refusal("finetunes/team-2/link", data_dir)
    refusal("finetunes/team-2/../team-1/project-1/finetune-1/merged", data_dir)
    refusal(
        str(data_dir / ".." / "data" / "finetunes" / "team-1/project-1/finetune-1/merged"), data_dir
    )


def test_files_of_the_server_itself_are_not_reachable(data_dir):
    model_at(data_dir / "broker")
    refusal("broker", data_dir)
    refusal(str(data_dir), data_dir)


def test_an_operator_root_outside_the_data_dir_is_shared_on_purpose(data_dir, tmp_path):
    shared = model_at(tmp_path / "company-models" / "llama")
    assert resolve(str(shared), data_dir, roots=[data_dir, tmp_path / "company-models"]) == shared
    refusal(str(shared), data_dir)  # not listed: refused
