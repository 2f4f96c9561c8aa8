"""``bench/gpu_check.sh`` on a machine without a GPU: one JSON line that says nothing ran and why, exit 0."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: the real check runs instead")
def test_gpu_check_explains_itself_without_a_gpu():
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh")], capture_output=True, text=True,
                          timeout=120, env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
                                            "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert out["gpu"] is False and out["ran"] is False and "torch.cuda.is_available() is False" in out["reason"]
