"""Every parallel layout the trainer offers, on CPU gloo ranks, against one process: the loss and every
parameter's full gradient after one forward/backward (``tests/dist_parity.py`` does the work under torchrun)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[1]
BIN = Path(sys.executable).parent

FP32 = dict(loss=1e-5, grad=1e-4)
BF16 = dict(loss=1e-3, grad=3e-2)  # bf16 parameters vs a bf16 copy of the model: rounding of reductions differ


def run_parity(tmp_path, world: int, variants: list[str]) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "TORCHINDUCTOR_CACHE_DIR": os.environ.get("TORCHINDUCTOR_CACHE_DIR", str(ROOT / ".cache" / "inductor"))}
    out = tmp_path / "parity.json"
    proc = subprocess.run([str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={world}",
                           str(ROOT / "tests" / "dist_parity.py"), str(out), *variants],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def check(results: dict) -> None:
    for spec, r in results.items():
        tol = BF16 if spec.endswith(",1") else FP32
        assert r["names"], spec
        assert r["loss"] == pytest.approx(r["ref_loss"], rel=tol["loss"]), (spec, r)
        assert r["max_rel_grad_diff"] < tol["grad"], (spec, r)


def test_fsdp_hsdp_tensor_parallel_and_checkpointing_match_one_process(tmp_path):
    """4 ranks, variant = replicate,shard,tp,activation checkpointing,compile,bf16 parameters."""
    check(run_parity(tmp_path, 4, [
        "1,4,1,none,0,0",        # FSDP2 over 4
        "2,2,1,none,0,0",        # HSDP: 2 replicas x 2 shards
        "1,2,2,none,0,0",        # FSDP2 x TP on a 2-D mesh (GQA 4/2 heads -> 2/1 per TP rank)
        "2,1,2,selective,0,0",   # HSDP replicas x TP, selective activation checkpointing
        "1,4,1,selective,0,0",   # selective activation checkpointing
        "1,4,1,full,0,1",        # MixedPrecisionPolicy: bf16 parameters, fp32 reduction
    ]))


def test_the_7b_recipe_combination_compiled(tmp_path):
    """The 7B recipes' stack: FSDP2 + full activation checkpointing + compile per block, fp32 and bf16 params."""
    check(run_parity(tmp_path, 2, ["1,2,1,full,1,0", "1,2,1,full,1,1"]))
