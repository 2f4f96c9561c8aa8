"""Fine-tuning: chat rendering into SFT canvases, the response-only loss, exact resume, LoRA, prompt dropping."""

from __future__ import annotations

import json

import pytest
import torch

from sumi.diffusion.loss import sumi_loss
from sumi.errors import ConfigError, InputError
from sumi.finetune.data import SFTDataset, SFTExample, SFTLoader, canvas_of, examples_of, messages_of, prompt_ids_of
from sumi.finetune.tasks import TASK_KINDS, exact_match, generate_split
from sumi.model import IGNORE_INDEX
from sumi.sampling.guidance import drop_prompts, guided_logits, unconditional_canvas
from sumi.train import resolve_run_config
from sumi.train.checkpointing import Checkpointer
from sumi.train.metrics import TIMING_KEYS, read_metrics

CANVAS = 80
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "In the beginning?"},
        {"role": "assistant", "content": "God created"}, {"role": "user", "content": "And the earth?"},
        {"role": "assistant", "content": "without form"}]


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory):
    """24 chats: 12 task examples as prompt/response pairs, 12 as messages (one with two assistant turns)."""
    path = tmp_path_factory.mktemp("chats") / "chats.jsonl"
    examples = generate_split("train", 23, seed=1, kinds=("reverse", "sort"))
    lines = [{"prompt": e.prompt, "response": e.answer} for e in examples[:12]]
    lines += [{"messages": e.messages(system=False)} for e in examples[12:]]
    lines.append({"messages": CHAT[1:]})
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return path


def run_config(tmp_path, base, data, *overrides):
    base_args = [f"model.init_from={base}", f"finetune.data={data}", f"finetune.canvas_length={CANVAS}",
                 "finetune.heldout_fraction=0.2", "training.steps=4", "training.micro_batch_size=4",
                 "training.log_every=1", "training.progress=false", "schedule.warmup_steps=1", "optimizer.lr=3e-3",
                 "checkpoint.every=0", "checkpoint.export=false", "training.eval_batches=1", "training.device=cpu",
                 f"training.output_dir={tmp_path}"]
    return resolve_run_config(None, base_args + list(overrides))


# ---------------------------------------------------------------------------------------------- rendering
def test_every_assistant_turn_is_one_example_and_the_template_round_trips(tiny_tokenizer):
    from sumi.chat import apply_chat_template

    examples = examples_of(CHAT, tiny_tokenizer)
    assert len(examples) == 2
    text = apply_chat_template(CHAT, tiny_tokenizer)
    for k, example in enumerate(examples):
        # prompt + response is a prefix of the rendered conversation, cut right after the turn's <|im_end|> ...
        rendered = tiny_tokenizer.decode(example.prompt_ids + example.response_ids, skip_special_tokens=False)
        assert text.startswith(rendered) and rendered.endswith("<|im_end|>")
        assert tiny_tokenizer.decode(example.response_ids, skip_special_tokens=True) == CHAT[2 + 2 * k]["content"]
        # ... and the prompt is exactly what generation starts from for that turn (history + assistant header).
        assert example.prompt_ids == prompt_ids_of(CHAT[:2 + 2 * k], tiny_tokenizer)
    assert examples[1].prompt_ids[:len(examples[0].prompt_ids)] == examples[0].prompt_ids


