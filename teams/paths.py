"""Folders a user types (a local student, a local teacher): they must resolve inside their own
team's area, after symlinks are followed, and a refusal never says what exists elsewhere.

Inside the shared data directory a team may use the shared `models/` folder (base models the
server prepared) and any `<area>/team-<its id>/…` folder (its fine-tunes, exports). Folders an
operator lists in a setting outside the data directory are shared on purpose and allowed whole.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ValidationError

SHARED_MODELS_DIR = "models"


def team_folder_allowed(resolved: Path, *, team_id: int, roots: Iterable[Path]) -> bool:
    data_dir = Path(settings.DATA_DIR).resolve()
    for root in (Path(r).resolve() for r in roots):
        if resolved != root and root not in resolved.parents:
            continue
        if root != data_dir and data_dir not in root.parents and root not in data_dir.parents:
            return True  # an operator's shared folder outside the data directory
        if data_dir != resolved and data_dir not in resolved.parents:
            continue
        parts = resolved.relative_to(data_dir).parts
        if parts[:1] == (SHARED_MODELS_DIR,):
            return True
        if len(parts) >= 2 and parts[1] == f"team-{team_id}":
            return True
    return False


def resolve_team_model_folder(
    text: str, *, team_id: int, roots: Iterable[Path], field: str
) -> Path:
    """The folder `text` names (absolute, or relative to the data directory), if it holds a
    Hugging Face model (config.json) inside this team's area; else a ValidationError on `field`
    that reads the same whether the folder is missing or belongs to someone else."""
    text = text.strip()
    if not text:
        raise ValidationError({field: "give the model's folder"})
    candidate = Path(text)
    if not candidate.is_absolute():
        candidate = Path(settings.DATA_DIR) / candidate
    resolved = candidate.resolve()
    if (
        not team_folder_allowed(resolved, team_id=team_id, roots=roots)
        or not (resolved / "config.json").is_file()
    ):
        raise ValidationError(
            {
                field: f"{text}: no model folder of this team there. Use a folder with a Hugging "
                f"Face model (config.json) under the shared '{SHARED_MODELS_DIR}/' folder or your "
                f"team's own folders (…/team-{team_id}/…) of the data directory"
            }
        )
    return resolved
