"""The Sumi transformer: eager vs SDPA sink attention, padding, RoPE, norms, parameter counts, forward contract."""

from __future__ import annotations

import math

import pytest
import torch

from sumi.config import get_preset, sumi_tiny
from sumi.errors import InputError
from sumi.model import (
    RMSNorm,
    RotaryEmbedding,
    SumiForMaskGeneration,
    apply_rope,
    sink_attention_eager,
    sink_attention_sdpa,
)


def _logits(model, ids, mask=None, impl="sdpa"):
    model.set_attn_implementation(impl)
    with torch.no_grad():
        return model(ids, attention_mask=mask).logits


@pytest.mark.parametrize("causal", [False, True])
def test_eager_and_sdpa_agree_with_and_without_padding(causal):
    config = sumi_tiny().replace(is_causal=causal)
    model = SumiForMaskGeneration.from_config(config, seed=1)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (3, 40), generator=gen)
    mask = torch.ones(3, 40, dtype=torch.long)
    mask[1, 25:] = 0
    mask[2, 3:7] = 0
    for m in (None, mask):
        eager, sdpa = _logits(model, ids, m, "eager"), _logits(model, ids, m, "sdpa")
        torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=0)


def test_sink_attention_matches_the_off_by_one_formula():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 5, 8, generator=gen, dtype=torch.float64)
    k = torch.randn(2, 2, 5, 8, generator=gen, dtype=torch.float64)
    v = torch.randn(2, 2, 5, 8, generator=gen, dtype=torch.float64)
    keep = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 1, 0]], dtype=torch.bool)
    expected = torch.zeros_like(q)
    for b in range(2):
        for h in range(4):
            kv = h // 2  # GQA: query head h reads key/value head h // (H / Hkv)
            for i in range(5):
                scores = [math.exp(float(q[b, h, i] @ k[b, kv, j]) / math.sqrt(8)) if keep[b, j] else 0.0
                          for j in range(5)]
                denom = 1.0 + sum(scores)  # the sink: one extra exp(0)
                expected[b, h, i] = sum(s / denom * v[b, kv, j] for j, s in enumerate(scores))
    torch.testing.assert_close(sink_attention_eager(q, k, v, keep, False), expected)
    torch.testing.assert_close(sink_attention_sdpa(q, k, v, keep, False), expected)
    # Probabilities sum to less than one: the sink absorbs the rest (a fully masked row outputs zeros).
    none_kept = torch.zeros(2, 5, dtype=torch.bool)
    assert sink_attention_sdpa(q, k, v, none_kept, False).abs().max() == 0


def test_padded_keys_do_not_influence_real_positions(tiny_model):
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(3, 512, (1, 24), generator=gen)
    mask = torch.ones(1, 24, dtype=torch.long)
    mask[0, 16:] = 0
    changed = ids.clone()
    changed[0, 16:] = torch.randint(3, 512, (8,), generator=gen)
    a, b = _logits(tiny_model, ids, mask), _logits(tiny_model, changed, mask)
    torch.testing.assert_close(a[:, :16], b[:, :16], atol=1e-6, rtol=0)


def test_attention_is_bidirectional(tiny_model):
    ids = torch.arange(3, 23)[None]
    changed = ids.clone()
    changed[0, -1] = 100
    a, b = _logits(tiny_model, ids), _logits(tiny_model, changed)
    assert (a[0, 0] - b[0, 0]).abs().max() > 1e-4  # the first position sees the last one


def test_causal_baseline_does_not_look_ahead():
    model = SumiForMaskGeneration.from_config(sumi_tiny().replace(is_causal=True), seed=0)
    ids = torch.arange(3, 23)[None]
    changed = ids.clone()
    changed[0, -1] = 100
    a, b = _logits(model, ids), _logits(model, changed)
    torch.testing.assert_close(a[:, :-1], b[:, :-1], atol=1e-6, rtol=0)


def test_rope_scores_depend_only_on_relative_position():
    rope = RotaryEmbedding(head_dim=16, theta=500000.0, max_positions=64)
    rope.init_tables()
    cos, sin = rope(64)
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(16, generator=gen), torch.randn(16, generator=gen)
    rq = apply_rope(q.expand(1, 1, 64, 16), cos, sin)[0, 0]
    rk = apply_rope(k.expand(1, 1, 64, 16), cos, sin)[0, 0]
    torch.testing.assert_close(rq[10] @ rk[3], rq[40] @ rk[33], atol=1e-4, rtol=0)
    # rotate-half pairs channel i with i + d/2: position 1, lowest frequency pair rotates by angle 1 rad.
    x = torch.zeros(1, 1, 2, 16)
    x[..., 0] = 1.0
    out = apply_rope(x, cos[:2], sin[:2])
    torch.testing.assert_close(out[0, 0, 1, [0, 8]], torch.tensor([math.cos(1.0), math.sin(1.0)]))


