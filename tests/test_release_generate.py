"""``model.generate`` = the released Sumi-7B's generate contract (spec §4), checked token-exactly against a
straightforward reference written from the spec, plus transformers' conventions (GenerationConfig, do_sample,
num_return_sequences, streamer, output_hidden_states, generation_config.json)."""

from __future__ import annotations

import json

import pytest
import torch

from sumi.errors import InputError


def release_reference(model, prompt: list[int], *, sampler: str, steps: int, canvas_length: int, max_new_tokens: int,
                      seed: int, tokens_per_step: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """The release's sampler for one prompt, deterministic samplers only, written from spec §4:
    canvas = prompt + randint(V, C − P) from Generator(seed); EOS, BOS frozen after the budget; each step one full
    forward; greedy = argmax everywhere free, adaptive (T = 0) = commit the most confident position(s) to the
    argmax; output cut after the first EOS at/after P. Returns (sequence [1, ≤C], canvas [1, C])."""
    config = model.config
    vocab, width = config.vocab_size, min(canvas_length, config.max_position_embeddings)
    p = len(prompt)
    generator = torch.Generator().manual_seed(seed)
    z = torch.cat([torch.tensor([prompt]), torch.randint(0, vocab, (1, width - p), generator=generator)], dim=1)
    budget = max(1, min(max_new_tokens, width - p - 2))
    frozen = torch.zeros(1, width, dtype=torch.bool)
    frozen[:, :p] = True
    for pos, tok in ((p + budget, config.eos_token_id), (p + budget + 1, config.bos_token_id)):
        if pos < width:
            z[0, pos] = tok
            frozen[0, pos] = True
    with torch.no_grad():
        for _ in range(steps):
            logits = model(z).logits[..., :vocab].float()
            argmax = logits.argmax(-1)
            if sampler == "greedy":
                z = torch.where(frozen, z, argmax)
                continue
            probs = torch.softmax(logits, -1)
            confidence = probs.max(-1).values - probs.gather(-1, z[..., None]).squeeze(-1)
            confidence[frozen] = float("-inf")
            chosen = confidence.topk(tokens_per_step, dim=-1).indices[0]
            z[0, chosen] = argmax[0, chosen]
    row = z[0].tolist()
    end = p + row[p:].index(config.eos_token_id) + 1
    return torch.tensor([row[:end]]), z


PROMPT = [0, 17, 42, 99, 7]


@pytest.mark.parametrize("sampler, extra", [("greedy", {}), ("adaptive", {"do_sample": False}),
                                            ("adaptive", {"temperature": 0.0, "tokens_per_step": 3})])
def test_deterministic_samplers_equal_the_release_reference(tiny_model, sampler, extra):
    kw = dict(steps=7, canvas_length=40, max_new_tokens=12)
    out = tiny_model.generate(torch.tensor([PROMPT]), sampler=sampler, seed=11, **kw, **extra)
    sequence, canvas = release_reference(tiny_model, PROMPT, sampler=sampler, seed=11,
                                         tokens_per_step=extra.get("tokens_per_step", 1), **kw)
    assert torch.equal(out.canvas, canvas)
    assert torch.equal(out.sequences, sequence)
    assert out.sequences[0, :len(PROMPT)].tolist() == PROMPT  # the prompt is part of sequences
    assert out.sequences[0, -1] == tiny_model.config.eos_token_id


def test_torch_manual_seed_equals_seed_and_batch_padding(tiny_model):
    torch.manual_seed(11)
    a = tiny_model.generate(torch.tensor([PROMPT]), sampler="greedy", steps=3, canvas_length=40, max_new_tokens=12)
    b = tiny_model.generate(torch.tensor([PROMPT]), sampler="greedy", steps=3, canvas_length=40, max_new_tokens=12,
                            seed=11)
    assert torch.equal(a.sequences, b.sequences)
    # A right-padded batch: rows cut at their own EOS, right-padded with pad_token_id.
    ids = torch.tensor([PROMPT, PROMPT[:3] + [2, 2]])
    mask = torch.tensor([[1] * 5, [1, 1, 1, 0, 0]])
    out = tiny_model.generate(ids, attention_mask=mask, sampler="greedy", steps=3, canvas_length=40, seed=0,
                              max_new_tokens=6)
    pad, eos = tiny_model.config.pad_token_id, tiny_model.config.eos_token_id
    for row, p in zip(out.sequences.tolist(), (5, 3)):
        body = row[:row.index(eos, p) + 1]
        assert all(t == pad for t in row[len(body):]) and len(body) <= p + 6 + 1


def test_release_defaults_and_shortened_max_new_tokens(tiny_model):
    out = tiny_model.generate(torch.tensor([PROMPT]), seed=0, return_sumi_output=True)
    # ancestral, 128 steps, 128 new tokens, canvas 2048 capped at the model's 256 positions.
    assert out.steps_run == 128 and out.canvas.shape == (1, 256) and out.budgets == [128]
    short = tiny_model.generate(torch.tensor([PROMPT]), max_new_tokens=10_000, canvas_length=32, steps=2, seed=0)
    assert short.sequences.shape[1] <= 32 and short.canvas.shape == (1, 32)  # shortened like the release, no error
    with pytest.raises(InputError, match="unknown option"):
        tiny_model.generate(torch.tensor([PROMPT]), samplr="greedy")


def test_generation_config_precedence_and_conventions(tiny_model, tiny_model_dir, tmp_path):
    from transformers import GenerationConfig

    import sumi

    gc = GenerationConfig(do_sample=True, temperature=0.8, num_return_sequences=2, max_new_tokens=6, steps=3,
                          canvas_length=24)
    out = tiny_model.generate(torch.tensor([PROMPT]), generation_config=gc, seed=1, return_sumi_output=True)
    assert out.canvas.shape == (2, 24) and out.steps_run <= 3 and out.budgets == [6, 6]
    # keyword beats generation_config
    assert tiny_model.generate(torch.tensor([PROMPT]), generation_config=gc, num_return_sequences=1,
                               seed=1).sequences.shape[0] == 1
    # generation_config.json of the directory overrides the release defaults
    import shutil

    directory = tmp_path / "m"
    shutil.copytree(tiny_model_dir, directory)
    (directory / "generation_config.json").write_text(json.dumps(
        {"bos_token_id": 0, "eos_token_id": 1, "temperature": 1.0, "sampler": "greedy", "steps": 4,
         "canvas_length": 48}))
    model = sumi.load_model(directory)
    out = model.generate(torch.tensor([PROMPT]), max_new_tokens=9, seed=5)
    sequence, _ = release_reference(model, PROMPT, sampler="greedy", steps=4, canvas_length=48,
                                    max_new_tokens=9, seed=5)
    assert torch.equal(out.sequences, sequence)

    # Saving keeps the directory's generate defaults, and writes back a change made to model.generation_config.
    model.generation_config.steps = 6
    model.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "generation_config.json").read_text())
    assert {k: saved[k] for k in ("sampler", "steps", "canvas_length", "bos_token_id", "eos_token_id")} == \
        {"sampler": "greedy", "steps": 6, "canvas_length": 48, "bos_token_id": 0, "eos_token_id": 1}
    reloaded = sumi.load_model(tmp_path / "saved").generate(torch.tensor([PROMPT]), max_new_tokens=9, seed=5)
    sequence, _ = release_reference(model, PROMPT, sampler="greedy", steps=6, canvas_length=48,
                                    max_new_tokens=9, seed=5)
    assert torch.equal(reloaded.sequences, sequence)


