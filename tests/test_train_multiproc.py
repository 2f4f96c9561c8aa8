"""The trainer across processes, on real packed shards: DDP / FSDP2 (gloo, 2 ranks) against one process, and a
run killed with SIGKILL then resumed against an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from sumi.train import Trainer, resolve_run_config
from sumi.train.metrics import TIMING_KEYS, read_metrics

pytestmark = pytest.mark.slow
ROOT = Path(__file__).parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def shards(tmp_path_factory, tiny_tokenizer):
    """Genesis (KJV) as 40 jsonl documents, packed into 64-token canvases with the tiny 512-id BPE."""
    from conftest import sample_texts

    from sumi.data import MixtureSpec, build_shards

    work = tmp_path_factory.mktemp("shards")
    texts = sample_texts()
    with open(work / "docs.jsonl", "w") as f:
        for i in range(0, len(texts), 10):
            f.write(json.dumps({"text": " ".join(texts[i:i + 10])}) + "\n")
    spec = MixtureSpec.from_dict({"sources": [{"name": "genesis", "type": "jsonl", "path": str(work / "docs.jsonl")}]})
    build_shards(spec, tiny_tokenizer, work / "shards", seq_len=64, heldout_fraction=0.1, seed=0,
                 show_progress=False)
    return work / "shards"



def common(shards, out, steps):
    return [f"data.shard_dir={shards}", f"training.steps={steps}", "training.log_every=1", "training.progress=false",
            "schedule.warmup_steps=2", "checkpoint.every=2", "optimizer.lr=3e-3", "checkpoint.export=false",
            "training.eval_batches=1", f"training.output_dir={out}"]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": str(ROOT)}


def run_in_process(args: list[str]) -> list[dict]:
    cfg = resolve_run_config(None, args)
    trainer = Trainer(cfg)
    trainer.fit()
    return curve(Path(cfg.training.output_dir) / "metrics.jsonl")


def curve(path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_metrics(path)]


@pytest.mark.parametrize("parallelism,world,layout", [
    ("ddp", 2, []), ("fsdp", 2, []), ("fsdp", 4, []),
    # 2 HSDP replicas x 2-way tensor parallelism: 2 data-parallel ranks, each TP pair reads the same rows.
    ("fsdp", 4, ["training.data_parallel_replicate=2", "training.tensor_parallel=2"]),
])
def test_ranks_match_one_process(tmp_path, shards, parallelism, world, layout):
    """Same global batch (1 x 4 vs 2 x 2 vs 4 x 1): each rank reads and noises only its rows, from streams keyed
    by the global row, so the data and noise per row and hence the curves agree to fp32 noise."""
    single = run_in_process(common(shards, tmp_path / "one", 4) + ["training.micro_batch_size=4"])
    data_ranks = world // (2 if layout else 1)
    cmd = [str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={world}", "-m", "sumi.cli", "train",
           *common(shards, tmp_path / "two", 4), f"training.micro_batch_size={4 // data_ranks}",
           f"training.parallelism={parallelism}", *layout]
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    multi = curve(tmp_path / "two" / "metrics.jsonl")
    assert [r["step"] for r in multi] == [r["step"] for r in single]
    for a, b in zip(single, multi):
        for key in ("loss", "elbo", "grad_norm", "heldout_nelbo"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (key, a, b)
    assert multi[0]["loss"] != multi[-2]["loss"]  # it trained

    # The 2-rank checkpoint of step 2 resumes in one process (DCP reshards) and continues the same curve.
    cfg = resolve_run_config(None, common(shards, tmp_path / "resumed", 4) + ["training.micro_batch_size=4"])
    Trainer(cfg).fit(resume=tmp_path / "two" / "checkpoints" / "step-00000002")
    resumed = curve(tmp_path / "resumed" / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [3, 4, 4]
    for a, b in zip(single[2:], resumed):
        assert b.get("loss", b.get("heldout_nelbo")) == pytest.approx(a.get("loss", a.get("heldout_nelbo")), rel=1e-4)


def test_sigkill_then_resume_reproduces_the_curve(tmp_path, shards):
    steps = 40
    args = common(shards, tmp_path / "killed", steps) + ["training.micro_batch_size=8", "checkpoint.every=10",
                                                         "training.eval_every=20"]
    cmd = [sys.executable, "-m", "sumi.cli", "train", *args]
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = tmp_path / "killed" / "checkpoints" / "step-00000010"
    deadline = time.monotonic() + 90
    while not first.is_dir() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done_before = [r["step"] for r in read_metrics(tmp_path / "killed" / "metrics.jsonl")]
    assert max(done_before) < steps

    resumed = subprocess.run(cmd + ["--resume"], env=env(), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reference = run_in_process(common(shards, tmp_path / "straight", steps) + [
        "training.micro_batch_size=8", "checkpoint.every=10", "training.eval_every=20"])
    assert curve(tmp_path / "killed" / "metrics.jsonl") == reference
    saved = yaml.safe_load((tmp_path / "killed" / "checkpoints" / "step-00000040" / "config.yaml").read_text())
    assert saved["model"]["overrides"]["vocab_size"] == 512  # taken from the shards' tokenizer, then saved
