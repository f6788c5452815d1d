"""Subprocess entry for llama.cpp's tools (``python -m worker.export.tools_entry ...``).

``convert SCRIPT MODEL_DIR OUT OUTTYPE``: runs llama.cpp's own ``convert_hf_to_gguf.py``
(imported from its folder, ``main()`` with its usual arguments). One addition: the converter
refuses a byte-level BPE tokenizer whose encoding of its probe text it does not know (it
recognises known models by a hash of that encoding). A tokenizer whose pre-tokenizer is exactly
GPT-2's (``ByteLevel`` with GPT-2's split regex, nothing else) is then converted as "gpt-2",
which is what that configuration is; anything else still fails with the converter's message.

``quantize SRC DEST TYPE THREADS``: ``llama_cpp.llama_model_quantize``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _gpt2_byte_level(model_dir: Path) -> bool:
    try:
        data = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    pre = data.get("pre_tokenizer") or {}
    return (
        pre.get("type") == "ByteLevel"
        and pre.get("use_regex", True) is True
        and pre.get("add_prefix_space", False) is False
        and (data.get("model") or {}).get("type") == "BPE"
    )


def convert(script: Path, model_dir: Path, out: Path, outtype: str) -> None:
    sys.path.insert(0, str(script.parent))
    sys.path.insert(1, str(script.parent / "gguf-py"))
    import importlib

    converter: Any = importlib.import_module("convert_hf_to_gguf")
    base: Any = importlib.import_module("conversion.base")
    recognised = base.TextModel.get_vocab_base_pre

    def get_vocab_base_pre(self: Any, tokenizer: Any) -> str:
        try:
            return str(recognised(self, tokenizer))
        except NotImplementedError:
            if _gpt2_byte_level(Path(self.dir_model)):
                return "gpt-2"
            raise

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    sys.argv = [str(script), str(model_dir), "--outfile", str(out), "--outtype", outtype]
    converter.main()


def quantize(source: Path, dest: Path, quant_type: str, threads: int) -> None:
    import ctypes

    import llama_cpp

    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant_type}", None)
    if ftype is None:
        raise SystemExit(f"llama.cpp has no quant type {quant_type}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(
        str(source).encode(), str(dest).encode(), ctypes.byref(params)
    )
    if rc != 0:
        raise SystemExit(f"llama_model_quantize returned {rc}")


def main(argv: list[str]) -> None:
    command, *args = argv
    if command == "convert":
        convert(Path(args[0]), Path(args[1]), Path(args[2]), args[3])
    elif command == "quantize":
        quantize(Path(args[0]), Path(args[1]), args[2], int(args[3]))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
