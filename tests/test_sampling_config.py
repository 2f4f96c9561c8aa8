"""SamplingConfig: one validated home for every sampler option, used by every entry point."""

from __future__ import annotations

import pytest
import torch

from sumi.errors import ConfigError, InputError, OptionError
from sumi.sampling import SamplingConfig, generate
from sumi.sampling.canvas import row_budget


@pytest.mark.parametrize("overrides, field", [
    (dict(sampler="beam"), "sampler"),
    (dict(schedule="exp"), "schedule"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=True), "max_new_tokens"),
    (dict(num_denoising_steps=2.0), "num_denoising_steps"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(temperature=float("inf")), "temperature"),
    (dict(top_k=0), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(tokens_per_step=0), "tokens_per_step"),
    (dict(min_log_snr=1.0, max_log_snr=1.0), "min_log_snr"),
    (dict(canvas_length=1), "canvas_length"),
    (dict(anchor_eosbos=1), "anchor_eosbos"),
    (dict(seed="7"), "seed"),
    (dict(sliding=True, frozen=[[(3, 4)]]), "frozen"),
    (dict(colour="blue"), "colour"),
])
def test_bad_option_names_its_field_and_is_both_config_and_input_error(overrides, field):
    with pytest.raises(OptionError) as caught:
        SamplingConfig().replace(**overrides)
    assert caught.value.field == field
    assert isinstance(caught.value, ConfigError) and isinstance(caught.value, InputError)


def test_replace_validates_and_keeps_the_original():
    base = SamplingConfig(sampler="greedy", seed=3)
    derived = base.replace(max_new_tokens=7)
    assert (base.max_new_tokens, derived.max_new_tokens, derived.sampler, derived.seed) == (128, 7, "greedy", 3)
    assert derived.steps == 7 and derived.replace(num_denoising_steps=2).steps == 2
    assert base.replace() is base


def test_config_is_hashable_and_lists_become_tuples():
    """The server groups requests by config, so a config must hash and compare by value."""
    a = SamplingConfig(frozen=[[(1, 2)]], denoise_end=[5])
    b = SamplingConfig(frozen=(((1, 2),),), denoise_end=(5,))
    assert a == b and hash(a) == hash(b) and a.frozen == (((1, 2),),)
    assert a.to_dict()["frozen"] == [[[1, 2]]] and a.to_dict()["denoise_end"] == [5]


def test_generate_accepts_a_config_and_overrides_alike(tiny_model):
    config = SamplingConfig(max_new_tokens=6, canvas_length=16, sampler="ancestral", seed=5)
    by_config = generate(tiny_model, [[0, 4, 5]], config)
    by_keywords = generate(tiny_model, [[0, 4, 5]], max_new_tokens=6, canvas_length=16, sampler="ancestral", seed=5)
    overridden = generate(tiny_model, [[0, 4, 5]], config.replace(seed=None), seed=5)
    assert torch.equal(by_config.canvas, by_keywords.canvas) and torch.equal(by_config.canvas, overridden.canvas)


def test_row_budget_is_the_anchor_rule():
    assert row_budget(10, prompt_length=3, canvas_length=32, anchor_eosbos=True) == 10
    assert row_budget(10, prompt_length=3, canvas_length=12, anchor_eosbos=True) == 7  # C − P − 2
    assert row_budget(10, prompt_length=11, canvas_length=12, anchor_eosbos=True) == 1  # never below 1
    assert row_budget(10, prompt_length=3, canvas_length=12, anchor_eosbos=False) == 10
