"""Infilling as text: templates and prompt/suffix become frozen canvas positions; the text around gaps stays."""

from __future__ import annotations

import json

import pytest

from sumi.errors import InputError
from sumi.infill import infill, layout, parse_template, prompt_suffix_layout


def test_template_parsing_and_layout(tiny_tokenizer):
    assert parse_template("The {fill:12} said {fill:3}.") == ["The ", 12, " said ", 3, "."]
    for bad in ("no gap", "x {fill:0}"):
        with pytest.raises(InputError):
            parse_template(bad)
    plan = layout(tiny_tokenizer, ["The", 4, " said"])
    the, said = tiny_tokenizer.encode("The"), tiny_tokenizer.encode(" said")
    assert plan.prompt == [tiny_tokenizer.bos_token_id, *the]
    start = len(plan.prompt)
    assert plan.gaps == [(start, start + 4)]
    assert plan.frozen == [(start + 4 + i, t) for i, t in enumerate(said)] + [
        (plan.end, tiny_tokenizer.eos_token_id), (plan.end + 1, tiny_tokenizer.bos_token_id)]
    assert prompt_suffix_layout(tiny_tokenizer, "The", " said", 4) == plan


def test_infill_keeps_the_text_and_fills_the_gaps(tiny_model, tiny_tokenizer):
    result = infill(tiny_model, tiny_tokenizer, "And God {fill:5} the light{fill:3}.", sampler="adaptive",
                    temperature=0.0, seed=0)
    canvas = result.output.canvas[0].tolist()
    plan = layout(tiny_tokenizer, parse_template("And God {fill:5} the light{fill:3}."))
    for position, token in plan.frozen:
        assert canvas[position] == token  # text segments and the closing EOS, BOS never move
    assert len(result.fills) == 2
    assert result.text.startswith("And God") and result.text.endswith(".")
    assert " the light" in result.text
    same = infill(tiny_model, tiny_tokenizer, prompt="And God", suffix=" the light", fill_tokens=5,
                  sampler="adaptive", temperature=0.0, seed=0)
    assert same.text.startswith("And God") and same.text.endswith(" the light")


def test_generate_cli_suffix_and_template(tiny_model_dir, capsys):
    from sumi.cli import main

    assert main(["generate", "--model", str(tiny_model_dir), "--prompt", "And God", "--suffix", " the light",
                 "--max-new-tokens", "4", "--seed", "0", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    sample = record["samples"][0]
    assert sample["text"].startswith("And God") and sample["text"].endswith(" the light")
    assert len(sample["fills"]) == 1
    # --json echoes the options and the resolved values: the canvas holds prompt + gap + suffix + EOS, BOS
    assert record["options"]["max_new_tokens"] == 4 and record["resolved"]["canvas_length"] > 4 + 2
    assert record["resolved"]["num_denoising_steps"] >= 1
    assert main(["generate", "--model", str(tiny_model_dir), "--template", "In the {fill:3} God {fill:2}.",
                 "--seed", "1"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("In the") and out.endswith(".") and " God " in out
    assert main(["generate", "--model", str(tiny_model_dir), "--template", "no gap"]) == 2
    assert "no gap" in capsys.readouterr().err
