"""Inference probes: sweeps and dynamics write JSON and real PNG images; invariants of the recorded dynamics."""

from __future__ import annotations

import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from sumi.errors import ConfigError, InputError  # noqa: E402


def test_probe_cli_writes_json_and_real_pngs(tiny_model_dir, tmp_path, capsys):
    from sumi.cli import main

    out = tmp_path / "probe"
    argv = ["probe", "--model", str(tiny_model_dir), "--out", str(out), "--prompt", "In the beginning",
            "--max-new-tokens", "4", "--canvas-length", "24", "--canvas-lengths", "16,24", "--steps", "2,4",
            "--tokens-per-step", "1,2", "--score-timesteps", "4"]
    assert main(argv) == 0
    assert "sweep canvas" in capsys.readouterr().out
    report = json.loads((out / "probe.json").read_text())
    assert [r["canvas_length"] for r in report["sweeps"]["canvas"]] == [16, 24]
    assert [r["steps"] for r in report["sweeps"]["steps"]] == [2, 4]
    assert [(r["tokens_per_step"], r["steps"]) for r in report["sweeps"]["tokens-per-step"]] == [(1, 4), (2, 2)]
    for records in report["sweeps"].values():
        for r in records:
            assert r["wall_s"] > 0 and 1 <= r["nfe"] <= r["steps"] and r["steps_run"] <= r["steps"]
            assert r["nelbo"] is None or r["nelbo"] > 0
    (dyn,) = report["dynamics"]
    steps = dyn["steps_run"]
    assert len(dyn["mean_entropy"]) == len(dyn["commits_per_step"]) == steps and 1 <= dyn["nfe"] <= steps
    assert all(c <= 1 for c in dyn["commits_per_step"])  # adaptive, one token per step
    assert all(0 <= h <= math.log(512) + 1e-4 for h in dyn["mean_entropy"])
    assert all(0 < p <= 1 for p in dyn["mean_argmax_prob"])
    assert sum(dyn["flips_per_position"]) == sum(dyn["changed_per_step"])
    assert len(dyn["last_commit_step"]) == dyn["budget"] == 4
    pngs = sorted(out.glob("*.png"))
    assert {p.name for p in pngs} == {
        "sweep_canvas.png", "sweep_steps.png", "sweep_tokens-per-step.png", "dynamics0_commit_order.png",
        "dynamics0_flips.png", "dynamics0_entropy.png", "dynamics0_token_frequency.png"}
    for path in pngs:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100
            pixels = np.asarray(image.convert("L"), dtype=float)
        assert pixels.std() > 1.0, f"{path.name} looks blank"


def test_probe_bad_inputs(tiny_model, tiny_tokenizer, tmp_path, capsys):
    from sumi.cli import main
    from sumi.eval.probes import ProbeConfig, run_probes

    assert main(["probe", "--model", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not a sumi model directory" in capsys.readouterr().err
    with pytest.raises(InputError, match="canvas lengths \\[8\\] are below"):
        run_probes(tiny_model, tiny_tokenizer, tmp_path, ProbeConfig(max_new_tokens=4, canvas_lengths=(8,),
                                                                     sweeps=("canvas",), dynamics=False))
    with pytest.raises(InputError, match="exceed the model's 256 positions"):
        run_probes(tiny_model, tiny_tokenizer, tmp_path, ProbeConfig(max_new_tokens=300))
    with pytest.raises(ConfigError, match="unknown sweep"):
        ProbeConfig(sweeps=("canvass",))
