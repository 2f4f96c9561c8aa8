"""Training MFU of a ~1B Sumi model at sequence 1184 in bf16 on one GPU, the way the 7B recipes train.

Model: the ``sumi-1b`` preset (d 2048, 16 layers, 16/4 heads, SwiGLU 6144, vocab 100,278; 1.18B parameters).
Step = the trainer's: FSDP2 (one rank) with a bf16 ``MixedPrecisionPolicy``, ``torch.compile`` per block, the
fused Sumi loss, backward, grad clip, fused AdamW. FLOPs per token = ``sumi.plan.model_flops_per_token`` (6 ×
matmul parameters + attention). MFU against the nominal dense bf16 peak (``--peak-tflops``, H100/H200: 989) and
against the best bf16 8192³ matmul measured in the same run. Prints one JSON line; exits 0 with
``{"gpu": false}`` on a machine without CUDA.

    python bench/gpu_mfu.py --steps 10 --micro-batch 8
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch


def matmul_peak_tflops(reps: int = 20) -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * 8192 ** 3 * reps / (time.perf_counter() - start) / 1e12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="sumi-1b")
    parser.add_argument("--seq", type=int, default=1184)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after 3 warmup steps)")
    parser.add_argument("--activation-checkpointing", default="none", choices=["none", "selective", "full"])
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"bench": "gpu_mfu", "gpu": False, "reason": "torch.cuda.is_available() is False"}))
        return
    import torch.distributed as dist

    from sumi.config import get_preset
    from sumi.model import SumiForMaskGeneration
    from sumi.plan import model_flops_per_token
    from sumi.train.config import OptimizerSection
    from sumi.train.optim import build_optimizer
    from sumi.train.parallelize import DistEnv, Layout, materialize_sharded, parallelize

    device = torch.device("cuda")
    torch.cuda.set_device(device)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(tempfile.gettempdir(), "sumi-inductor"))
    dist.init_process_group("nccl", init_method=f"file://{tempfile.mktemp()}", rank=0, world_size=1,
                            device_id=device)
    config = get_preset(args.preset).replace(max_position_embeddings=max(args.seq, 2048))
    with torch.device("meta"):
        model = SumiForMaskGeneration(config)
    ac = False if args.activation_checkpointing == "none" else args.activation_checkpointing
    parallelize(model, DistEnv(device=device), Layout("fsdp", 1, 1, 1), compile=not args.no_compile,
                activation_checkpointing=ac, bf16_params=True)
    materialize_sharded(model, device, 0)
    optimizer = build_optimizer(model, OptimizerSection())
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randint(3, config.vocab_size, (args.micro_batch, args.seq), device=device, generator=gen)
    z = torch.where(torch.rand(x.shape, device=device, generator=gen) < 0.5, x, torch.randint_like(x, 3, 1000))
    t = torch.rand(args.micro_batch, device=device, generator=gen) * 0.98 + 0.01

    def step() -> float:
        loss = model(z, labels=x, t=t, validate=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    start = time.perf_counter()
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    warmup_s = time.perf_counter() - start
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    torch.cuda.synchronize()
    step_s = (time.perf_counter() - start) / args.steps
    tokens = args.micro_batch * args.seq
    achieved = model_flops_per_token(config, args.seq) * tokens / step_s / 1e12
    measured_peak = matmul_peak_tflops()
    print(json.dumps({
        "bench": "gpu_mfu", "gpu": True, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
        "preset": args.preset, "parameters": config.num_parameters()["total"], "seq": args.seq,
        "micro_batch": args.micro_batch, "activation_checkpointing": args.activation_checkpointing,
        "compile": not args.no_compile, "warmup_s": round(warmup_s, 1), "step_s": round(step_s, 4),
        "tokens_per_s": round(tokens / step_s), "achieved_tflops": round(achieved, 1),
        "mfu_nominal": round(achieved / args.peak_tflops, 3), "matmul_peak_tflops": round(measured_peak, 1),
        "mfu_measured_peak": round(achieved / measured_peak, 3), "final_loss": round(float(loss), 4),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
