"""worker/ is the engine a GPU node or a notebook imports: it must not need Django."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import worker

REPO = Path(__file__).resolve().parents[2]


def test_every_worker_module_imports_without_django_installed_or_configured():
    modules = sorted(
        name for _, name, _ in pkgutil.walk_packages(worker.__path__, prefix="worker.")
    )
    assert "worker.taskspec" in modules and "worker.ingest" in modules
    program = (
        "import sys, importlib\n"
        # Make `import django` fail loudly inside this interpreter.
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'django' or name.startswith('django.'):\n"
        "            raise ImportError('worker/ must not import Django: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print('ok', len(sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok")
