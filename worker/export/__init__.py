"""Export bundles: a distilled student packaged for Ollama, vLLM and llama.cpp.

- ``llama_cpp_tools``: llama.cpp's own converter (``convert_hf_to_gguf.py``, from the
  llama-cpp-python sdist the Makefile unpacks) and quantiser (``llama_model_quantize`` through
  llama-cpp-python), each run in a subprocess so a cancel can stop it and a crash in C cannot
  take the worker down; and the GGUF runtime (llama-cpp-python's ``Llama``).
- ``deploy``: the Ollama Modelfile (the student's chat template translated to Ollama's
  TEMPLATE), the ``ollama`` / ``vllm serve`` / ``curl`` commands.
- ``quant_check``: every GGUF answers the test split; its metric next to the unquantised
  student's (transformers, float32), and "do not use" past a margin.
- ``bundle``: the whole job, files listed with size and sha256 in ``manifest.json``.

Importable without Django; heavy libraries are imported inside functions.
"""

from __future__ import annotations

from worker.export.bundle import BundleFile, ExportResult, ExportSpec, build_bundle
from worker.export.llama_cpp_tools import ExportToolError

__all__ = ["BundleFile", "ExportResult", "ExportSpec", "ExportToolError", "build_bundle"]
