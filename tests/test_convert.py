"""sumi convert: trainer DCP <-> release (bit-exact round trip) and Megatron-LM GPT -> release (logit equality)."""

from __future__ import annotations

import argparse
import warnings

import pytest
import torch
import torch.distributed.checkpoint as dcp
import yaml

import sumi
from sumi.cli import main as cli_main
from sumi.config import sumi_tiny
from sumi.convert import convert, detect_format
from sumi.convert import dcp as dcp_io
from sumi.convert.megatron import split_qkv, to_release_state
from sumi.errors import CheckpointError, ConfigError
from sumi.model import SumiForMaskGeneration

PADDED_VOCAB = 640  # Megatron pads 512 up to a multiple of its TP divisor (128 here)


def _ids(n: int = 2, s: int = 21) -> torch.Tensor:
    return torch.randint(0, 512, (n, s), generator=torch.Generator().manual_seed(1))


def _assert_same_model(a: SumiForMaskGeneration, b: SumiForMaskGeneration) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for name in sa:
        assert sa[name].dtype == sb[name].dtype and torch.equal(sa[name], sb[name]), name
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(a(ids).logits, b(ids).logits, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- trainer DCP
@pytest.fixture(scope="module")
def trainer_checkpoints(tmp_path_factory):
    """A real trainer checkpoint (sumi.train.checkpointing.Checkpointer) after one AdamW step."""
    from sumi.train.checkpointing import Checkpointer

    config = sumi_tiny().replace(intermediate_size=128)
    model = SumiForMaskGeneration.from_config(config, seed=3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = _ids()
    model(ids, labels=ids, t=torch.full((2,), 0.5)).loss.backward()
    optimizer.step()
    run_yaml = yaml.safe_dump({"model": {"preset": "sumi-tiny", "overrides": {"intermediate_size": 128},
                                         "causal": False, "init_seed": 3, "attn_implementation": "sdpa"}})
    root = tmp_path_factory.mktemp("run") / "checkpoints"
    Checkpointer(root).save(7, model, optimizer, {"step": 7}, run_yaml)
    return root, model.eval()


def test_dcp_release_dcp_round_trip_is_bit_exact(trainer_checkpoints, tmp_path, tiny_model_dir):
    root, trained = trainer_checkpoints
    assert detect_format(root) == "dcp"
    release = convert(root, tmp_path / "release", max_shard_size="60KB", tokenizer=tiny_model_dir)
    assert detect_format(release) == "release"
    assert (release / "model.safetensors.index.json").is_file() and (release / "tokenizer.json").is_file()
    loaded = sumi.load_model(release)
    assert loaded.config.intermediate_size == 128  # architecture read from the trainer's config.yaml
    _assert_same_model(loaded, trained)

    again = convert(release, tmp_path / "dcp")
    assert detect_format(again) == "dcp"
    original = dcp_io.read_model_state(root)
    rewritten = dcp_io.read_model_state(again)
    assert sorted(original) == sorted(rewritten)
    for name, tensor in original.items():
        assert torch.equal(tensor, rewritten[name]) and tensor.dtype == rewritten[name].dtype, name

    back = convert(again, tmp_path / "release2", dtype="bfloat16")  # config.json inside the model-only DCP
    reloaded = sumi.load_model(back, dtype=torch.bfloat16)
    for name, tensor in trained.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor.to(torch.bfloat16)), name


def test_model_only_dcp_initialises_a_model(trainer_checkpoints, tmp_path):
    """The documented way to start training from a release: dcp.load into {"model": model.state_dict()}."""
    root, trained = trainer_checkpoints
    out = convert(convert(root, tmp_path / "rel"), tmp_path / "dcp")
    fresh = SumiForMaskGeneration.from_config(trained.config, seed=99)
    state = {"model": fresh.state_dict()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.load(state, checkpoint_id=str(out))
    fresh.load_state_dict(state["model"])
    _assert_same_model(fresh.eval(), trained)


def test_dcp_errors(trainer_checkpoints, tmp_path, tiny_model_dir):
    root, _ = trainer_checkpoints
    model_only = convert(tiny_model_dir, tmp_path / "dcp")
    (model_only / "config.json").unlink()
    with pytest.raises(ConfigError, match="pass --config"):
        convert(model_only, tmp_path / "x")
    with pytest.raises(CheckpointError, match="config implies|do not match"):
        convert(root, tmp_path / "y", config="sumi-tiny")  # intermediate 176 != 128
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(CheckpointError, match="not empty"):
        convert(root, tmp_path / "busy")


# ---------------------------------------------------------------------------------------------- Megatron
def _megatron_state(model: SumiForMaskGeneration, *, te_norms: bool) -> dict[str, torch.Tensor]:
    """Fuse a sumi model the way Megatron-Core stores it, written head by head (independent of the converter)."""
    cfg = model.config
    h, hkv, hd, i = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.resolved_head_dim, cfg.intermediate_size
    sd = model.state_dict()
    gen = torch.Generator().manual_seed(5)
    pad = torch.randn(PADDED_VOCAB - cfg.vocab_size, cfg.hidden_size, generator=gen)
    out = {
        "embedding.word_embeddings.weight": torch.cat([sd["model.embed_tokens.weight"], pad]),
        "output_layer.weight": torch.cat([sd["lm_head.weight"], -pad]),
        "decoder.final_layernorm.weight": sd["model.norm.weight"],
    }
    for layer in range(cfg.num_hidden_layers):
        p, m = f"model.layers.{layer}.", f"decoder.layers.{layer}."
        q, k, v = (sd[p + f"self_attn.{n}_proj.weight"] for n in "qkv")
        rows = []
        for group in range(hkv):  # Megatron: [q heads of the group..., k head, v head] per key/value group
            for j in range(h // hkv):
                head = group * (h // hkv) + j
                rows.append(q[head * hd:(head + 1) * hd])
            rows.append(k[group * hd:(group + 1) * hd])
            rows.append(v[group * hd:(group + 1) * hd])
        out[m + "self_attention.linear_qkv.weight"] = torch.cat(rows)
        out[m + "self_attention.linear_proj.weight"] = sd[p + "self_attn.o_proj.weight"]
        out[m + "mlp.linear_fc1.weight"] = torch.cat([sd[p + "mlp.gate_proj.weight"], sd[p + "mlp.up_proj.weight"]])
        out[m + "mlp.linear_fc2.weight"] = sd[p + "mlp.down_proj.weight"]
        if te_norms:
            out[m + "self_attention.linear_qkv.layer_norm_weight"] = sd[p + "input_layernorm.weight"]
            out[m + "mlp.linear_fc1.layer_norm_weight"] = sd[p + "post_attention_layernorm.weight"]
            out[m + "self_attention.core_attention._extra_state"] = torch.zeros(4, dtype=torch.uint8)
        else:
            out[m + "input_layernorm.weight"] = sd[p + "input_layernorm.weight"]
            out[m + "pre_mlp_layernorm.weight"] = sd[p + "post_attention_layernorm.weight"]
        assert out[m + "self_attention.linear_qkv.weight"].shape == ((h + 2 * hkv) * hd, cfg.hidden_size)
        assert out[m + "mlp.linear_fc1.weight"].shape == (2 * i, cfg.hidden_size)
    return {name: t.clone() for name, t in out.items()}


@pytest.fixture(scope="module")
def sumi_model():
    model = SumiForMaskGeneration.from_config(sumi_tiny(), seed=11).eval()
    # make norm gains non-trivial so a swapped norm would change the logits
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    return model


def test_split_qkv_matches_head_layout(sumi_model):
    megatron = _megatron_state(sumi_model, te_norms=True)
    q, k, v = split_qkv(megatron["decoder.layers.0.self_attention.linear_qkv.weight"], sumi_model.config)
    sd = sumi_model.state_dict()
    assert torch.equal(q, sd["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(k, sd["model.layers.0.self_attn.k_proj.weight"])
    assert torch.equal(v, sd["model.layers.0.self_attn.v_proj.weight"])


def test_megatron_legacy_pt_to_release_logits_equal(sumi_model, tmp_path):
    root = tmp_path / "megatron"
    rank_dir = root / "iter_0000010" / "mp_rank_00"
    rank_dir.mkdir(parents=True)
    torch.save({"model": _megatron_state(sumi_model, te_norms=True), "iteration": 10, "checkpoint_version": 3.0},
               rank_dir / "model_optim_rng.pt")
    (root / "latest_checkpointed_iteration.txt").write_text("10")
    assert detect_format(root) == "megatron"
    out = convert(root, tmp_path / "release", config="sumi-tiny")
    _assert_same_model(sumi.load_model(out), sumi_model)


def test_megatron_torch_dist_stacked_layers_to_release(sumi_model, tmp_path):
    """torch_dist (DCP) form with Megatron-Core's stacked [num_layers, ...] layer tensors and local norm names."""
    flat = _megatron_state(sumi_model, te_norms=False)
    layers = sumi_model.config.num_hidden_layers
    stacked: dict[str, object] = {k: v for k, v in flat.items() if not k.startswith("decoder.layers.")}
    for rest in {k.split(".", 3)[3] for k in flat if k.startswith("decoder.layers.")}:
        stacked[f"decoder.layers.{rest}"] = torch.stack([flat[f"decoder.layers.{n}.{rest}"] for n in range(layers)])
    stacked["optimizer.state.exp_avg.output_layer.weight"] = torch.zeros(PADDED_VOCAB, 64)
    stacked["decoder.layers.self_attention.linear_qkv._extra_state"] = b"te-fp8-metadata"
    directory = tmp_path / "iter_0000020"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(stacked, checkpoint_id=str(directory))
    assert detect_format(directory) == "megatron"
    out = convert(directory, tmp_path / "release", config=sumi_tiny(), dtype="bfloat16")
    loaded = sumi.load_model(out, dtype=torch.bfloat16)
    for name, tensor in sumi_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor.to(torch.bfloat16)), name


def test_megatron_errors(sumi_model, tmp_path):
    cfg = sumi_model.config
    good = _megatron_state(sumi_model, te_norms=True)
    missing = dict(good)
    del missing["decoder.layers.1.mlp.linear_fc2.weight"]
    with pytest.raises(CheckpointError, match=r"missing decoder\.layers\.1\.mlp\.linear_fc2\.weight"):
        to_release_state(missing, cfg)
    with pytest.raises(CheckpointError, match=r"linear_fc1\.weight has shape \(352, 64\).*implies \(256, 64\)"):
        to_release_state(good, cfg.replace(intermediate_size=128))
    biased = dict(good, **{"decoder.layers.0.self_attention.linear_qkv.bias": torch.zeros(128)})
    with pytest.raises(CheckpointError, match="no place in a Sumi model"):
        to_release_state(biased, cfg)
    with pytest.raises(CheckpointError, match="padded_vocab >= 1024"):
        to_release_state(good, cfg.replace(vocab_size=1024))
    # a legacy file that pickles Python objects (Megatron's argparse args) is refused by weights_only
    pickled = tmp_path / "model_optim_rng.pt"
    torch.save({"model": good, "args": argparse.Namespace(num_layers=2)}, pickled)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        convert(pickled, tmp_path / "out", config="sumi-tiny")
    with pytest.raises(ConfigError, match="pass --config"):
        convert(pickled, tmp_path / "out2")
    split = tmp_path / "tp2"
    for rank in ("mp_rank_00", "mp_rank_01"):
        (split / rank).mkdir(parents=True)
    with pytest.raises(CheckpointError, match="merge them"):
        convert(split, tmp_path / "out3", config="sumi-tiny")


def test_unknown_format_and_cli(tmp_path, tiny_model_dir, capsys):
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="cannot tell the format"):
        detect_format(junk)
    assert cli_main(["convert", str(junk), str(tmp_path / "o")]) == 2
    assert "cannot tell the format" in capsys.readouterr().err
    assert cli_main(["convert", str(tiny_model_dir), str(tmp_path / "d"), "--to", "dcp"]) == 0
    assert cli_main(["convert", str(tmp_path / "d"), str(tmp_path / "r"), "--tokenizer", str(tiny_model_dir)]) == 0
    _assert_same_model(sumi.load_model(tmp_path / "r"), sumi.load_model(tiny_model_dir))
    assert (tmp_path / "r" / "tokenizer.json").is_file()
