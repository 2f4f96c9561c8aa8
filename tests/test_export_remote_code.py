"""A model directory written by sumi is self-contained: transformers alone (sumi not importable) loads it with
``trust_remote_code=True`` from the files sumi wrote next to the weights, gives sumi's logits and generates."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

# Runs in a fresh interpreter where importing sumi fails, like a machine with only torch + transformers.
NO_SUMI = r'''
import importlib.abc, sys
class NoSumi(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "sumi" or name.startswith("sumi."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden for this test)")
        return None
sys.meta_path.insert(0, NoSumi())
import json, torch
from transformers import AutoModelForMaskGeneration, AutoConfig
directory = sys.argv[1]
try:
    import sumi  # noqa: F401
    raise SystemExit("sumi was importable")
except ModuleNotFoundError:
    pass
config = AutoConfig.from_pretrained(directory, trust_remote_code=True)
model = AutoModelForMaskGeneration.from_pretrained(directory, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
ids = torch.tensor(json.loads(sys.argv[2]))
with torch.no_grad():
    logits = model(ids).logits
out = model.generate(ids[:, :5], do_sample=False, max_new_tokens=10, canvas_length=40, steps=6, seed=3)
adaptive = model.generate(ids[:, :5], sampler="adaptive", temperature=0.0, max_new_tokens=10, canvas_length=40,
                          steps=6, seed=3)
ancestral = model.generate(ids[:, :5], max_new_tokens=6, canvas_length=24, steps=4, seed=0)
torch.save({"logits": logits, "greedy": out.sequences, "canvas": out.canvas, "adaptive": adaptive.sequences,
            "ancestral": ancestral.sequences, "model_type": config.model_type}, sys.argv[3])
'''


@pytest.mark.slow
def test_export_loads_and_generates_with_transformers_only(tiny_model, tmp_path):
    directory = tmp_path / "model"
    tiny_model.save_pretrained(directory)
    config = json.loads((directory / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "configuration_sumi.SumiConfig",
                                  "AutoModel": "modeling_sumi.SumiForMaskGeneration",
                                  "AutoModelForMaskGeneration": "modeling_sumi.SumiForMaskGeneration"}
    assert (directory / "modeling_sumi.py").is_file() and (directory / "configuration_sumi.py").is_file()
    ids = torch.randint(3, 512, (2, 20), generator=torch.Generator().manual_seed(0))
    result = tmp_path / "out.pt"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # sumi's checkout is not on the path
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    proc = subprocess.run([sys.executable, "-c", NO_SUMI, str(directory), json.dumps(ids.tolist()), str(result)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(result, weights_only=True)
    assert got["model_type"] == "sumi"
    with torch.no_grad():
        torch.testing.assert_close(got["logits"], tiny_model(ids).logits, rtol=1e-5, atol=1e-5)
    prompt = ids[:, :5]
    kw = dict(max_new_tokens=10, canvas_length=40, steps=6, seed=3)
    ours = tiny_model.generate(prompt, do_sample=False, **kw)
    assert torch.equal(got["greedy"], ours.sequences) and torch.equal(got["canvas"], ours.canvas)
    adaptive = tiny_model.generate(prompt, sampler="adaptive", temperature=0.0, **kw)
    assert torch.equal(got["adaptive"], adaptive.sequences)
    assert got["ancestral"].shape[0] == 2 and bool((got["ancestral"][:, :5] == prompt).all())


def test_release_remote_code_auto_map_still_loads_sumis_classes(tiny_model, tmp_path):
    """With sumi installed, a directory carrying auto_map (the release's or sumi's) loads sumi's own classes."""
    from transformers import AutoModelForMaskGeneration

    import sumi  # noqa: F401
    from sumi.hf import SumiHFForMaskGeneration

    tiny_model.save_pretrained(tmp_path)
    model = AutoModelForMaskGeneration.from_pretrained(tmp_path, trust_remote_code=True)
    assert isinstance(model, SumiHFForMaskGeneration)
    ids = torch.randint(3, 512, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, tiny_model(ids).logits, rtol=0, atol=0)
