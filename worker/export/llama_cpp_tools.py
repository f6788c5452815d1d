"""llama.cpp's converter, quantiser and runtime, as installed by the Makefile.

Where they come from (no model hub, no binary download): the PyPI package ``llama-cpp-python``
is an sdist that compiles llama.cpp with cmake + a C/C++ compiler (measured on 2 shared cores:
see the README). Its wheel carries the quantiser (``llama_cpp.llama_model_quantize``) and the
runtime (``llama_cpp.Llama``), but not the converter; the Makefile unpacks
``convert_hf_to_gguf.py`` (with its ``conversion`` package and the matching ``gguf-py``) from
the same sdist into ``<venv>/share/llama.cpp``. ``DISTILLERY_LLAMA_CPP_DIR`` points elsewhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: The llama-cpp-python release whose vendored llama.cpp converts and quantises (Makefile pin).
LLAMA_CPP_PYTHON_VERSION = "0.3.36"
#: Quant types offered, llama.cpp's names (``LLAMA_FTYPE_MOSTLY_<name>``).
QUANT_TYPES = ("Q8_0", "Q4_K_M")

INSTALL_HINT = (
    "run `make venv` (it builds llama-cpp-python from its sdist with cmake and a C/C++ "
    "compiler, and unpacks llama.cpp's convert_hf_to_gguf.py into the virtualenv)"
)


class ExportToolError(RuntimeError):
    """A conversion, quantisation or runtime step failed; ``field`` names the step."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def converter_dir() -> Path:
    configured = os.environ.get("DISTILLERY_LLAMA_CPP_DIR", "").strip()
    return Path(configured) if configured else Path(sys.prefix) / "share" / "llama.cpp"


def converter_script() -> Path:
    script = converter_dir() / "convert_hf_to_gguf.py"
    if not script.is_file():
        raise ExportToolError(
            "converter",
            f"llama.cpp's converter is not installed ({script} is missing): {INSTALL_HINT}",
        )
    return script


def llama_cpp_module() -> Any:
    try:
        import llama_cpp
    except ImportError as exc:
        raise ExportToolError(
            "quantiser", f"llama-cpp-python is not installed ({exc}): {INSTALL_HINT}"
        ) from None
    return llama_cpp


def _run(args: list[str], *, step: str, check: Callable[[], None] | None, timeout_s: float) -> None:
    """Run one tool subprocess; ``check`` (a cancel check) is called twice a second and may
    raise, which stops the child."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    # The tools log a line per tensor: into a file, since a pipe nobody reads while the child
    # runs fills up (64 KiB) and blocks it for ever.
    with tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace") as log:
        with subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env) as child:
            try:
                while child.poll() is None:
                    if check is not None:
                        check()
                    if time.monotonic() - started > timeout_s:
                        raise ExportToolError(step, f"{step} took longer than {timeout_s:.0f} s")
                    time.sleep(0.5)
            except BaseException:
                child.kill()
                child.wait()
                raise
        log.seek(0)
        output = log.read()
    if child.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-12:])
        raise ExportToolError(step, f"{step} failed (exit {child.returncode}):\n{tail}")


def convert_to_gguf(
    model_dir: Path,
    out_file: Path,
    *,
    outtype: str = "f16",
    check: Callable[[], None] | None = None,
    timeout_s: float = 3600,
) -> Path:
    """llama.cpp's ``convert_hf_to_gguf.py`` on a merged Hugging Face model folder."""
    script = converter_script()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    _run(
        [
            sys.executable,
            "-m",
            "worker.export.tools_entry",
            "convert",
            str(script),
            str(model_dir),
            str(out_file),
            outtype,
        ],
        step="GGUF conversion",
        check=check,
        timeout_s=timeout_s,
    )
    if not out_file.is_file():
        raise ExportToolError("converter", f"the converter wrote no {out_file.name}")
    return out_file


def quantize(
    source: Path,
    dest: Path,
    quant_type: str,
    *,
    threads: int = 0,
    check: Callable[[], None] | None = None,
    timeout_s: float = 3600,
) -> Path:
    """llama.cpp's quantiser (``llama_model_quantize``) from an F16 GGUF."""
    llama_cpp_module()  # a clear message here rather than an ImportError in the child
    _run(
        [
            sys.executable,
            "-m",
            "worker.export.tools_entry",
            "quantize",
            str(source),
            str(dest),
            quant_type,
            str(threads),
        ],
        step=f"{quant_type} quantisation",
        check=check,
        timeout_s=timeout_s,
    )
    if not dest.is_file():
        raise ExportToolError("quantiser", f"the quantiser wrote no {dest.name}")
    return dest


def load_gguf(path: Path, *, n_ctx: int = 2048, threads: int | None = None) -> Any:
    """A GGUF in llama.cpp's runtime (CPU), quiet."""
    llama_cpp = llama_cpp_module()
    try:
        return llama_cpp.Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_threads=threads or max(1, os.cpu_count() or 1),
            n_gpu_layers=0,
            seed=0,
            verbose=False,
        )
    except Exception as exc:
        raise ExportToolError("runtime", f"llama.cpp could not load {path.name}: {exc}") from None


def greedy_answer(llm: Any, prompt_ids: list[int], *, eos_ids: set[int], max_new: int) -> list[int]:
    """Greedy decoding from token ids (the same prompt tokens transformers sees), up to the
    first end-of-turn token."""
    out: list[int] = []
    if max_new <= 0:
        return out
    for token in llm.generate(
        prompt_ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True
    ):
        if int(token) in eos_ids or llm.token_eos() == int(token):
            break
        out.append(int(token))
        if len(out) >= max_new:
            break
    return out
