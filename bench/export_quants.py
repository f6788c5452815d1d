"""The export bundle's quant check on the real distilled student: GGUF F16 / Q8_0 / Q4_K_M made
by llama.cpp's own converter and quantiser, each answering the held-out BANKING77 test rows next
to the unquantised student (transformers, float32) in the same run.

The student is bench/serve_student.py's (SmolLM2-135M-Instruct distilled on 600 BANKING77 rows
with gold labels imported as the teacher, evaluated by the product on 300 held-out rows; trained
once, then kept in the temp dir). The bundle is built by the worker's own ``build_bundle`` — the
function the export job runs — into a scratch folder.

Prints each form's accuracy, its delta in points vs the unquantised student, the "do not use"
verdict (margin 2 points, the product's default), file sizes and timings; last line JSON.

    nice .venv/bin/python bench/export_quants.py            # all evaluated test rows (~5 min)
    nice .venv/bin/python bench/export_quants.py --n 100
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    from bench.serve_student import STUDENT_CACHE, load_record
    from worker.export import ExportSpec
    from worker.export.bundle import build_bundle
    from worker.taskspec import TaskSpec, build_messages
    from worker.training_data import TrainExample

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=0, help="test rows (default: all evaluated)")
    parser.add_argument("--margin", type=float, default=2.0)
    args = parser.parse_args()

    record = load_record()
    if record is None:
        sys.exit("no trained student: run `nice .venv/bin/python bench/serve_student.py` first")
    task = TaskSpec(
        instruction_template=record["instruction_template"],
        output_kind="label",
        input_fields=tuple(record["input_fields"]),
        label_set=tuple(record["label_set"]),
    )
    rows = record["test_rows"][: args.n or None]
    examples = [
        TrainExample(messages=build_messages(task, {"text": r["text"]}), completion=r["label"])
        for r in rows
    ]
    out = Path(tempfile.mkdtemp(prefix="bench-export-"))
    try:
        started = time.perf_counter()
        result = build_bundle(
            ExportSpec(
                slug="banking77-student",
                merged_dir=str(STUDENT_CACHE / "model"),
                out_dir=str(out),
                task=task,
                test_examples=examples,
                margin_points=args.margin,
            )
        )
        wall = time.perf_counter() - started
        sizes = {f.name: f.size for f in result.files if f.kind == "gguf"}
    finally:
        shutil.rmtree(out, ignore_errors=True)

    forms = {}
    for check in result.quant_checks:
        size = next((s for name, s in sizes.items() if name.endswith(f"-{check['name']}.gguf")), 0)
        forms[check["name"]] = {
            "accuracy": round(check["value"], 4),
            "delta_points": round(check["delta_points"], 2),
            "do_not_use": check["do_not_use"],
            "runtime": check["runtime"],
            "seconds": round(check["seconds"], 1),
            "mb": round(size / 1e6, 1),
        }
        print(
            f"{check['name']:>12}: accuracy {100 * check['value']:.1f} % "
            f"({check['delta_points']:+.1f} pts){'  DO NOT USE' if check['do_not_use'] else ''}"
            f"  [{check['runtime']}, {check['seconds']:.0f} s"
            + (f", {size / 1e6:.0f} MB]" if size else "]")
        )
    print(f"Ollama's Modelfile loads: {result.ollama_gguf}")
    summary: dict[str, Any] = {
        "student": "SmolLM2-135M-Instruct distilled on 600 BANKING77 rows (gold labels as teacher)",
        "n": len(examples),
        "accuracy_evaluated_by_product": record["accuracy_evaluated"],
        "forms": forms,
        "ollama_gguf": result.ollama_gguf,
        "timings": result.timings,
        "wall_s": round(wall, 1),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
