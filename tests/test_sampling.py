"""Generation API on the tiny model: shapes, anchors, frozen positions, seeds, bad input."""

from __future__ import annotations

import pytest

from sumi.sampling import generate


@pytest.mark.parametrize("sampler", ["adaptive", "ancestral", "greedy"])
def test_generate_layout_and_anchor(tiny_model, sampler):
    prompts = [[0, 5, 6, 7], [0, 9]]
    out = generate(tiny_model, prompts, max_new_tokens=12, sampler=sampler, seed=3, canvas_length=64,
                   trim_at_eos=False)
    assert out.canvas.shape == (2, 64)
    assert out.prompt_lengths == [4, 2] and out.budgets == [12, 12]
    for b, prompt in enumerate(prompts):
        p = len(prompt)
        assert out.canvas[b, :p].tolist() == prompt
        assert out.canvas[b, p + 12:p + 14].tolist() == [1, 0]  # EOS, BOS anchor
        assert out.sequences[b] == out.canvas[b, p:p + 12].tolist()
    assert out.steps_run == 12 and 1 <= out.nfe <= 12
