"""Entry point of the training subprocess: ``python -m worker.train_entry OUTPUT_DIR``.

Started by worker.training.TrainingProcess; reads OUTPUT_DIR/spec.json and the example files.
"""

from __future__ import annotations

from worker.training_loop import main

if __name__ == "__main__":
    raise SystemExit(main())
