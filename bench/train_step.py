"""Training-step throughput and MFU of a ~25M-non-embedding Sumi (d 512, 8 layers, 8/2 heads, SwiGLU 1408,
vocab 32000, seq 512) against the fp32 matmul peak measured in the same process.

One step = forward + Sumi loss + backward + gradient clipping + AdamW, exactly as ``sumi train`` does it (noise
drawn outside the timed region; the model's own fast loss, ``sumi.diffusion.loss.sumi_loss``). Variants: ``eager`` (SDPA
attention), ``compiled`` (``torch.compile`` of the model), ``eager_attn`` (the explicit reference attention) and
``eager_ref_loss`` (the reference ``sumi_loss_reference``). Also times the two losses alone (forward + backward
from logits) to show their share of the step.

Model FLOPs per step (PaLM convention, bidirectional attention so no causal halving):
    6 · (non-embedding matmul params + lm_head) · tokens + 12 · layers · seq · d · tokens
MFU = model FLOPs / step time / peak, with peak = best of several large fp32 matmuls on the same threads.

Prints one JSON line. Usage: python bench/train_step.py [--threads 2] [--batch 2] [--steps 3] [--skip-compile]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(ROOT / ".cache" / "inductor"))

import torch  # noqa: E402

from sumi.config import get_preset  # noqa: E402
from sumi.diffusion import TimeSampler, alpha_from_time, uniform  # noqa: E402
from sumi.diffusion.loss import sumi_loss, sumi_loss_reference  # noqa: E402
from sumi.model import SumiForMaskGeneration  # noqa: E402
from sumi.plan import matmul_peak_gflops as matmul_peak  # noqa: E402
from sumi.train.config import OptimizerSection  # noqa: E402
from sumi.train.optim import build_optimizer  # noqa: E402


def model_flops(cfg, tokens: int, seq: int) -> float:
    n = cfg.num_parameters()["non_embedding"] - cfg.hidden_size * (2 * cfg.num_hidden_layers + 1)  # no norms
    n += cfg.vocab_size * cfg.hidden_size  # lm_head matmul (the input embedding is a lookup)
    return 6 * n * tokens + 12 * cfg.num_hidden_layers * seq * cfg.hidden_size * tokens


def make_batch(cfg, batch: int, seq: int):
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (batch, seq), generator=gen)
    t = TimeSampler().sample(batch, seq, generator=gen)
    z = uniform(cfg.vocab_size).sample_zt(x, alpha_from_time(t), generator=gen)
    return z, x, t


def one_step(model, optimizer, batch, fused: bool) -> float:
    z, x, t = batch
    start = time.perf_counter()
    if fused:
        loss = model(z, labels=x, t=t, validate=False).loss
    else:
        loss = sumi_loss_reference(model(z, validate=False).logits, z, x, t)[0]
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def time_loss(cfg, batch, loss_fn, reps: int = 3) -> float:
    z, x, t = batch
    logits = torch.randn(*x.shape, cfg.vocab_size, requires_grad=True)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        loss, _ = loss_fn(logits, z, x, t)
        loss.backward()
        best = min(best, time.perf_counter() - start)
    return best


def build_variant(cfg, name: str):
    model = SumiForMaskGeneration.from_config(cfg, seed=0)
    if name == "eager_attn":
        model.set_attn_implementation("eager")
    if name == "compiled":
        model.compile()
    return model, build_optimizer(model, OptimizerSection())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=4, help="timed rounds (each times every variant once)")
    parser.add_argument("--skip-compile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = get_preset("sumi-25m").replace(max_position_embeddings=512)
    tokens = args.batch * args.seq
    flops = model_flops(cfg, tokens, args.seq)
    batch = make_batch(cfg, args.batch, args.seq)
    peak = matmul_peak()
    result = {"bench": "train_step", "torch": torch.__version__, "threads": args.threads,
              "non_embedding_params": cfg.num_parameters()["non_embedding"], "batch": args.batch, "seq": args.seq,
              "model_gflop_per_step": round(flops / 1e9, 1)}
    variants = ["eager", "eager_ref_loss", "eager_attn"] + ([] if args.skip_compile else ["compiled"])
    built = {name: build_variant(cfg, name) for name in variants}
    for name, (model, optimizer) in built.items():  # warmup (compilation happens here)
        for _ in range(2 if name == "compiled" else 1):
            one_step(model, optimizer, batch, fused=name != "eager_ref_loss")
    # Interleave the variants step by step and keep each one's fastest step, so a shared machine's busy
    # periods do not land on one variant only; the matmul peak is re-measured every round.
    best = {name: float("inf") for name in variants}
    for _ in range(args.steps):
        peak = max(peak, matmul_peak(reps=2))
        for name, (model, optimizer) in built.items():
            best[name] = min(best[name], one_step(model, optimizer, batch, fused=name != "eager_ref_loss"))
    for name in variants:
        seconds = best[name]
        result[f"{name}_step_s"] = round(seconds, 3)
        result[f"{name}_tokens_per_s"] = round(tokens / seconds, 1)
        result[f"{name}_gflops"] = round(flops / seconds / 1e9, 1)
    loss_s = time_loss(cfg, batch, sumi_loss)
    ref_loss_s = time_loss(cfg, batch, sumi_loss_reference)
    peak = max(peak, matmul_peak())  # again at the end: a shared machine may have been busy at the start
    result["peak_fp32_gflops"] = round(peak, 1)
    for name in variants:
        result[f"{name}_mfu"] = round(result[f"{name}_gflops"] / peak, 3)
    result["fused_loss_fwd_bwd_s"] = round(loss_s, 3)
    result["reference_loss_fwd_bwd_s"] = round(ref_loss_s, 3)
    result["fused_loss_share_of_eager_step"] = round(loss_s / result["eager_step_s"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