def test_output_hidden_states(tiny_model):
    out = tiny_model.generate(torch.tensor([PROMPT]), sampler="greedy", steps=2, canvas_length=32, seed=0,
                              output_hidden_states=True)
    layers = tiny_model.config.num_hidden_layers
    assert len(out.hidden_states) == layers + 1
    assert all(h.shape == (1, 32, tiny_model.config.hidden_size) for h in out.hidden_states)
    with torch.no_grad():
        torch.testing.assert_close(out.hidden_states[-1], tiny_model.model(out.canvas, None), rtol=0, atol=0)


class Collect:
    """A transformers-style streamer (put/end) that records what it gets."""

    def __init__(self):
        self.puts, self.ended = [], 0

    def put(self, value):
        self.puts.append(value.reshape(-1).tolist())

    def end(self):
        self.ended += 1


def test_streamer_gets_the_prompt_then_the_committed_prefix(tiny_model, tiny_tokenizer):
    from transformers import TextStreamer

    streamer = Collect()
    out = tiny_model.generate(torch.tensor([PROMPT]), sampler="adaptive", do_sample=False, steps=16,
                              canvas_length=40, max_new_tokens=12, seed=4, streamer=streamer,
                              return_sumi_output=True)
    assert streamer.puts[0] == PROMPT and streamer.ended == 1
    streamed = [t for put in streamer.puts[1:] for t in put]
    assert len(streamer.puts) > 2  # several deltas while the canvas settled, not one at the end
    assert streamed == out.sequences[0]  # adaptive at T = 0 committed left to right without revisions here
    with pytest.raises(InputError, match="streamer follows one sequence"):
        tiny_model.generate(torch.tensor([PROMPT, PROMPT]), streamer=Collect(), steps=1)
    TextStreamer(tiny_tokenizer, skip_prompt=True)  # the transformers streamer class the docs use


def test_transformers_user_code_runs_unchanged(tiny_model_dir):
    """What a transformers user writes for the release: AutoTokenizer + AutoModel + generate + batch_decode."""
    from transformers import AutoModelForMaskGeneration, AutoTokenizer, pipeline

    import sumi.integrations.hf  # noqa: F401  (registers model_type "sumi")

    model = AutoModelForMaskGeneration.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert model.can_generate() and isinstance(model.num_parameters(), int)
    assert model.generation_config.to_diff_dict()["temperature"] == 1.0  # generation_config.json was read
    enc = tok(["And God said", "In the beginning God"], return_tensors="pt", padding=True)
    out = model.generate(**enc, do_sample=False, max_new_tokens=8, canvas_length=32, steps=4, seed=0)
    lengths = enc["attention_mask"].sum(1).tolist()
    for row, ids, p in zip(out.sequences, enc["input_ids"], lengths):
        assert row[:p].tolist() == ids[:p].tolist()  # sequences carry the prompt
    texts = tok.batch_decode(out.sequences, skip_special_tokens=True)
    assert texts[0].startswith("And God said") and texts[1].startswith("In the beginning God")
    plain = sumi.load_model(tiny_model_dir)  # the same generate on the plain class
    assert torch.equal(plain.generate(**enc, do_sample=False, max_new_tokens=8, canvas_length=32, steps=4,
                                      seed=0).sequences, out.sequences)
    generated = pipeline("text-generation", model=model, tokenizer=tok)(
        "And God said", max_new_tokens=8, do_sample=False, canvas_length=32, steps=4)
    assert generated[0]["generated_text"].startswith("And God said")
