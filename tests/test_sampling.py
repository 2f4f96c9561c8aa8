"""Generation API on the tiny model: shapes, anchors, frozen positions, seeds, bad input."""

from __future__ import annotations

import pytest
import torch

from sumi.errors import InputError
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


def _counting_model(vocab: int = 64, length: int = 16):
    """A fake bidirectional model whose argmax at position i is (z_{i-1} + 1) mod V: text with structure."""
    from types import SimpleNamespace

    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = SimpleNamespace(vocab_size=vocab, max_position_embeddings=length, bos_token_id=0,
                                          eos_token_id=1)

        def forward(self, ids):
            nxt = torch.roll((ids + 1) % vocab, 1, dims=1)
            logits = 20.0 * torch.nn.functional.one_hot(nxt, vocab).float()
            logits[:, 0] = 0.0
            return logits

    return Counting()


def _target_model(target: list[int], vocab: int = 32):
    """A fake model that always predicts ``target`` (ignores its input)."""
    from types import SimpleNamespace

    class Target(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = SimpleNamespace(vocab_size=vocab, max_position_embeddings=len(target), bos_token_id=0,
                                          eos_token_id=1)
            self.register_buffer("logits", 8.0 * torch.nn.functional.one_hot(torch.tensor(target), vocab).float())

        def forward(self, ids):
            return self.logits[: ids.shape[1]].expand(ids.shape[0], -1, -1)

    return Target()


@pytest.mark.parametrize("sampler,temperature", [("ancestral", 1.0), ("adaptive", 1.0), ("greedy", 1.0)])
def test_frozen_anchor_and_tail_never_change(tiny_model, sampler, temperature):
    prompts = [[0, 5, 6], [0, 7, 8, 9, 10]]
    frozen = [[(10, 44), (12, 45)], [(14, 46)]]
    out = generate(tiny_model, prompts, max_new_tokens=16, sampler=sampler, temperature=temperature, seed=1,
                   canvas_length=40, frozen=frozen, denoise_end=[30, 32], tokens_per_step=4,
                   return_trajectory=True, trim_at_eos=False)
    traj = out.trajectory
    fixed = traj.frozen_mask
    first = traj.frames[0].canvas
    for frame in traj.frames:
        assert torch.equal(frame.canvas[fixed], first[fixed])
        assert not bool(frame.committed[fixed].any())
    assert out.canvas[0, :3].tolist() == [0, 5, 6] and out.canvas[1, :5].tolist() == [0, 7, 8, 9, 10]
    assert out.canvas[0, [10, 12]].tolist() == [44, 45] and out.canvas[1, 14].item() == 46
    assert out.canvas[0, 19:21].tolist() == [1, 0] and out.canvas[1, 21:23].tolist() == [1, 0]
    assert bool(fixed[0, 30:].all()) and bool(fixed[1, 32:].all()) and not bool(fixed[0, 21:30].any())
    assert len(traj.frames) == out.steps_run + 1
    assert out.sequences[0][7] == 44  # frozen tokens are part of the new text


def test_budget_follows_release_formula(tiny_model):
    out = generate(tiny_model, [[0, 3, 4]], max_new_tokens=19, canvas_length=22, sampler="greedy", seed=0,
                   trim_at_eos=False)
    assert out.budgets == [17]  # max(1, min(19, 22 - 3 - 2))
    assert out.canvas[0, 20:].tolist() == [1, 0]
    out = generate(tiny_model, [[0]], max_new_tokens=3, canvas_length=10, anchor_eosbos=False, sampler="greedy",
                   seed=0, trim_at_eos=False)
    assert out.budgets == [3] and len(out.sequences[0]) == 3


def test_seeds_reproduce(tiny_model):
    kw = dict(max_new_tokens=10, sampler="ancestral", canvas_length=32, num_denoising_steps=6)
    a = generate(tiny_model, [[0, 4]], seed=11, **kw)
    b = generate(tiny_model, [[0, 4]], generator=torch.Generator().manual_seed(11), **kw)
    c = generate(tiny_model, [[0, 4]], seed=12, **kw)
    assert torch.equal(a.canvas, b.canvas) and not torch.equal(a.canvas, c.canvas)
    torch.manual_seed(5)
    d = generate(tiny_model, [[0, 4]], **kw)
    torch.manual_seed(5)
    e = generate(tiny_model, [[0, 4]], **kw)
    assert torch.equal(d.canvas, e.canvas)


def test_tensor_prompts_with_attention_mask_equal_lists(tiny_model):
    ids = torch.tensor([[0, 5, 6, 2], [0, 9, 2, 2]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    kw = dict(max_new_tokens=8, sampler="adaptive", temperature=0.7, canvas_length=24, seed=2)
    a = generate(tiny_model, ids, attention_mask=mask, **kw)
    b = generate(tiny_model, [[0, 5, 6], [0, 9]], **kw)
    assert a.prompt_lengths == [3, 2] and torch.equal(a.canvas, b.canvas) and a.sequences == b.sequences


def test_logit_reuse_and_early_stop():
    model = _counting_model(length=12)
    kw = dict(max_new_tokens=8, sampler="greedy", num_denoising_steps=40, anchor_eosbos=False, seed=0)
    full = generate(model, [[0, 5, 6]], early_stop=False, **kw)
    early = generate(model, [[0, 5, 6]], early_stop=True, **kw)
    assert full.sequences == early.sequences == [[7, 8, 9, 10, 11, 12, 13, 14]]
    assert full.steps_run == 40 and full.nfe < 12  # converged steps reuse the logits
    assert early.steps_run == early.nfe < 12


def test_callback_can_stop_and_sees_step_info(tiny_model):
    seen = []

    def cb(info):
        seen.append(info)
        info.argmax_prob  # noqa: B018 -- computed lazily; read it while the step's logits are current
        return info.step == 2

    out = generate(tiny_model, [[0, 7]], max_new_tokens=8, canvas_length=16, sampler="ancestral", seed=0, callback=cb)
    assert out.steps_run == 3 and [s.step for s in seen] == [0, 1, 2]
    info = seen[-1]
    assert info.log_snr_t < info.log_snr_s and info.num_steps == 8
    assert info.canvas.shape == info.argmax.shape == info.argmax_prob.shape == info.committed.shape == (1, 16)
    assert bool(((info.argmax_prob > 0) & (info.argmax_prob <= 1)).all())


def test_sliding_continues_structure():
    model = _counting_model(vocab=64, length=16)
    out = generate(model, [[0, 5, 6, 7]], max_new_tokens=40, sliding=True, context_length=4, sampler="greedy",
                   seed=0)
    assert out.sequences == [list(range(8, 48))]
    assert out.nfe > 0 and out.canvas.shape == (1, 16)
    with pytest.raises(InputError, match="sliding"):
        generate(model, [[0, 5]], max_new_tokens=40, sampler="greedy")
    with pytest.raises(InputError, match="initial_canvas cannot be combined with sliding"):
        generate(model, [[0, 5]], max_new_tokens=40, sliding=True, initial_canvas=torch.zeros(1, 16, dtype=torch.long))


def test_self_correct_repairs_and_respects_frozen():
    from sumi.sampling.self_correct import self_correct

    target = [0, 5, 9, 13, 17, 21, 25, 29, 3, 7, 11, 1]
    model = _target_model(target)
    corrupt = torch.tensor([target])
    corrupt[0, [2, 4, 6, 9]] = torch.tensor([30, 30, 30, 30])
    frozen = torch.zeros_like(corrupt, dtype=torch.bool)
    frozen[0, 9] = True
    fixed, stats = self_correct(model, corrupt, frozen_mask=frozen, steps=20, tokens_per_step=2, seed=0)
    expected = list(target)
    expected[9] = 30
    assert fixed[0].tolist() == expected
    assert stats.converged == [True] and stats.num_changes == [3] and stats.final_acc[0] == pytest.approx(1.0)
    assert stats.init_acc[0] == pytest.approx(8 / 11)
    assert stats.steps == [3] and stats.nfe == 3


def test_generate_text_and_stop(tiny_model, tiny_tokenizer):
    from sumi.sampling import cut_at_stop, generate_text

    assert cut_at_stop("hello world. And", [".", "And"]) == "hello world"
    assert cut_at_stop("abc", None) == "abc" and cut_at_stop("abc", ["z"]) == "abc"
    kw = dict(max_new_tokens=12, canvas_length=48, sampler="adaptive", temperature=0.0, seed=0)
    texts = generate_text(tiny_model, tiny_tokenizer, ["In the beginning", "And God said"], **kw)
    ids = [tiny_tokenizer.encode(p, add_bos=True) for p in ["In the beginning", "And God said"]]
    out = generate(tiny_model, ids, **kw)
    assert texts == [tiny_tokenizer.decode(s, skip_special_tokens=True) for s in out.sequences]
    first = texts[0]
    assert len(first) > 2, "the stop check below needs a text of 3+ characters; change the seed"
    stopped = generate_text(tiny_model, tiny_tokenizer, ["In the beginning"], stop=[first[1:3]], **kw)
    assert stopped == [first[: first.find(first[1:3])]]


@pytest.mark.parametrize("kwargs,match", [
    (dict(input_ids=[[0] * 40]), "canvas holds 32"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=31), "does not fit"),
    (dict(frozen=[[(40, 3)]]), "outside the canvas"),
    (dict(frozen=[[(1, 3)]]), "clashes with the prompt"),
    (dict(frozen=[[(12, 3)]]), "clashes with the EOS/BOS anchor"),
    (dict(frozen=[[(9, 600)]]), "outside \\[0, 512\\)"),
    (dict(frozen=[[(9, 3)], [(9, 4)]]), "one list"),
    (dict(input_ids=[[0, 512]]), "outside \\[0, 512\\)"),
    (dict(input_ids=[[0, -1]]), "outside"),
    (dict(sampler="beam"), "unknown sampler"),
    (dict(schedule="exp"), "unknown schedule"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=0), "top_k"),
    (dict(temperature=-0.1), "temperature"),
    (dict(tokens_per_step=0), "tokens_per_step"),
    (dict(num_denoising_steps=0), "num_denoising_steps"),
    (dict(min_log_snr=3.0, max_log_snr=-3.0), "min_log_snr"),
    (dict(denoise_end=5), "denoise_end"),
    (dict(initial_canvas=torch.zeros(1, 20, dtype=torch.long), canvas_length=32), "disagrees"),
    (dict(initial_canvas=torch.full((1, 32), 999)), "initial_canvas"),
    (dict(input_ids=torch.tensor([[0, 4]]), attention_mask=torch.tensor([[0, 1]])), "left-aligned"),
    (dict(seed=1, generator=torch.Generator()), "either seed or generator"),
])
def test_bad_input_fails_before_model_work(kwargs, match):
    calls = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            from sumi.config import sumi_tiny

            self.config = sumi_tiny()

        def forward(self, ids):
            calls.append(ids)
            return torch.zeros(*ids.shape, 512)

    args = dict(input_ids=[[0, 4, 5]], max_new_tokens=8, canvas_length=32)
    args.update(kwargs)
    with pytest.raises(InputError, match=match):
        generate(Spy(), **args)
    assert not calls


def test_ancestral_skips_forward_when_no_position_needs_logits(tiny_model):
    # λ clamped to [-2, 2]: the cosine schedule's first and last steps are no-ops (λ_t = λ_s), where every
    # position keeps its token whatever the model says, so no forward pass is needed there.
    out = generate(tiny_model, [[0, 5]], max_new_tokens=8, canvas_length=16, sampler="ancestral", schedule="cosine",
                   num_denoising_steps=32, min_log_snr=-2.0, max_log_snr=2.0, seed=0)
    assert out.steps_run == 32 and out.nfe < 32
