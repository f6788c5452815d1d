"""Where benchmarks find the public datasets: $DISTILLERY_SHARED_DATA, else ../shared/data beside
the repository (the layout every checkout here has). Never an absolute path of one machine."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def shared_data(*parts: str) -> Path:
    root = os.environ.get("DISTILLERY_SHARED_DATA")
    base = Path(root) if root else REPO.parent / "shared" / "data"
    return base.joinpath(*parts)