def test_rmsnorm_uses_fp32_statistic_and_plain_weight():
    norm = RMSNorm(4, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 0.5, 1.0]))
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    expected = x / torch.sqrt((x**2).mean() + 1e-5) * norm.weight
    torch.testing.assert_close(norm(x), expected)
    big = torch.full((1, 4), 300.0, dtype=torch.float16)  # x² overflows fp16; the fp32 statistic does not
    assert torch.isfinite(norm(big)).all()


def test_sumi_7b_parameter_count_on_meta_device():
    with torch.device("meta"):
        model = SumiForMaskGeneration(get_preset("sumi-7b"))
    counts = model.parameter_counts()
    assert counts["total"] == 7_767_543_808 == model.num_parameters()
    assert model.num_parameters(exclude_embeddings=True) == counts["non_embedding"]
    assert counts == get_preset("sumi-7b").num_parameters()
    assert model.lm_head.weight.numel() == model.model.embed_tokens.weight.numel() == 410_738_688


def test_parameter_names_are_the_release_tensor_names(tiny_model):
    names = set(tiny_model.state_dict())
    per_layer = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                 "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm"]
    expected = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    expected |= {f"model.layers.{i}.{p}.weight" for i in range(2) for p in per_layer}
    assert names == expected


def test_loss_accepts_every_t_shape_and_ignores_minus_100(tiny_model):
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(3, 512, (2, 16), generator=gen)
    z = x.clone()
    z[:, ::3] = torch.randint(3, 512, z[:, ::3].shape, generator=gen)
    t = torch.tensor([0.3, 0.7])
    loss_b = tiny_model(z, labels=x, t=t).loss
    torch.testing.assert_close(tiny_model(z, labels=x, t=t[:, None]).loss, loss_b)
    torch.testing.assert_close(tiny_model(z, labels=x, t=t[:, None].expand(2, 16)).loss, loss_b)
    ignored = x.clone()
    ignored[0] = -100
    only_second = tiny_model(z[1:], labels=x[1:], t=t[1:]).loss
    torch.testing.assert_close(tiny_model(z, labels=ignored, t=t).loss, only_second, atol=1e-6, rtol=1e-5)
    loss_b.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in tiny_model.parameters())


def test_forward_contract_errors(tiny_model):
    ids = torch.randint(0, 512, (1, 8))
    with pytest.raises(InputError, match="labels were given without t"):
        tiny_model(ids, labels=ids)
    with pytest.raises(InputError, match=r"token ids must lie in \[0, 512\)"):
        tiny_model(torch.tensor([[1, 512]]))
    with pytest.raises(InputError, match="exceeds max_position_embeddings=256"):
        tiny_model(torch.zeros(1, 257, dtype=torch.long))
    with pytest.raises(InputError, match=r"t must have shape \[B\], \[B,1\] or \[B,S\]"):
        tiny_model(ids, labels=ids, t=torch.rand(3))
    with pytest.raises(InputError, match="attention_mask shape"):
        tiny_model(ids, attention_mask=torch.ones(1, 7))
    with pytest.raises(InputError, match="unknown attention implementation"):
        tiny_model.set_attn_implementation("flash")


def test_meta_construction_then_materialise_matches_direct_init():
    config = sumi_tiny()
    with torch.device("meta"):
        model = SumiForMaskGeneration(config)
    model.to_empty(device="cpu")
    model.model.rotary.cos = torch.empty(config.max_position_embeddings, config.resolved_head_dim)
    model.model.rotary.sin = torch.empty(config.max_position_embeddings, config.resolved_head_dim)
    model.init_weights(seed=3)
    direct = SumiForMaskGeneration.from_config(config, seed=3)
    ids = torch.randint(0, 512, (1, 12))
    torch.testing.assert_close(_logits(model, ids), _logits(direct, ids))


def test_labels_out_of_range_are_rejected(tiny_model):
    ids = torch.randint(0, 512, (1, 8))
    labels = ids.clone()
    labels[0, 3] = 512
    with pytest.raises(InputError, match=r"labels must be -100 \(ignored\) or ids in \[0, 512\)"):
        tiny_model(ids, labels=labels, t=torch.tensor([0.5]))


def test_pad_row_of_the_embedding_gets_no_gradient():
    """As in the release (padding_idx = pad_token_id): even with pad ids in the noisy input, the pad row's
    gradient is exactly zero (before: ~3e-3 after one step), while other rows that occur do get gradient."""
    from sumi.config import sumi_tiny
    from sumi.release import Sumi

    config = sumi_tiny()
    model = Sumi.from_config(config, seed=0)
    pad = config.pad_token_id
    x = torch.randint(3, config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    z = x.clone()
    z[:, ::3] = pad
    model(z, labels=x, t=torch.tensor([0.3, 0.7])).loss.backward()
    grad = model.model.embed_tokens.weight.grad
    assert torch.count_nonzero(grad[pad]) == 0
    assert torch.count_nonzero(grad[int(z[0, 1])]) > 0
