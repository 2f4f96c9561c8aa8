"""The CUDA path the 7B recipes use, checked on a GPU (``bench/gpu_check.sh`` runs these; CPU machines skip them).

bf16 sink attention (fused SDPA and eager) against an fp32 reference, forward and backward; the fused loss on
CUDA; every sampler on CUDA; one FSDP2 (bf16 MixedPrecisionPolicy) + compiled step on one GPU against the
unsharded fp32 model; a save → load round trip of bf16 weights on the GPU.

``SUMI_GPU_TESTS_ON_CPU=1`` runs them on the CPU instead (gloo for the process group), to check the tests
themselves on a machine without a GPU; that says nothing about CUDA.
"""

from __future__ import annotations

import os

import pytest
import torch

ON_CPU = os.environ.get("SUMI_GPU_TESTS_ON_CPU") == "1"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (torch.cuda.is_available() or ON_CPU),
                       reason="needs a CUDA device: torch.cuda.is_available() is False on this machine"),
]

CUDA = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BF16_ATOL = 3e-2  # bf16 keeps 8 mantissa bits: ~4e-3 relative per rounding, a few roundings per output


def qkv(dtype, b=2, h=8, kv=2, s=256, e=64, seed=0):
    gen = torch.Generator(device=CUDA.type).manual_seed(seed)
    q = torch.randn(b, h, s, e, device=CUDA, generator=gen)
    k = torch.randn(b, kv, s, e, device=CUDA, generator=gen)
    v = torch.randn(b, kv, s, e, device=CUDA, generator=gen)
    return [t.to(dtype).requires_grad_() for t in (q, k, v)]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("path", ["sdpa", "eager"])
