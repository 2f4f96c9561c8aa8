"""SumiConfig: release key names and values, presets, validation messages, unknown keys."""

from __future__ import annotations

import json

import pytest

from sumi.config import SumiConfig, get_preset, list_presets
from sumi.errors import ConfigError

RELEASE_CONFIG = {
    "architectures": ["SumiForMaskGeneration"], "model_type": "sumi", "vocab_size": 100278, "hidden_size": 4096,
    "intermediate_size": 12288, "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
    "head_dim": 128, "hidden_act": "silu", "max_position_embeddings": 4864, "rms_norm_eps": 1e-05,
    "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}, "attention_bias": False,
    "add_qkv_bias": False, "mlp_bias": False, "attention_dropout": 0.0, "tie_word_embeddings": False,
    "bos_token_id": 100256, "eos_token_id": 100257, "pad_token_id": 100277, "initializer_range": 0.02,
    "pretraining_tp": 1, "use_cache": True, "uniform_diffusion_beta_is": 1.0,
    "uniform_diffusion_z_loss_strength": 1e-05, "dtype": "bfloat16", "transformers_version": "5.8.1",
    "auto_map": {"AutoConfig": "configuration_sumi.SumiConfig",
                 "AutoModelForMaskGeneration": "modeling_sumi.SumiForMaskGeneration"},
}


def test_sumi_7b_preset_is_exactly_the_release():
    written = get_preset("sumi-7b").to_dict()
    expected = {k: v for k, v in RELEASE_CONFIG.items() if k != "auto_map"}
    assert written == expected


def test_release_config_round_trips_with_unknown_keys_kept(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(RELEASE_CONFIG))
    config = SumiConfig.from_json_file(path)
    assert config.extra["auto_map"] == RELEASE_CONFIG["auto_map"]
    config.save(tmp_path / "out")
    again = json.loads((tmp_path / "out" / "config.json").read_text())
    assert again == RELEASE_CONFIG
    generation = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert generation == {"bos_token_id": 100256, "eos_token_id": 100257, "temperature": 1.0}


def test_presets_are_valid_and_ordered_by_size():
    sizes = {name: get_preset(name).num_parameters()["total"] for name in list_presets()}
    assert sizes["sumi-tiny"] < sizes["sumi-25m"] < sizes["sumi-160m"] < sizes["sumi-1b"] < sizes["sumi-7b"]
    assert sizes["sumi-7b"] == 7_767_543_808
    assert 20e6 < get_preset("sumi-25m").num_parameters()["non_embedding"] < 26e6
    assert 150e6 < get_preset("sumi-160m").num_parameters()["non_embedding"] < 170e6
    with pytest.raises(ConfigError, match="available presets"):
        get_preset("sumi-3b")


def test_legacy_rope_theta_key_is_folded():
    data = {k: v for k, v in get_preset("sumi-tiny").to_dict().items() if k != "rope_parameters"}
    config = SumiConfig.from_dict(data | {"rope_theta": 10000.0})
    assert config.rope_parameters == {"rope_theta": 10000.0, "rope_type": "default"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_attention_heads": 5, "head_dim": None, "hidden_size": 64, "num_key_value_heads": 1},
         "must divide hidden_size"),
        ({"num_key_value_heads": 3}, "must divide num_attention_heads"),
        ({"rope_parameters": {"rope_theta": -1.0}}, "rope_theta must be a finite number"),
        ({"rope_parameters": {"rope_theta": 1e4, "rope_type": "yarn"}}, "rope_type='yarn' is not supported"),
        ({"head_dim": 15}, "must be even"),
        ({"hidden_size": 0}, "hidden_size must be a positive integer"),
        ({"eos_token_id": 600}, "eos_token_id=600 must be an id"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu' is not supported"),
        ({"mlp_bias": True}, "no biases"),
        ({"dtype": "int8"}, "dtype='int8'"),
    ],
)
def test_validation_messages(overrides, message):
    with pytest.raises(ConfigError, match=message):
        get_preset("sumi-tiny").replace(**overrides)


def test_unknown_keys_are_fatal_only_when_strict():
    data = get_preset("sumi-tiny").to_dict() | {"hiden_size": 12}
    assert SumiConfig.from_dict(data).extra == {"hiden_size": 12}
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) \['hiden_size'\]; valid keys are"):
        SumiConfig.from_dict(data, strict=True)
    with pytest.raises(ConfigError, match="unknown config field"):
        get_preset("sumi-tiny").replace(hiden_size=12)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        SumiConfig.from_json_file(tmp_path / "nope.json")
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        SumiConfig.from_json_file(bad)
