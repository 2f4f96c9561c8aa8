"""``sumi demo``: the main job. On the embedded corpus (Shakespeare, KJV Bible, Python stdlib), on CPU:

1. train an 8k byte-level BPE (cached in ``<output>/tokenizer``);
2. pack the corpus into 256-token canvases (cached in ``<output>/shards``);
3. train a small UDLM (``configs/tiny-cpu.yaml``: d 256, 4 layers) for about ``--minutes`` minutes — the step
   count is chosen from a timed probe step so the WSD schedule completes inside the budget;
4. export it to ``<output>/model`` (release layout + tokenizer), sample from it, and report its held-out NELBO.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

logger = logging.getLogger("sumi.demo")

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "tiny-cpu.yaml"
PROMPTS = ("ROMEO.", "And God said,", "def ")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--minutes", type=float, default=3.5, help="training time budget (default 3.5)")
    parser.add_argument("--output", default="runs/demo", help="run directory (default runs/demo)")
    parser.add_argument("--config", default=str(RECIPE), help="training recipe (default configs/tiny-cpu.yaml)")
    parser.add_argument("--vocab-size", type=int, default=8192, help="BPE vocabulary (default 8192)")
    parser.add_argument("--seq-len", type=int, default=256, help="canvas length of the shards (default 256)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the model (default: the recipe's training.compile); compiled graphs are "
                             "cached in TORCHINDUCTOR_CACHE_DIR (default <output>/../.inductor-cache), so only the "
                             "first run pays the compilation")


def _tokenizer(out: Path, vocab_size: int):
    from sumi.data.corpus import iter_documents
    from sumi.tokenizer import load_tokenizer, train_bpe

    path = out / "tokenizer"
    if (path / "tokenizer.json").is_file():
        tok = load_tokenizer(path)
        if tok.vocab_size == vocab_size:
            logger.info("reusing the tokenizer in %s", path)
            return tok
    logger.info("training a %d-id byte-level BPE on the embedded corpus", vocab_size)
    docs = [doc for source in ("shakespeare", "bible", "python") for doc in iter_documents(source)]
    tok = train_bpe(docs, vocab_size=vocab_size)
    tok.save_pretrained(path)
    return tok


def _shards(out: Path, tok, seq_len: int, seed: int) -> Path:
    from sumi.data import Manifest, MixtureSpec, build_shards

    path = out / "shards"
    if (path / "manifest.json").is_file():
        manifest = Manifest.load(path)
        if manifest.seq_len == seq_len and manifest.tokenizer["vocab_size"] == tok.vocab_size and \
                json.loads((path / "tokenizer.json").read_text()) == json.loads(tok.to_json()):
            logger.info("reusing the shards in %s", path)
            return path
    logger.info("packing the embedded corpus into %d-token canvases", seq_len)
    build_shards(MixtureSpec.embedded(), tok, path, seq_len=seq_len, heldout_fraction=0.01, seed=seed,
                 overwrite=True)
    return path


def _probe_step_seconds(cfg) -> float:
    """Time two optimizer steps of the recipe's model on random ids (the first step is warmup)."""
    import torch

    from sumi.model import SumiForMaskGeneration

    model = SumiForMaskGeneration.from_config(cfg.model.build(), seed=0)
    if cfg.training.compile:  # the step the trainer will run; its compilation lands in the inductor cache
        model.compile()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    b, s = cfg.training.micro_batch_size * cfg.training.grad_accum_steps, model.config.max_position_embeddings
    x = torch.randint(0, model.config.vocab_size, (b, s), generator=torch.Generator().manual_seed(0))
    t = torch.full((b,), 0.5)
    times = []
    for _ in range(3 if cfg.training.compile else 2):  # compiled: the first steps compile
        start = time.perf_counter()
        model(x, labels=x, t=t, validate=False).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    return times[-1]


