"""Building an export bundle: files, GGUF conversions, the quant check, deploy files, manifest.

The bundle folder (``out_dir``) holds::

    merged/      the merged model: safetensors, config, tokenizer, chat template (hard links)
    adapter/     the LoRA adapter alone (hard links)
    gguf/        <slug>-F16.gguf (llama.cpp's converter), <slug>-Q8_0.gguf, <slug>-Q4_K_M.gguf
                 (llama.cpp's quantiser)
    Modelfile    Ollama, loading the smallest GGUF that passed the quant check
    DEPLOY.md    ollama / vllm serve / curl commands
    manifest.json  every other file with its size and sha256, the quant check, the commands
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from worker.export import deploy
from worker.export.llama_cpp_tools import QUANT_TYPES, ExportToolError, convert_to_gguf, quantize
from worker.taskspec import TaskSpec
from worker.training_data import TrainExample

#: The order the Modelfile prefers among the GGUFs that passed (smallest first).
OLLAMA_PREFERENCE = ("Q4_K_M", "Q8_0", "F16")
MANIFEST = "manifest.json"

Progress = Callable[[str, int, int], None]


@dataclass
class ExportSpec:
    slug: str  # the model name in Ollama / vLLM (letters, digits, - _ .)
    merged_dir: str
    out_dir: str
    task: TaskSpec
    test_examples: Sequence[TrainExample] = ()
    adapter_dir: str = ""
    base_model: str = ""  # what vLLM loads as the LoRA form's base
    quant_types: tuple[str, ...] = QUANT_TYPES
    margin_points: float = 2.0
    threads: int | None = None


@dataclass
class BundleFile:
    name: str  # relative to the bundle folder, "/"-separated
    size: int
    sha256: str
    kind: str  # merged, adapter, gguf, ollama, deploy


@dataclass
class ExportResult:
    files: list[BundleFile]
    quant_checks: list[dict[str, Any]]
    commands: dict[str, str]
    modelfile: str
    ollama_gguf: str
    timings: dict[str, float]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _link_files(source: Path, dest: Path) -> None:
    """Hard links (no copy of a multi-GB model on the same disk), copies across disks."""
    dest.mkdir(parents=True, exist_ok=True)
    for entry in sorted(source.iterdir()):
        if entry.is_symlink() or not entry.is_file():
            continue
        target = dest / entry.name
        if target.exists():
            target.unlink()
        try:
            os.link(entry, target)
        except OSError:
            shutil.copy2(entry, target)


def check_student_files(spec: ExportSpec) -> None:
    """What the export reads must be there; a clear message naming what is missing."""
    merged = Path(spec.merged_dir)
    if not (merged / "config.json").is_file() or not any(merged.glob("*.safetensors")):
        raise ExportToolError(
            "student_files",
            f"the student's merged model is not on the server any more ({merged} has no "
            "config.json and safetensors); export a student whose files are there",
        )
    if not (merged / "tokenizer_config.json").is_file():
        raise ExportToolError("student_files", f"{merged}: the tokenizer files are missing")
    if spec.adapter_dir and not (Path(spec.adapter_dir) / "adapter_config.json").is_file():
        raise ExportToolError(
            "student_files",
            f"the student's LoRA adapter is not on the server any more ({spec.adapter_dir})",
        )


def _deploy_info(
    spec: ExportSpec, tokenizer: Any, frames: deploy.RoleFrames, gguf: str
) -> deploy.DeployInfo:
    from worker.inference import _trained_with_label_list
    from worker.taskspec import without_label_list
    from worker.training_data import student_messages

    merged = Path(spec.merged_dir)
    config = json.loads((merged / "config.json").read_text(encoding="utf-8"))
    generation = merged / "generation_config.json"
    eos: Any = config.get("eos_token_id")
    if generation.is_file():
        eos = json.loads(generation.read_text(encoding="utf-8")).get("eos_token_id", eos)
    eos_ids = [int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None]
    if spec.test_examples:
        example = student_messages(list(spec.test_examples[0].messages), tokenizer)
        if not _trained_with_label_list(merged):
            example = without_label_list(example)
    else:
        example = [{"role": "user", "content": "Hello"}]
    # The system prompt travels in the Modelfile's SYSTEM; the curl shows the whole request.
    rank = 16
    if spec.adapter_dir:
        adapter_config = json.loads(
            (Path(spec.adapter_dir) / "adapter_config.json").read_text(encoding="utf-8")
        )
        rank = int(adapter_config.get("r") or 16)
    from worker.export.quant_check import max_new_tokens

    return deploy.DeployInfo(
        slug=spec.slug,
        gguf_file=gguf,
        system_prompt=spec.task.system_prompt,
        stop=deploy.stop_tokens(tokenizer, frames, eos_ids),
        example_messages=example,
        max_tokens=max_new_tokens(spec.task, tokenizer),
        base_model=spec.base_model or "/path/to/the/base/model",
        lora_rank=rank,
        max_model_len=min(int(config.get("max_position_embeddings") or 2048), 4096),
    )


def _ollama_choice(checks: list[dict[str, Any]], made: dict[str, Path]) -> str:
    flagged = {c["name"] for c in checks if c.get("do_not_use")}
    for name in OLLAMA_PREFERENCE:
        if name in made and name not in flagged:
            return name
    return "F16"


class _Steps:
    """The bundle's units of work done so far, reported to ``progress`` (which may raise to
    stop: every report is also a cancel point)."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self.progress = progress
        self.total = total
        self.done = 0

    def step(self, phase: str, units: int = 1) -> None:
        self.done += units
        self.report(phase, self.done)

    def check(self) -> None:
        self.report("", self.done)

    def report(self, phase: str, done: int) -> None:
        if self.progress is not None:
            self.progress(phase, done, self.total)


