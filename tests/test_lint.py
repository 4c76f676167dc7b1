"""The code meets the project's own lint rules (pyproject.toml [tool.ruff])."""

import subprocess
import sys

from ocr.testing import ROOT


def test_ruff_finds_nothing():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
