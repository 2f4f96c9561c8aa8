"""Peak resident memory of a *sharded* model load, relative to the model's size.

Builds a model of a few hundred MB on the fly (fp32, saved in ~50 MB shards), then loads it in fresh
subprocesses, one per path, and reads the process's peak RSS (``VmHWM``) after the load:

* ``sumi``: :func:`sumi.load_model` (shard-by-shard safetensors reader);
* ``transformers``: ``AutoModelForMaskGeneration.from_pretrained(dir)`` after ``import sumi`` (no device_map),
  which sumi routes through the same streaming reader;
* ``transformers_native``: the same call with ``output_loading_info=True``, which stays on transformers' own
  loader (it maps every shard at once), for comparison.

Both load into fp32. Two stored dtypes are measured: fp32 shards (the weights can stay memory-mapped, zero copy)
and bf16 shards (the release's dtype; every tensor is upcast, so a loader that keeps all shards mapped until the
end holds the bf16 file pages *and* the fp32 copy). Prints one JSON line: the fp32 model size and, per stored
dtype and path, the peak RSS increase over the post-import baseline divided by the fp32 model size (1.0 = exactly
one model copy). Weights are touched after loading so lazily mapped pages are counted.

    .venv/bin/python bench/load_memory.py [--hidden 1024 --layers 8 --vocab 32000 --shard 50MB]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import gc, json, os, sys
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch, sumi, transformers  # imports first: the baseline includes the libraries, not the weights

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)

gc.collect()
base = status("VmRSS")
path, which = sys.argv[1], sys.argv[2]
if which == "sumi":
    model = sumi.load_model(path, dtype=torch.float32)
elif which == "transformers":
    model = transformers.AutoModelForMaskGeneration.from_pretrained(path, dtype=torch.float32)
else:  # output_loading_info is not on sumi's streaming path: this measures transformers' own loader
    model, _ = transformers.AutoModelForMaskGeneration.from_pretrained(path, dtype=torch.float32,
                                                                       output_loading_info=True)
load_peak = status("VmHWM")
with torch.no_grad():  # touch every weight (a forward would): lazily mapped pages count from here on
    checksum = float(sum(p.float().sum() for p in model.parameters()))
peak = status("VmHWM")
params = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"base": base, "peak": peak, "load_peak": load_peak, "param_bytes": params,
                  "rss_anon": status("RssAnon"), "rss_file": status("RssFile"), "checksum": checksum}))
"""


def build(directory: str, hidden: int, layers: int, vocab: int, shard: str, dtype: str) -> int:
    """Save a random model in ``dtype`` shards; return the bytes of its fp32 parameters (what a load holds)."""
    import torch

    from sumi.config import sumi_tiny
    from sumi.release import Sumi

    config = sumi_tiny().replace(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=int(hidden * 8 / 3) // 64 * 64,
        num_hidden_layers=layers, num_attention_heads=hidden // 64, num_key_value_heads=hidden // 256,
        head_dim=64, max_position_embeddings=512,
    )
    torch.manual_seed(0)
    model = Sumi.from_config(config, seed=0)
    model.save_pretrained(directory, max_shard_size=shard, dtype=dtype)
    return sum(p.numel() * 4 for p in model.parameters())


def measure(directory: str, which: str) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    out = subprocess.run([sys.executable, "-c", CHILD, directory, which], capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--shard", default="50MB")
    args = parser.parse_args()
    result: dict = {"bench": "load_memory"}
    for stored in ("float32", "bfloat16"):
        tag = "fp32" if stored == "float32" else "bf16"
        with tempfile.TemporaryDirectory() as directory:
            model_bytes = build(directory, args.hidden, args.layers, args.vocab, args.shard, stored)
            result["model_mb_fp32"] = round(model_bytes / 2**20, 1)
            result[f"{tag}_shards"] = len([f for f in os.listdir(directory) if f.endswith(".safetensors")])
            for which in ("sumi", "transformers", "transformers_native"):
                m = measure(directory, which)
                result[f"{tag}_{which}_peak_over_model"] = round((m["peak"] - m["base"]) / model_bytes, 3)
            result[f"{tag}_transformers_vs_sumi"] = round(
                result[f"{tag}_transformers_peak_over_model"] / result[f"{tag}_sumi_peak_over_model"], 3
            )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
