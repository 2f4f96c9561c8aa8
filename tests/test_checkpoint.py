"""Release-layout checkpoints: save → load round trips (single file and sharded), and clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from sumi.checkpoint import INDEX_FILE, SINGLE_FILE, load_model, parse_size, save_model
from sumi.config import sumi_tiny
from sumi.errors import CheckpointError, ConfigError
from sumi.model import SumiForMaskGeneration

IDS = torch.randint(0, 512, (2, 20), generator=torch.Generator().manual_seed(0))


def _logits(model):
    with torch.no_grad():
        return model(IDS).logits


@pytest.mark.parametrize("shard_size", ["5GB", "60KB"])
def test_round_trip_gives_identical_logits(tmp_path, tiny_model, shard_size):
    save_model(tiny_model, tmp_path, max_shard_size=shard_size)
    loaded = load_model(tmp_path)
    assert torch.equal(_logits(loaded), _logits(tiny_model))
    sharded = (tmp_path / INDEX_FILE).exists()
    assert sharded == (shard_size == "60KB")
    assert (tmp_path / SINGLE_FILE).exists() == (not sharded)
    if sharded:
        index = json.loads((tmp_path / INDEX_FILE).read_text())
        shards = sorted(set(index["weight_map"].values()))
        assert len(shards) > 2 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
        assert set(index["weight_map"]) == set(tiny_model.state_dict())
        assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in tiny_model.state_dict().values())


def test_resaving_replaces_old_shards(tmp_path, tiny_model):
    save_model(tiny_model, tmp_path, max_shard_size="60KB")
    save_model(tiny_model, tmp_path)
    assert not list(tmp_path.glob("model-*-of-*.safetensors")) and not (tmp_path / INDEX_FILE).exists()
    assert torch.equal(_logits(load_model(tmp_path)), _logits(tiny_model))


def test_bf16_weights_and_dtype_argument(tmp_path, tiny_model):
    save_model(tiny_model, tmp_path, dtype=torch.bfloat16)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    assert all(t.dtype == torch.bfloat16 for t in load_file(tmp_path / SINGLE_FILE).values())
    on_cpu = load_model(tmp_path)  # bf16 is upcast on CPU (bf16 matmuls are slow there)
    assert on_cpu.lm_head.weight.dtype == torch.float32
    kept = load_model(tmp_path, dtype="bfloat16")
    assert kept.lm_head.weight.dtype == torch.bfloat16
    torch.testing.assert_close(_logits(on_cpu), _logits(tiny_model), atol=0.05, rtol=0.05)


def test_extra_keys_like_extra_state_are_ignored(tmp_path, tiny_model):
    save_model(tiny_model, tmp_path)
    tensors = load_file(tmp_path / SINGLE_FILE)
    tensors["model.layers.0.self_attn._extra_state"] = torch.zeros(1)
    save_file(tensors, tmp_path / SINGLE_FILE)
    assert torch.equal(_logits(load_model(tmp_path)), _logits(tiny_model))


def _corrupt(tmp_path, tiny_model, how):
    save_model(tiny_model, tmp_path)
    path = tmp_path / SINGLE_FILE
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(b"\x00" * 64)
    elif how == "missing_tensor":
        tensors = load_file(path)
        del tensors["model.layers.1.mlp.up_proj.weight"]
        save_file(tensors, path)
    elif how == "unexpected_tensor":
        tensors = load_file(path)
        tensors["model.layers.2.mlp.up_proj.weight"] = torch.zeros(1)
        save_file(tensors, path)
    elif how == "shape":
        tensors = load_file(path)
        tensors["model.norm.weight"] = torch.ones(65)
        save_file(tensors, path)
    elif how == "no_weights":
        path.unlink()
    elif how == "no_config":
        (tmp_path / "config.json").unlink()
    elif how == "bad_config":
        (tmp_path / "config.json").write_text(json.dumps({**sumi_tiny().to_dict(), "num_key_value_heads": 3}))
    elif how == "missing_shard":
        save_model(tiny_model, tmp_path, max_shard_size="60KB")
        sorted(tmp_path.glob("model-00002-of-*.safetensors"))[0].unlink()


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("truncated", r"model\.safetensors.*truncated or (corrupt|not a safetensors)"),
        ("garbage", r"model\.safetensors.*truncated or (corrupt|not a safetensors)"),
        ("missing_tensor", r"missing 1 tensor\(s\).*model\.layers\.1\.mlp\.up_proj\.weight"),
        ("unexpected_tensor",
         r"unexpected tensor\(s\).*model\.layers\.2\.mlp\.up_proj\.weight \(in model\.safetensors\)"),
        ("shape", r"tensor model\.norm\.weight in model\.safetensors has shape \(65,\).*implies \(64,\)"),
        ("no_weights", "no weights in"),
        ("no_config", "has no config.json"),
        ("bad_config", "must divide num_attention_heads"),
        ("missing_shard", r"lists shard model-00002-of-\d+\.safetensors, but that file is missing"),
    ],
)
def test_bad_checkpoints_give_clear_errors(tmp_path, tiny_model, how, message):
    _corrupt(tmp_path, tiny_model, how)
    with pytest.raises(CheckpointError, match=message):
        load_model(tmp_path)


def test_missing_directory_and_parse_size(tmp_path):
    with pytest.raises(CheckpointError, match="model directory not found"):
        load_model(tmp_path / "absent")
    assert parse_size("2MB") == 2_000_000 and parse_size("1KiB") == 1024 and parse_size(7) == 7
    with pytest.raises(ConfigError, match="cannot parse size"):
        parse_size("lots")


def test_tied_embeddings_round_trip(tmp_path):
    model = SumiForMaskGeneration.from_config(sumi_tiny().replace(tie_word_embeddings=True), seed=0)
    save_model(model, tmp_path)
    assert "lm_head.weight" not in load_file(tmp_path / SINGLE_FILE)
    loaded = load_model(tmp_path)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    assert torch.equal(_logits(loaded), _logits(model))


def test_resolve_model_loads_a_self_contained_directory(tmp_path, tiny_model_dir, tiny_model):
    from sumi.checkpoint import resolve_model

    model, tokenizer = resolve_model(tiny_model_dir)
    assert torch.equal(_logits(model), _logits(tiny_model)) and tokenizer.vocab_size == 512
    save_model(tiny_model, tmp_path)  # weights and config, but no tokenizer files
    with pytest.raises(CheckpointError, match="holds no tokenizer.json; pass a tokenizer explicitly"):
        resolve_model(tmp_path)
    with pytest.raises(CheckpointError, match="is not a sumi model directory"):
        resolve_model(tmp_path / "absent")
