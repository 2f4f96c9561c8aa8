"""transformers integration: Auto classes load the release layout as sumi's own model, save it back unchanged."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402

import sumi  # noqa: E402
from sumi.checkpoint import weight_files  # noqa: E402
from sumi.config import SumiConfig  # noqa: E402
from sumi.errors import ConfigError, InputError  # noqa: E402
from sumi.model import SumiForMaskGeneration  # noqa: E402

transformers = pytest.importorskip("transformers")
from transformers import AutoConfig, AutoModel, AutoModelForMaskGeneration  # noqa: E402

import sumi.integrations.hf  # noqa: E402,F401  (registers the Auto classes)
from sumi.hf import SumiHFConfig, SumiHFForMaskGeneration  # noqa: E402

# The release's config.json points at remote code; sumi must load it without trust_remote_code.
RELEASE_AUTO_MAP = {
    "AutoConfig": "configuration_sumi.SumiConfig",
    "AutoModel": "modeling_sumi.SumiForMaskGeneration",
    "AutoModelForMaskGeneration": "modeling_sumi.SumiForMaskGeneration",
}


def _with_auto_map(directory):
    path = directory / "config.json"
    data = json.loads(path.read_text())
    data["auto_map"] = RELEASE_AUTO_MAP
    data["transformers_version"] = "5.8.1"
    path.write_text(json.dumps(data, indent=2))
    return directory


@pytest.fixture(scope="module")
def release_dirs(tmp_path_factory):
    """Single-file fp32, sharded fp32 and sharded bf16 directories of the same seeded tiny model."""
    from sumi.config import sumi_tiny

    model = sumi.Sumi.from_config(sumi_tiny(), seed=0)
    dirs = {}
    for name, kwargs in {"single": {}, "sharded": {"max_shard_size": "100KB"},
                         "bf16": {"max_shard_size": "100KB", "dtype": torch.bfloat16}}.items():
        directory = tmp_path_factory.mktemp(name)
        model.save_pretrained(directory, **kwargs)
        dirs[name] = _with_auto_map(directory)
    assert (dirs["sharded"] / "model.safetensors.index.json").is_file()
    return dirs


@pytest.fixture(scope="module")
def ids():
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 512, (2, 19), generator=gen)


def test_auto_config_is_sumi_config(release_dirs):
    config = AutoConfig.from_pretrained(release_dirs["single"])
    assert type(config) is SumiHFConfig
    expected = SumiConfig.from_json_file(release_dirs["single"])
    got = config.to_sumi_config()
    assert got.replace(extra={}) == expected.replace(extra={})
    assert got.extra["auto_map"] == RELEASE_AUTO_MAP
    assert config.hidden_size == 64 and config.num_key_value_heads == 2 and config.rope_parameters["rope_theta"] == 5e5


def test_hf_config_mirrors_every_sumi_field():
    sumi_fields = {f.name for f in dataclasses.fields(SumiConfig)} - {"extra"}
    hf = SumiHFConfig()
    missing = [name for name in sumi_fields if not hasattr(hf, name)]
    assert missing == []
    assert hf.to_sumi_config().replace(extra={}) == SumiConfig().replace(extra={})


@pytest.mark.parametrize("layout", ["single", "sharded"])
@pytest.mark.parametrize("auto", [AutoModelForMaskGeneration, AutoModel])
def test_auto_model_logits_equal_sumi(release_dirs, ids, layout, auto):
    directory = release_dirs[layout]
    reference = sumi.load_model(directory)
    model = auto.from_pretrained(directory)
    assert type(model) is SumiHFForMaskGeneration and isinstance(model, SumiForMaskGeneration)
    assert not model.training and model.dtype == torch.float32
    assert sorted(model.state_dict()) == sorted(reference.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0, atol=0)
        mask = torch.ones_like(ids)
        mask[1, -5:] = 0
        torch.testing.assert_close(model(ids, attention_mask=mask).logits,
                                   reference(ids, attention_mask=mask).logits, rtol=0, atol=0)


def test_transformers_native_loader_agrees(release_dirs, ids):
    """output_loading_info keeps transformers' own loader (not sumi's streaming path): same tensors, no gaps."""
    streamed = AutoModelForMaskGeneration.from_pretrained(release_dirs["sharded"])
    native, info = AutoModelForMaskGeneration.from_pretrained(release_dirs["sharded"], output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    for (name, a), (_, b) in zip(streamed.state_dict().items(), native.state_dict().items()):
        assert torch.equal(a, b), name
    torch.testing.assert_close(native.model.rotary.cos, streamed.model.rotary.cos, rtol=0, atol=0)
    eager = AutoModelForMaskGeneration.from_pretrained(release_dirs["sharded"], attn_implementation="eager")
    assert eager.attn_implementation == "eager" and eager.config._attn_implementation == "eager"
    with torch.no_grad():
        torch.testing.assert_close(eager(ids).logits, streamed(ids).logits, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(native(ids).logits, streamed(ids).logits, rtol=0, atol=0)


def test_dtype_handling(release_dirs, ids):
    auto_bf16 = AutoModelForMaskGeneration.from_pretrained(release_dirs["bf16"])  # "auto": the stored dtype
    assert {p.dtype for p in auto_bf16.parameters()} == {torch.bfloat16}
    assert auto_bf16.model.rotary.cos.dtype == torch.float32  # RoPE tables stay fp32
    assert auto_bf16.config.dtype == torch.bfloat16
    cast = AutoModelForMaskGeneration.from_pretrained(release_dirs["single"], dtype=torch.bfloat16)
    assert {p.dtype for p in cast.parameters()} == {torch.bfloat16}
    up = AutoModelForMaskGeneration.from_pretrained(release_dirs["bf16"], dtype="float32")
    reference = sumi.load_model(release_dirs["bf16"])  # sumi upcasts bf16 to fp32 on CPU
    assert {p.dtype for p in up.parameters()} == {torch.float32}
    with torch.no_grad():
        torch.testing.assert_close(up(ids).logits, reference(ids).logits, rtol=0, atol=0)
    # bf16 weights hold the fp32 ones rounded: same tensors after the cast
    fp32 = sumi.load_model(release_dirs["single"])
    for name, p in auto_bf16.state_dict().items():
        assert torch.equal(p, fp32.state_dict()[name].to(torch.bfloat16)), name


def test_save_pretrained_writes_release_layout(release_dirs, tmp_path, ids):
    source = release_dirs["sharded"]
    model = AutoModelForMaskGeneration.from_pretrained(source)
    out = tmp_path / "saved"
    model.save_pretrained(out, max_shard_size="100KB")
    original = json.loads((source / "config.json").read_text())
    saved = json.loads((out / "config.json").read_text())
    assert set(saved) == set(original)
    assert {k: v for k, v in saved.items() if k != "transformers_version"} == \
        {k: v for k, v in original.items() if k != "transformers_version"}
    assert json.loads((out / "generation_config.json").read_text()) == \
        json.loads((source / "generation_config.json").read_text())
    assert set(weight_files(out)) == set(weight_files(source))
    assert (out / "model.safetensors.index.json").is_file()
    for name, file in weight_files(out).items():
        with safe_open(str(file), framework="pt") as f, safe_open(str(weight_files(source)[name]), "pt") as g:
            assert torch.equal(f.get_tensor(name), g.get_tensor(name)), name
    reloaded = sumi.load_model(out)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    with pytest.raises(InputError, match="safetensors"):
        model.save_pretrained(tmp_path / "pickle", safe_serialization=False)


def test_fresh_model_and_sumi_view(release_dirs, ids):
    config = SumiHFConfig.from_sumi_config(sumi.get_preset("sumi-tiny"))
    model = SumiHFForMaskGeneration(config)
    plain = SumiForMaskGeneration.from_config(sumi.get_preset("sumi-tiny"), seed=0)
    model.init_weights(seed=0)  # sumi's seeded initialisation, same tensors as the plain model
    for name, p in plain.state_dict().items():
        assert torch.equal(model.state_dict()[name], p), name
    view = model.to_sumi()
    assert type(view) is SumiForMaskGeneration and view.lm_head.weight is model.lm_head.weight
    with torch.no_grad():
        torch.testing.assert_close(view(ids).logits, plain(ids).logits, rtol=0, atol=0)
    model.set_attn_implementation("eager")
    assert model.attn_implementation == "eager"
    with pytest.raises(InputError, match="sdpa"):
        model.set_attn_implementation("flash_attention_2")
    with pytest.raises(InputError, match="sdpa"):
        SumiHFForMaskGeneration.from_pretrained(release_dirs["single"], attn_implementation="flex_attention")


def test_invalid_config_is_a_config_error():
    with pytest.raises(ConfigError, match="num_key_value_heads"):
        SumiHFConfig(num_attention_heads=4, num_key_value_heads=3)


@pytest.mark.slow
def test_registration_is_an_explicit_import(release_dirs):
    """`import sumi` leaves transformers alone (not imported, no import hook); `import sumi.integrations.hf`
    registers the Auto classes, whatever was imported before it."""
    code = (
        "import sys, sumi; assert 'transformers' not in sys.modules, 'import sumi imported transformers'; "
        "assert not any('sumi' in type(f).__module__ for f in sys.meta_path), 'import sumi installed a finder'; "
        "from transformers import AutoConfig; "
        "import sumi.integrations.hf; "
        f"c = AutoConfig.from_pretrained({str(release_dirs['single'])!r}); print(type(c).__name__)"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "SumiHFConfig"


def test_samplers_accept_the_transformers_model(release_dirs):
    """The Auto model is a SumiForMaskGeneration: sumi's samplers give the same sequences for the same seed."""
    from sumi.sampling import generate

    prompts = [[0, 17, 42, 99], [0, 5]]
    kwargs = {"max_new_tokens": 6, "num_denoising_steps": 4, "canvas_length": 16, "seed": 5, "temperature": 0.7}
    hf = generate(AutoModelForMaskGeneration.from_pretrained(release_dirs["single"]), prompts, **kwargs)
    ref = generate(sumi.load_model(release_dirs["single"]), prompts, **kwargs)
    assert hf.sequences == ref.sequences and torch.equal(hf.canvas, ref.canvas)