def test_prompt_response_pairs_equal_their_chat_form(tiny_tokenizer):
    pair = messages_of({"prompt": "Hi", "response": "Hello", "system": "S"}, "x")
    assert pair == [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello"}]
    with pytest.raises(InputError, match="needs 'messages' or 'prompt' and 'response'"):
        messages_of({"text": "Hi"}, "f.jsonl:3")
    with pytest.raises(InputError, match="no assistant turn"):
        messages_of({"messages": [{"role": "user", "content": "Hi"}]}, "f.jsonl:1")


def test_canvas_layout_matches_generate():
    from sumi.sampling.canvas import plan_canvas

    example = SFTExample(prompt_ids=[0, 5, 6], response_ids=[7, 8])
    ids, target, attend = canvas_of(example, 10, eos_id=1, bos_id=0, pad_id=2)
    assert ids == [0, 5, 6, 7, 8, 1, 1, 1, 1, 0]
    assert target == [False] * 3 + [True] * 5 + [False] * 2 and all(attend)
    # generate() with max_new_tokens = C - P - 2 freezes exactly the non-target positions, with the same ids.
    plan = plan_canvas([[0, 5, 6]], vocab_size=16, max_positions=10, bos_id=0, eos_id=1, max_new_tokens=5,
                       canvas_length=10)
    assert plan.frozen_mask[0].tolist() == [not t for t in target]
    assert plan.canvas[0][plan.frozen_mask[0]].tolist() == [i for i, t in zip(ids, target) if not t]
    # A response budget B: the attended part is the canvas generate() fits to the prompt with max_new_tokens = B.
    ids, target, attend = canvas_of(example, 12, eos_id=1, bos_id=0, pad_id=2, response_budget=3)
    assert ids == [0, 5, 6, 7, 8, 1, 1, 0, 2, 2, 2, 2] and attend == [True] * 8 + [False] * 4
    assert target == [False] * 3 + [True] * 3 + [False] * 6
    plan = plan_canvas([[0, 5, 6]], vocab_size=16, max_positions=12, bos_id=0, eos_id=1, max_new_tokens=3,
                       fit_canvas=True)
    assert plan.canvas.shape[1] == sum(attend)
    assert plan.frozen_mask[0].tolist() == [not t for t, a in zip(target, attend) if a]


def test_too_long_is_an_error_unless_truncated():
    example = SFTExample(prompt_ids=[0, 5, 6], response_ids=[7, 8, 9, 10, 11, 12])
    with pytest.raises(InputError, match="chats.jsonl:4: the response .6 tokens. does not fit the canvas of 8"):
        canvas_of(example, 8, eos_id=1, bos_id=0, where="chats.jsonl:4: ")
    with pytest.raises(InputError, match="does not fit the response budget of 4.*finetune.truncate=true"):
        canvas_of(example, 16, eos_id=1, bos_id=0, response_budget=4)
    ids, target, _ = canvas_of(example, 8, eos_id=1, bos_id=0, truncate=True)
    assert ids == [0, 5, 6, 7, 8, 9, 1, 0] and sum(target) == 3
    with pytest.raises(InputError, match="no room for a response"):
        canvas_of(SFTExample(list(range(7)), [1]), 8, eos_id=1, bos_id=0, truncate=True)


def test_loader_is_resumable_and_covers_an_epoch():
    data = SFTDataset(torch.arange(40).view(10, 4), torch.ones(10, 4, dtype=torch.bool))
    loader = SFTLoader(data, 3, seed=5)
    seen = torch.cat([next(loader).input_ids[:, 0] for _ in range(3)])
    assert len(set(seen.tolist())) == 9
    state = loader.state_dict()
    after = [next(loader).input_ids for _ in range(4)]
    again = SFTLoader(data, 3, seed=5)
    again.load_state_dict(state)
    assert all(torch.equal(a, next(again).input_ids) for a in after)
    with pytest.raises(ConfigError, match="global_batch=3 but this one has 4"):
        SFTLoader(data, 4, seed=5).load_state_dict(state)
    # Two ranks of batch 2 read together exactly what one rank of batch 4 reads.
    one = SFTLoader(data, 4, seed=5)
    ranks = [SFTLoader(data, 2, seed=5, rank=r, world_size=2) for r in range(2)]
    for _ in range(5):
        assert torch.equal(next(one).input_ids, torch.cat([next(r).input_ids for r in ranks]))


# ---------------------------------------------------------------------------------------------- the loss
@pytest.mark.parametrize("budget", [0, 24])
def test_prompt_positions_are_clean_and_never_targets(tmp_path, tiny_model_dir, chat_file, budget):
    """The loss's gradient w.r.t. the logits of prompt, anchor (and padding) positions is exactly zero, and inputs
    there are the clean ids; the response positions carry all of the gradient."""
    from sumi.finetune.run import build_finetune_trainer

    trainer = build_finetune_trainer(run_config(tmp_path, tiny_model_dir, chat_file,
                                                f"finetune.response_budget={budget}"))
    batch = next(trainer.train_loader)
    z, t, labels = trainer.make_inputs(batch, (0, 0, 0))
    target = batch.target_mask
    assert torch.equal(labels == IGNORE_INDEX, ~target)
    assert torch.equal(z[~target], batch.input_ids[~target])  # prompt and anchor unchanged
    assert bool((z[target] != batch.input_ids[target]).any())  # responses are noised
    keys = trainer.key_mask(batch)
    assert (keys is not None and not bool(keys.all())) == (budget > 0)  # padding after the anchor is masked
    logits = trainer.model(z, attention_mask=keys).logits.detach().requires_grad_(True)
    loss, _ = sumi_loss(logits, z, labels, t)
    loss.backward()
    grad = logits.grad.abs().sum(-1)
    assert torch.count_nonzero(grad[~target]) == 0
    assert bool((grad[target] > 0).all())
    # Changing what sits at the prompt positions as targets changes nothing either.
    other = labels.masked_fill(~target, IGNORE_INDEX)
    assert torch.equal(sumi_loss(logits, z, other, t)[0], loss)


def test_scored_only_forward_and_trimmed_padding_give_the_full_canvas_loss_and_gradients(tmp_path, tiny_model_dir,
                                                                                         chat_file):
    """The fine-tuning fast path (head and loss only at scored positions, padding columns no row uses dropped)
    gives the loss, metrics and parameter gradients of the slow path (full logits on the untrimmed canvas)."""
    from sumi.finetune.run import build_finetune_trainer

    trainer = build_finetune_trainer(run_config(tmp_path, tiny_model_dir, chat_file, "finetune.response_budget=24"))
    batch = next(trainer.train_loader)
    width = batch.input_ids.shape[1]
    assert width < CANVAS and bool(batch.attention_mask[:, -1].any())  # trimmed to the longest row, no further
    z, t, labels = trainer.make_inputs(batch, (0, 0, 0))
    pad = CANVAS - width  # the untrimmed canvas: padding (masked keys, ignored labels) out to C
    full = [torch.nn.functional.pad(v, (0, pad), value=fill)
            for v, fill in ((z, 0), (t, 0.5), (labels, IGNORE_INDEX), (trainer.key_mask(batch), False))]

    def grads(out):
        trainer.model.zero_grad()
        out.loss.backward()
        return out, [p.grad.clone() for p in trainer.model.parameters()]

    fast, fast_grads = grads(trainer._forward(z, t, labels, trainer.key_mask(batch), scored_only=True))
    slow, slow_grads = grads(trainer._forward(*full[:3], full[3]))
    assert fast.logits.shape[:2] == (1, int((labels != IGNORE_INDEX).sum()))
    torch.testing.assert_close(fast.loss, slow.loss, rtol=1e-5, atol=1e-6)
    for key in ("elbo", "tokens"):
        torch.testing.assert_close(fast.metrics[key], slow.metrics[key], rtol=1e-5, atol=1e-6)
    for a, b in zip(fast_grads, slow_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_prompt_drop_replaces_whole_prompts_with_pad():
    x = torch.arange(1, 25).view(4, 6)
    target = torch.zeros(4, 6, dtype=torch.bool)
    target[:, 3:5] = True
    keys = [(0, 7, 0, row) for row in range(4)]
    assert torch.equal(drop_prompts(x, target, 0.0, 0, keys), x)
    dropped = drop_prompts(x, target, 0.5, 0, keys)
    rows = (dropped[:, :3] == 0).all(1)
    assert 0 < int(rows.sum()) < 4
    assert torch.equal(dropped[~rows], x[~rows]) and torch.equal(dropped[:, 3:], x[:, 3:])
    # Each row decides from its own key: the same rows drop in any batch split (any number of ranks).
    halves = torch.cat([drop_prompts(x[:2], target[:2], 0.5, 0, keys[:2]),
                        drop_prompts(x[2:], target[2:], 0.5, 0, keys[2:])])
    assert torch.equal(halves, dropped)
    assert torch.equal(unconditional_canvas(x, ~target & (torch.arange(6) < 3), 0)[:, :3], torch.zeros(4, 3).long())


def test_guided_logits_scale_one_is_the_conditional_distribution():
    cond, uncond = torch.randn(3, 7, generator=torch.Generator().manual_seed(0)), torch.randn(3, 7)
    torch.testing.assert_close(guided_logits(cond, uncond, 1.0), torch.log_softmax(cond, -1))
    torch.testing.assert_close(guided_logits(cond, uncond, 0.0), torch.log_softmax(uncond, -1))


# ---------------------------------------------------------------------------------------------- the run
def test_finetune_resume_reproduces_the_uninterrupted_curve_bitwise(tmp_path, tiny_model_dir, chat_file):
    from sumi.finetune.run import build_finetune_trainer

    def run(name):
        return run_config(tmp_path / name, tiny_model_dir, chat_file, "training.steps=6", "checkpoint.every=3",
                          "finetune.prompt_drop=0.3", "finetune.response_budget=24")

    build_finetune_trainer(run("full")).fit()
    build_finetune_trainer(run("cut")).fit()
    (tmp_path / "cut" / "checkpoints" / "latest").write_text("step-00000003")
    assert Checkpointer(tmp_path / "cut" / "checkpoints").latest().name == "step-00000003"
    build_finetune_trainer(run("cut")).fit(resume=True)

    def curve(name):
        return [{k: v for k, v in r.items() if k not in TIMING_KEYS}
                for r in read_metrics(tmp_path / name / "metrics.jsonl")]

    assert curve("full") == curve("cut")
    assert [r["step"] for r in curve("cut") if "loss" in r] == list(range(1, 7))


def test_finetune_needs_data_and_a_base_model(tmp_path, tiny_model_dir, chat_file):
    from sumi.finetune.run import build_finetune_trainer

    with pytest.raises(ConfigError, match="model.init_from"):
        build_finetune_trainer(run_config(tmp_path, tmp_path, chat_file))
    with pytest.raises(ConfigError, match="does not exist"):
        build_finetune_trainer(run_config(tmp_path, tiny_model_dir, tmp_path / "missing.jsonl"))
    with pytest.raises(ConfigError, match="offline"):
        build_finetune_trainer(run_config(tmp_path, tiny_model_dir, "{type: hf, dataset: some/chats}"))
    with pytest.raises(InputError, match=r"chats.jsonl:1: the response \(15 tokens\) does not fit the canvas of 48"):
        build_finetune_trainer(run_config(tmp_path, tiny_model_dir, chat_file, "finetune.canvas_length=48"))


# ---------------------------------------------------------------------------------------------- the task
def test_task_split_is_disjoint_and_deterministic():
    train = generate_split("train", 200, seed=3)
    held = generate_split("heldout", 50, seed=3)
    assert {e.prompt for e in train}.isdisjoint(e.prompt for e in held)
    assert generate_split("heldout", 50, seed=3) == held
    assert {e.kind for e in train} == set(TASK_KINDS)
    for e in train[:40]:
        if e.kind == "count":
            from sumi.finetune.tasks import COUNT_WORDS

            shown = e.prompt.split(": ")[1].rstrip(".").split()
            assert e.answer == COUNT_WORDS[len(shown) - 3] and e.answer not in shown
        if e.kind == "category":  # every shown word is of the named category
            from sumi.finetune.tasks import CATEGORIES, CATEGORY_NOUNS

            (category,) = [c for c, noun in CATEGORY_NOUNS.items() if noun == e.answer]
            assert set(e.prompt.split(": ")[1].rstrip(".").split()) <= set(CATEGORIES[category])
        if e.kind == "reverse":
            assert e.answer.split() == e.prompt.split(": ")[1].split()[::-1]
        if e.kind == "add":
            a, b = (int(w.strip(".")) for w in e.prompt.split()[1::2])
            assert int(e.answer) == a + b
        if e.kind == "pick":  # exactly one shown word is of the asked category, and it is the answer
            from sumi.finetune.tasks import CATEGORIES

            category = e.prompt.split("Which word is ")[1].split(":")[0]
            shown = e.prompt.split(": ")[1].rstrip("?").split()
            assert [w for w in shown if w in CATEGORIES[category]] == [e.answer]
    assert train[0].messages()[-1]["content"] == " " + train[0].answer  # the reply after a space (see messages)
    assert exact_match(" a b ", "a b") and not exact_match("a b c", "a b")


# ---------------------------------------------------------------------------------------------- LoRA
def _randomise_adapters(model, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=gen, dtype=param.dtype) * 0.1)
            elif "modules_to_save" in name:  # trained norm gains (lora.train_norms)
                param.mul_(1 + torch.rand(param.shape, generator=gen, dtype=param.dtype))


def test_lora_targets_accept_the_projections_embedding_and_head_only():
    from sumi.finetune.config import LORA_TARGETS, LoraSection

    assert LoraSection().targets == list(LORA_TARGETS)  # default: every attention and MLP projection
    assert LoraSection(targets=["q_proj", "embed_tokens", "lm_head"]).targets[-1] == "lm_head"
    with pytest.raises(ConfigError, match=r"lora.targets \['wq'\] must be .*embed_tokens"):
        LoraSection(targets=["q_proj", "wq"])
    with pytest.raises(ConfigError, match="non-empty"):
        LoraSection(targets=[])


@pytest.mark.parametrize("train_norms, extra_targets", [(False, ()), (True, ()), (True, ("embed_tokens", "lm_head"))])
def test_adapters_save_load_and_merge_to_identical_logits(tmp_path, tiny_config, train_norms, extra_targets):
    from peft import PeftModel

    from sumi.finetune.config import LoraSection
    from sumi.finetune.lora import apply_lora, load_adapter, merge, parameter_counts, save_adapter
    from sumi.model import SumiForMaskGeneration

    def base():
        return SumiForMaskGeneration.from_config(tiny_config, seed=0, dtype=torch.float64)

    from sumi.finetune.config import LORA_TARGETS

    targets = [*LORA_TARGETS, *extra_targets]
    lora = apply_lora(base(), LoraSection(rank=4, train_norms=train_norms, targets=targets))
    trainable, total = parameter_counts(lora)
    for extra in extra_targets:  # the embedding and the head got adapters too
        assert any(f"{extra}.lora_" in n for n, p in lora.named_parameters() if p.requires_grad)
    adapted = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable == sum(p.numel() for n, p in lora.named_parameters() if "lora_" in n or
                            "modules_to_save" in n) and trainable < total
    norms = 2 * tiny_config.num_hidden_layers + 1  # input and post-attention norms per block, and the final norm
    assert sum("modules_to_save" in n for n in adapted) == (norms if train_norms else 0)
    ids = torch.randint(0, tiny_config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    assert torch.equal(lora(ids).logits, base()(ids).logits)  # fresh adapters (B = 0) change nothing
    _randomise_adapters(lora, 2)
    reference = lora(ids).logits
    save_adapter(lora, tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (tmp_path / "adapter").iterdir()}
    loaded = load_adapter(base(), tmp_path / "adapter")
    assert torch.equal(loaded(ids).logits, reference)
    assert torch.equal(PeftModel.from_pretrained(base(), str(tmp_path / "adapter"))(ids).logits, reference)
    merged = merge(loaded)
    assert type(merged) is SumiForMaskGeneration
    torch.testing.assert_close(merged(ids).logits, reference, rtol=0, atol=1e-12)
    from sumi.checkpoint import load_model, save_model

    save_model(merged, tmp_path / "merged")  # the plain model has no save_pretrained (sumi.Sumi has)

    # Reloaded: the same weights (its RoPE tables are built in fp32, hence the tolerance).
    torch.testing.assert_close(load_model(tmp_path / "merged")(ids).logits, reference, rtol=0, atol=5e-6)


def test_lora_finetune_trains_adapters_only_and_exports_adapter_and_merged_model(tmp_path, tiny_model_dir, chat_file):
    from sumi.checkpoint import load_model, resolve_model
    from sumi.finetune.run import build_finetune_trainer

    cfg = run_config(tmp_path, tiny_model_dir, chat_file, "lora.rank=4", "checkpoint.export=true",
                     "optimizer.lr=3e-2")
    trainer = build_finetune_trainer(cfg)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.fit()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert {n for n, p in trainer.model.named_parameters() if p.requires_grad} == {n for n in before if "lora_" in n}
    ids = torch.randint(0, 512, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        live = trainer.model(ids).logits
        exported = load_model(tmp_path / "model")(ids).logits
        with_adapter, tokenizer = resolve_model(tiny_model_dir, adapter=tmp_path / "adapter")
        attached = with_adapter(ids).logits
        base = load_model(tiny_model_dir)(ids).logits
    torch.testing.assert_close(exported, live, rtol=0, atol=1e-5)
    torch.testing.assert_close(attached, live, rtol=0, atol=1e-5)
    assert not torch.allclose(base, live, atol=1e-4)
    assert (tmp_path / "model" / "tokenizer.json").is_file() and tokenizer.chat_template


# ---------------------------------------------------------------------------------------------- guidance
@pytest.mark.parametrize("sampler", ["adaptive", "ancestral", "greedy"])
def test_guidance_scale_one_is_plain_sampling(tiny_model, sampler):
    from sumi.sampling import generate

    prompts = [[0, 5, 9, 33], [0, 7]]
    options = dict(max_new_tokens=12, canvas_length=24, sampler=sampler, seed=3, num_denoising_steps=8)
    plain = generate(tiny_model, prompts, **options)
    guided = generate(tiny_model, prompts, guidance_scale=1.0, **options)
    assert torch.equal(plain.canvas, guided.canvas) and plain.sequences == guided.sequences
    assert plain.nfe == guided.nfe


def test_guidance_costs_one_extra_forward_and_zero_scale_ignores_the_prompt(tiny_model):
    from sumi.sampling import generate

    prompt, pad = [0, 5, 9, 33], tiny_model.config.pad_token_id
    options = dict(max_new_tokens=10, canvas_length=20, sampler="greedy", seed=1, num_denoising_steps=6,
                   early_stop=False)
    plain = generate(tiny_model, [prompt], **options)
    guided = generate(tiny_model, [prompt], guidance_scale=2.0, **options)
    assert guided.nfe == 2 * plain.nfe
    # γ = 0 samples from the unconditional model: the same tokens as plain sampling with a PAD prompt.
    unconditional = generate(tiny_model, [prompt], guidance_scale=0.0, **options)
    padded = generate(tiny_model, [[pad] * len(prompt)], **options)
    assert unconditional.sequences == padded.sequences
    from sumi.errors import OptionError

    with pytest.raises(OptionError, match="guidance_scale"):
        generate(tiny_model, [prompt], guidance_scale=-1.0, **options)


# ---------------------------------------------------------------------------------------------- sumi chat
@pytest.mark.slow
def test_chat_cli_answers_piped_lines_like_the_library(tiny_model_dir):
    import os
    import subprocess
    import sys

    from sumi.checkpoint import resolve_model
    from sumi.sampling.chat import chat_reply

    result = subprocess.run([sys.executable, "-m", "sumi.cli", "chat", "--model", str(tiny_model_dir),
                             "--canvas-length", "64", "--steps", "6", "--system", "Be brief.", "--json"],
                            input="In the beginning?\n\n/reset\nAnd the earth?\n", capture_output=True, text=True,
                            timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line)["reply"] for line in result.stdout.splitlines()]
    assert len(lines) == 2
    model, tokenizer = resolve_model(tiny_model_dir)
    expected = [chat_reply(model, tokenizer, [{"role": "system", "content": "Be brief."},
                                              {"role": "user", "content": question}],
                           canvas_length=64, num_denoising_steps=6, sampler="adaptive", temperature=0.0, seed=0)
                for question in ("In the beginning?", "And the earth?")]
    assert lines == expected


def test_chat_history_is_shortened_to_fit_the_canvas(tiny_tokenizer):
    from sumi.sampling.chat import conversation_ids

    long_history = CHAT[:3] + [{"role": "user", "content": "And the earth? " * 3}]
    full = conversation_ids(long_history, tiny_tokenizer, 200)
    short = conversation_ids(long_history, tiny_tokenizer, len(full) + 2)  # too small for the whole history
    assert len(short) < len(full) and tiny_tokenizer.decode(short).count("user") == 1
    with pytest.raises(InputError, match="does not fit a canvas of 12"):
        conversation_ids(long_history, tiny_tokenizer, 12)


def test_lora_with_activation_checkpointing_gives_the_same_curve(tmp_path, tiny_model_dir, chat_file):
    from sumi.finetune.run import build_finetune_trainer

    def curve(name, *extra):
        build_finetune_trainer(run_config(tmp_path / name, tiny_model_dir, chat_file, "lora.rank=2",
                                          "training.steps=2", *extra)).fit()
        return [r["loss"] for r in read_metrics(tmp_path / name / "metrics.jsonl") if "loss" in r]

    torch.testing.assert_close(curve("plain"), curve("ac", "training.activation_checkpointing=true"),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_finetune_cli_then_generate_with_adapter_and_guidance(tmp_path, tiny_model_dir, chat_file):
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [f"model.init_from={tiny_model_dir}", f"finetune.data={chat_file}", f"finetune.canvas_length={CANVAS}",
            "finetune.response_budget=24", "finetune.prompt_drop=0.2", "lora.rank=2", "training.steps=2",
            "training.micro_batch_size=4", "schedule.warmup_steps=1", "training.progress=false",
            "training.eval_batches=1", "training.device=cpu", f"training.output_dir={tmp_path / 'run'}"]
    done = subprocess.run([sys.executable, "-m", "sumi.cli", "finetune", *args], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
    bad = subprocess.run([sys.executable, "-m", "sumi.cli", "finetune", *args[1:]], capture_output=True, text=True,
                         timeout=120, env=env)
    assert bad.returncode == 2 and "model.init_from" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    out = subprocess.run([sys.executable, "-m", "sumi.cli", "generate", "--model", str(tiny_model_dir), "--adapter",
                          str(tmp_path / "run" / "adapter"), "--guidance-scale", "2", "--prompt", "In the",
                          "--max-new-tokens", "6", "--steps", "3", "--seed", "0", "--json"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    # Two forwards (the canvas and its unconditional twin) per forward step; the exact count is tested in-process.
    assert record["nfe"] >= 2 and record["nfe"] % 2 == 0 and record["options"]["guidance_scale"] == 2.0