def run(args: argparse.Namespace) -> int:
    from sumi.checkpoint import load_model
    from sumi.train import resolve_run_config, train

    started = time.perf_counter()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    tok = _tokenizer(out, args.vocab_size)
    shard_dir = _shards(out, tok, args.seq_len, args.seed)

    overrides = [f"data.shard_dir={shard_dir}", f"training.output_dir={out}",
                 f"training.seed={args.seed}", f"model.overrides.max_position_embeddings={args.seq_len}",
                 f"model.overrides.vocab_size={tok.vocab_size}", f"model.overrides.bos_token_id={tok.bos_token_id}",
                 f"model.overrides.eos_token_id={tok.eos_token_id}",
                 f"model.overrides.pad_token_id={tok.pad_token_id}"]
    if args.compile is not None:
        overrides.append(f"training.compile={str(args.compile).lower()}")
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(out.resolve().parent / ".inductor-cache"))
    probe_cfg = resolve_run_config(args.config, overrides)
    step_s = _probe_step_seconds(probe_cfg)
    # Evaluations cost ~ eval_batches forward passes (a third of a step each) per eval_every steps.
    per_step = step_s * (1 + probe_cfg.training.eval_batches / (3 * max(probe_cfg.training.eval_every, 50)))
    steps = max(20, int(args.minutes * 60 / per_step))
    warmup = min(probe_cfg.schedule.warmup_steps, steps // 10)
    eval_every = max(steps // 3, 1)
    cfg = resolve_run_config(args.config, overrides + [
        f"training.steps={steps}", f"schedule.warmup_steps={warmup}", f"training.eval_every={eval_every}",
        f"checkpoint.every={eval_every}", f"training.time_limit_minutes={1.25 * args.minutes:.2f}"])
    logger.info("probe step %.2fs -> %d steps of %d tokens (~%.1f min)", step_s, steps,
                cfg.training.micro_batch_size * args.seq_len, steps * per_step / 60)
    # A re-run of the demo starts afresh: an earlier demo run is moved aside (<output>.old-<time>), not deleted.
    from sumi.plan import matmul_peak_gflops

    peak_before = matmul_peak_gflops()
    result = train(cfg, tokenizer=tok, overwrite=True)

    model = load_model(result.model_dir).eval()
    samples = _samples(model, tok, args.seed)
    score_text = _score(model, tok, shard_dir)
    total = time.perf_counter() - started
    lines = [
        "",
        "=== sumi demo ===",
        f"model        {result.model_dir}  ({model.num_parameters(exclude_embeddings=True) / 1e6:.2f}M non-embedding "
        f"parameters, vocab {model.config.vocab_size})",
        f"trained      {result.steps} steps, {result.tokens / 1e6:.2f}M tokens",
        f"held-out     NELBO {result.heldout_nelbo:.3f} nats/token (trainer, {cfg.training.eval_batches} batches; "
        f"uniform guess = ln V = {math.log(model.config.vocab_size):.3f})",
    ]
    if score_text:
        lines.append(f"             {score_text}")
    lines += [f"metrics      {result.output_dir / 'metrics.jsonl'}  plot {result.output_dir / 'loss.png'}",
              "samples:"]
    lines += [f"  {prompt!r} -> {text!r}" for prompt, text in samples]
    lines.append(_efficiency_line(cfg, result, peak_before))
    lines.append(f"wall time    {total / 60:.1f} min")
    print("\n".join(lines))
    sys.stdout.flush()
    return 0


def _efficiency_line(cfg, result, peak_before: float) -> str:
    """Training tokens/s (the trainer's average, evaluations and checkpoints included) as GFLOP/s and MFU, with
    the FLOP count and peak of ``bench/train_step.py``; the peak is the best of one measured before training and
    one now, on the same threads (on a shared machine either may be depressed)."""
    from sumi.plan import matmul_peak_gflops, model_flops_per_token

    records = [r for r in result.history if "tokens_per_s" in r]
    if not records:
        return "speed        (no training record)"
    tokens_per_s = records[-1]["tokens_per_s"]
    model_config = cfg.model.build()
    gflops = model_flops_per_token(model_config, model_config.max_position_embeddings) * tokens_per_s / 1e9
    peak = max(peak_before, matmul_peak_gflops())
    return (f"speed        {tokens_per_s:,.0f} tokens/s = {gflops:.1f} GFLOP/s = MFU {gflops / peak:.2f} of the "
            f"fp32 matmul peak measured in this run ({peak:.0f} GFLOP/s; bench/train_step.py's FLOP count"
            f"{', compiled' if cfg.training.compile else ''})")


def _samples(model, tok, seed: int) -> list[tuple[str, str]]:
    try:
        from sumi.sampling import generate_text
    except ImportError as exc:  # the sampler is optional for the demo's training part
        return [("(sampler unavailable)", str(exc))]
    # The exact (ancestral) posterior sampler: with a minutes-old model the adaptive sampler, which commits only
    # its most confident positions, leaves much of the initial uniform-noise canvas in place.
    texts = generate_text(model, tok, list(PROMPTS), max_new_tokens=48, sampler="ancestral", seed=seed)
    return list(zip(PROMPTS, texts))


def _score(model, tok, shard_dir: Path) -> str:
    """NELBO of the first held-out canvas with the evaluation scorer (``sumi.eval.nelbo.score``), if present."""
    try:
        from sumi.eval.nelbo import score
    except ImportError:
        return ""
    from sumi.data import PackedLoader

    canvas = next(PackedLoader(shard_dir, "heldout", batch_size=1, shuffle=False, drop_last=False))[0].tolist()
    # 3/4 of a canvas: re-encoding the decoded text plus BOS/EOS must still fit the model's positions.
    keep = [i for i in canvas if i not in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)]
    text = tok.decode(keep[:3 * len(canvas) // 4])
    result = score(model, tok, text, num_timesteps=32, canvas_length=len(canvas), batch_size=32,
                   truncation="right")
    return (f"NELBO {result.nelbo:.3f} ± {result.stderr:.3f} nats/token on {result.num_tokens} held-out tokens "
            f"(sumi.eval.nelbo.score, 32 timesteps)")
