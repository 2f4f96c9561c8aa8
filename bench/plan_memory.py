"""``sumi plan``'s memory model against real peaks: one fp32 CPU process per size, trained as the trainer does.

Each size runs in a fresh subprocess: build the model (fp32), AdamW as the trainer builds it (fused), and take
three optimizer steps of forward + Sumi loss + backward on a [batch, seq] batch; the peak resident memory
(VmHWM) minus the resident memory just before the model was built (the high-water mark reset there) is compared with
``sumi.plan.single_process_peak_bytes``. Prints one JSON line (``--sizes`` picks the rows; the test runs small
ones).

    python bench/plan_memory.py            # ~1 minute on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

SIZES = {  # name: (hidden, layers, heads, kv heads, intermediate, vocab, batch, seq, activation checkpointing)
    "d256-L4-V8k": (256, 4, 4, 2, 704, 8192, 8, 256, "none"),
    "d384-L6-V16k": (384, 6, 6, 2, 1024, 16384, 4, 512, "none"),
    "d512-L8-V32k": (512, 8, 8, 2, 1408, 32000, 4, 512, "none"),
    "d512-L8-V32k-ac": (512, 8, 8, 2, 1408, 32000, 4, 512, "full"),
    "d128-L2-V2k": (128, 2, 4, 2, 352, 2048, 8, 256, "none"),
    "d192-L3-V4k": (192, 3, 4, 2, 512, 4096, 8, 256, "none"),
    "d192-L3-V4k-ac": (192, 3, 4, 2, 512, 4096, 8, 256, "selective"),
}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def peak_rss_bytes() -> int:
    """This process's resident high-water mark (VmHWM). Not ``ru_maxrss``: Linux carries the parent's resident
    size at fork into it across exec, so a child of a large process (pytest) would report the parent's size."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> None:
    """Reset VmHWM to the current resident size (``/proc/self/clear_refs``, Linux >= 4.0), if allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def measure(name: str) -> dict:
    """Runs in the child process."""
    import torch

    from sumi.config import get_preset
    from sumi.plan import single_process_peak_bytes
    from sumi.train.config import OptimizerSection
    from sumi.train.optim import build_optimizer
    from sumi.train.parallelize import apply_activation_checkpointing

    torch.set_num_threads(1)
    d, layers, heads, kv, inter, vocab, batch, seq, ac = SIZES[name]
    cfg = get_preset("sumi-tiny").replace(hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
                                          num_key_value_heads=kv, head_dim=d // heads, intermediate_size=inter,
                                          vocab_size=vocab, max_position_embeddings=seq)
    from sumi.model import SumiForMaskGeneration

    gen = torch.Generator().manual_seed(0)
    x = torch.randint(3, vocab, (batch, seq), generator=gen)
    t = torch.rand(batch, generator=gen)
    # One step of a tiny model first: the code pages of the kernels (oneDNN, SDPA, fused AdamW) and the thread
    # pools are loaded then, not counted against the model.
    warm = SumiForMaskGeneration.from_config(get_preset("sumi-tiny"), seed=0)
    warm(x[:1, :32] % 512, labels=x[:1, :32] % 512, t=t[:1], validate=False).loss.backward()
    build_optimizer(warm, OptimizerSection()).step()
    del warm
    reset_peak_rss()
    baseline = rss_bytes()

    model = SumiForMaskGeneration.from_config(cfg, seed=0)
    if ac != "none":
        apply_activation_checkpointing(model, ac)
    optimizer = build_optimizer(model, OptimizerSection())
    for _ in range(3):
        model(x, labels=x, t=t, validate=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    peak = peak_rss_bytes() - baseline
    planned = single_process_peak_bytes(cfg, seq, batch, ac=ac)
    return {"size": name, "params": cfg.num_parameters()["total"], "measured_mib": round(peak / 2**20, 1),
            "planned_mib": round(planned / 2**20, 1), "ratio": round(planned / peak, 3)}


def run_child(name: str) -> dict:
    # A fixed mmap threshold makes glibc return every freed block over 64 KiB at once, so the resident peak is
    # the peak of live tensors (what the plan models; on a GPU, the caching allocator's max_memory_allocated).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, __file__, "--child", name], capture_output=True, text=True,
                          timeout=600, env=env)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["d256-L4-V8k", "d384-L6-V16k", "d512-L8-V32k",
                                                       "d512-L8-V32k-ac"], choices=sorted(SIZES))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child)))
        return
    rows = [run_child(name) for name in args.sizes]
    worst = max(abs(r["ratio"] - 1) for r in rows)
    print(json.dumps({"bench": "plan_memory", "rows": rows, "worst_relative_error": round(worst, 3)}))


if __name__ == "__main__":
    main()