def build_bundle(spec: ExportSpec, progress: Progress | None = None) -> ExportResult:
    """Every file of the bundle in ``spec.out_dir``; ``progress`` may raise to stop (cancel)."""
    check_student_files(spec)
    out = Path(spec.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_check = len(spec.test_examples) * (2 + len(spec.quant_types))
    steps = _Steps(progress, total=3 + len(spec.quant_types) + n_check)
    timings: dict[str, float] = {}

    clock = time.perf_counter()
    _link_files(Path(spec.merged_dir), out / "merged")
    if spec.adapter_dir:
        _link_files(Path(spec.adapter_dir), out / "adapter")
    timings["copy_s"] = round(time.perf_counter() - clock, 3)
    steps.step("converting to GGUF (F16) with llama.cpp's converter")

    made = _make_ggufs(spec, out, steps, timings)
    steps.step("checking the quants on the test split")
    checks, notes = _check_quants_on_test_split(spec, out, made, steps, timings, n_check=n_check)
    choice, modelfile, commands = _write_deploy_files(spec, out, checks, made)
    steps.step("hashing the files")

    clock = time.perf_counter()
    files = _manifest_files(out)
    timings["hash_s"] = round(time.perf_counter() - clock, 3)
    result = ExportResult(
        files=files,
        quant_checks=checks,
        commands=commands,
        modelfile=modelfile,
        ollama_gguf=choice,
        timings=timings,
        notes=notes,
    )
    manifest = {**result.to_dict(), "quant_checks": [_without_outputs(c) for c in checks]}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return result


def _make_ggufs(
    spec: ExportSpec, out: Path, steps: _Steps, timings: dict[str, float]
) -> dict[str, Path]:
    """The F16 GGUF of the merged model, then each quant made from it (quant type -> file)."""
    clock = time.perf_counter()
    made = {
        "F16": convert_to_gguf(
            out / "merged", out / "gguf" / f"{spec.slug}-F16.gguf", check=steps.check
        )
    }
    timings["convert_s"] = round(time.perf_counter() - clock, 3)
    for quant in spec.quant_types:
        steps.step(f"quantising {quant}")
        clock = time.perf_counter()
        made[quant] = quantize(
            made["F16"], out / "gguf" / f"{spec.slug}-{quant}.gguf", quant, check=steps.check
        )
        timings[f"quantize_{quant}_s"] = round(time.perf_counter() - clock, 3)
    return made


def _check_quants_on_test_split(
    spec: ExportSpec,
    out: Path,
    made: dict[str, Path],
    steps: _Steps,
    timings: dict[str, float],
    *,
    n_check: int,
) -> tuple[list[dict[str, Any]], list[str]]:
    """(the quant check's scores, notes): each GGUF against the merged model on the test split;
    a version without one gets a note instead, so the page says why nothing was checked."""
    from worker.export.quant_check import check_quants

    if not spec.test_examples:
        return [], ["The dataset version has no test split: the quants were not checked."]
    clock = time.perf_counter()
    base = steps.done

    def on_example(phase: str, d: int, _t: int) -> None:
        steps.report(phase, base + d)

    scores = check_quants(
        spec=spec.task,
        examples=spec.test_examples,
        merged_dir=out / "merged",
        ggufs=made,
        margin_points=spec.margin_points,
        threads=spec.threads,
        progress=on_example,
    )
    # The check reports its own units; the total counted n_check of them whatever it reported.
    steps.done = base + n_check
    timings["quant_check_s"] = round(time.perf_counter() - clock, 3)
    return [s.to_dict() for s in scores], []


def _write_deploy_files(
    spec: ExportSpec, out: Path, checks: list[dict[str, Any]], made: dict[str, Path]
) -> tuple[str, str, dict[str, str]]:
    """(the GGUF Ollama loads, the Modelfile, the deploy commands), with Modelfile and DEPLOY.md
    written into the bundle; the chat frames come from the merged model's own tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(out / "merged"), local_files_only=True)
    frames = deploy.role_frames(tokenizer)
    choice = _ollama_choice(checks, made)
    info = _deploy_info(spec, tokenizer, frames, f"gguf/{made[choice].name}")
    modelfile = deploy.modelfile(info, frames)
    commands = deploy.commands(info)
    (out / "Modelfile").write_text(modelfile, encoding="utf-8")
    (out / "DEPLOY.md").write_text(deploy.deploy_markdown(info, commands), encoding="utf-8")
    return choice, modelfile, commands


def _without_outputs(check: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in check.items() if k != "outputs"}


_KINDS = {"merged": "merged", "adapter": "adapter", "gguf": "gguf"}


def _manifest_files(out: Path) -> list[BundleFile]:
    files = []
    for path in sorted(p for p in out.rglob("*") if p.is_file() and not p.is_symlink()):
        name = path.relative_to(out).as_posix()
        if name == MANIFEST:
            continue
        top = name.split("/", 1)[0]
        kind = _KINDS.get(top, "ollama" if name == "Modelfile" else "deploy")
        files.append(
            BundleFile(name=name, size=path.stat().st_size, sha256=sha256_of(path), kind=kind)
        )
    return files