def test_bf16_sink_attention_matches_fp32_forward_and_backward(path, causal):
    from sumi.model import sink_attention_eager, sink_attention_sdpa

    attend = sink_attention_sdpa if path == "sdpa" else sink_attention_eager
    key_mask = torch.ones(2, 256, dtype=torch.bool, device=CUDA)
    key_mask[1, 200:] = False
    ref_inputs = qkv(torch.float32)
    out_ref = sink_attention_eager(*ref_inputs, key_mask, causal)
    grad_out = torch.randn_like(out_ref)
    out_ref.backward(grad_out)
    inputs = qkv(torch.bfloat16)
    out = attend(*inputs, key_mask, causal)
    assert out.dtype == torch.bfloat16
    out.backward(grad_out.to(torch.bfloat16))
    torch.testing.assert_close(out.float(), out_ref, atol=BF16_ATOL, rtol=BF16_ATOL)
    for mine, ref in zip(inputs, ref_inputs):
        torch.testing.assert_close(mine.grad.float(), ref.grad, atol=BF16_ATOL * 2, rtol=BF16_ATOL * 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_loss_on_cuda_matches_reference(dtype):
    from sumi.diffusion.loss import sumi_loss, sumi_loss_reference

    gen = torch.Generator(device=CUDA.type).manual_seed(0)
    b, s, v = 4, 128, 4096
    x = torch.randint(3, v, (b, s), device=CUDA, generator=gen)
    z = torch.where(torch.rand(b, s, device=CUDA, generator=gen) < 0.5, x,
                    torch.randint(3, v, (b, s), device=CUDA, generator=gen))
    t = torch.rand(b, s, device=CUDA, generator=gen) * 0.98 + 0.01
    logits = (torch.randn(b, s, v, device=CUDA, generator=gen) * 3).to(dtype)
    fast = logits.clone().requires_grad_()
    ref = logits.clone().requires_grad_()
    loss, metrics = sumi_loss(fast, z, x, t)
    loss_ref, metrics_ref = sumi_loss_reference(ref, z, x, t)
    loss.backward()
    loss_ref.backward()
    assert loss.dtype == torch.float32  # computed in fp32 whatever the logits' dtype
    torch.testing.assert_close(loss, loss_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(metrics["elbo"], metrics_ref["elbo"], rtol=1e-5, atol=1e-6)
    tol = 1e-6 if dtype == torch.float32 else 1e-3
    torch.testing.assert_close(fast.grad.float(), ref.grad.float(), rtol=tol, atol=tol)


def tiny_cuda_model(dtype=torch.float32):
    from sumi.config import sumi_tiny
    from sumi.model import SumiForMaskGeneration

    return SumiForMaskGeneration.from_config(sumi_tiny(), seed=0).to(CUDA, dtype).eval()


@pytest.mark.parametrize("sampler", ["adaptive", "ancestral", "greedy", "psi", "threshold"])
def test_samplers_run_on_cuda(sampler):
    from sumi.sampling import SAMPLERS, generate

    if sampler not in SAMPLERS:
        pytest.skip(f"sampler {sampler!r} is not in this version's SAMPLERS {SAMPLERS}")
    model = tiny_cuda_model(torch.bfloat16)
    prompts = [[0, 5, 6, 7], [0, 9]]
    runs = [generate(model, prompts, max_new_tokens=24, sampler=sampler, seed=3, canvas_length=64,
                     trim_at_eos=False) for _ in range(2)]
    assert torch.equal(runs[0].canvas.cpu(), runs[1].canvas.cpu())  # seeded: reproducible on the GPU
    assert runs[0].canvas[0, :4].tolist() == prompts[0]
    assert int(runs[0].canvas.max()) < model.config.vocab_size


def test_fsdp2_bf16_compiled_step_on_one_gpu(tmp_path):
    """The recipes' stack on one GPU: meta init, FSDP2 with a bf16 MixedPrecisionPolicy, compiled blocks,
    activation checkpointing, one AdamW step; the loss and gradients against the unsharded fp32 model."""
    import torch.distributed as dist

    from sumi.config import sumi_tiny
    from sumi.model import SumiForMaskGeneration
    from sumi.train.config import OptimizerSection
    from sumi.train.optim import build_optimizer
    from sumi.train.parallelize import DistEnv, Layout, materialize_sharded, parallelize

    cuda = CUDA.type == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0,
                            world_size=1, device_id=CUDA if cuda else None)
    try:
        config = sumi_tiny()
        gen = torch.Generator().manual_seed(0)
        x = torch.randint(3, config.vocab_size, (4, 128), generator=gen).to(CUDA)
        t = (torch.rand(4, generator=gen) * 0.8 + 0.1).to(CUDA)
        reference = SumiForMaskGeneration.from_config(config, seed=0).to(CUDA)
        ref_loss = reference(x, labels=x, t=t, validate=False).loss
        ref_loss.backward()
        with torch.device("meta"):
            model = SumiForMaskGeneration(config)
        env = DistEnv(device=CUDA)
        parallelize(model, env, Layout("fsdp", 1, 1, 1), compile=True, activation_checkpointing="full",
                    bf16_params=True)
        materialize_sharded(model, CUDA, 0)
        optimizer = build_optimizer(model, OptimizerSection())
        loss = model(x, labels=x, t=t, validate=False).loss
        loss.backward()
        torch.testing.assert_close(loss.float(), ref_loss, rtol=2e-2, atol=2e-2)
        for (name, p), ref in zip(model.named_parameters(), reference.parameters()):
            grad = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
            assert grad.dtype == torch.float32, name  # fp32 reduction and master gradients
            scale = ref.grad.abs().max().clamp_min(1e-8)
            assert ((grad - ref.grad).abs().max() / scale).item() < 0.1, name
        optimizer.step()
        assert all(torch.isfinite(p.full_tensor() if hasattr(p, "full_tensor") else p).all()
                   for p in model.parameters())
    finally:
        dist.destroy_process_group()


def test_save_load_round_trip_on_gpu(tmp_path):
    from sumi.checkpoint import load_model, save_model

    model = tiny_cuda_model(torch.bfloat16)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m", device=CUDA.type, dtype=torch.bfloat16).eval()
    ids = torch.randint(3, model.config.vocab_size, (2, 64), device=CUDA)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert a.device.type == b.device.type == CUDA.type and torch.equal(a, b), name
    with torch.no_grad():  # close, not equal: .to(bf16) also rounded the original's RoPE tables, loading does not
        torch.testing.assert_close(model(ids).logits.float(), loaded(ids).logits.float(), atol=5e-2, rtol=5e-2)
