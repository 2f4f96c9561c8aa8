"""Sample quality against forward calls: the released sampler vs sumi's samplers, on a trained model and judge.

Models (trained once and cached under ``--run-dir``, default ``runs/bench-quality``; see ``bench/quality_models.py``):
a UDLM and an AR judge of the same size (d 128, 4 layers, 4096-id BPE) trained by sumi's trainer on the embedded
corpus. Prompts: the first ``PROMPT_TOKENS`` tokens of ``--prompts`` held-out canvases (one sample each, 128 new
tokens). Every grid point runs on the same prompts and seeds (``sumi.eval.sweep``); metrics in
``sumi.eval.quality`` (Gen PPL = exp of the mean per-sample judge NLL, ± delta-method s.e. over samples).

``nfe_speedup_at_equal_quality`` = NFE of the released ancestral sampler at 128 steps (the release's canvas and
tail, T = 1) ÷ the fewest NFE at which another grid point reaches a Gen PPL no worse than the reference's Gen
PPL + its s.e., at a unigram entropy at least 97% of the reference's (points run with the release's preset are not
candidates).

Prints one JSON line; writes ``<run-dir>/sweep.json`` and ``<run-dir>/sweep.png`` (``--plot`` to move it).
Usage: ``python bench/sample_quality.py [--run-dir runs/bench-quality] [--prompts 96] [--full] [--quick]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality_models import ensure_models  # noqa: E402

PROMPT_TOKENS = 8
NEW_TOKENS = 128
REFERENCE = {"sampler": "ancestral", "num_denoising_steps": 128, "temperature": 1.0, "preset": "release"}


def held_out_prompts(run_dir: Path, tokenizer, count: int) -> tuple[list[str], list[list[int]]]:
    """The first PROMPT_TOKENS ordinary tokens of held-out windows (one every 64 tokens of the held-out canvases),
    decoded, and the NEW_TOKENS ids that follow each in the data (the "held-out text" anchor)."""
    from sumi.data import PackedLoader

    loader = PackedLoader(run_dir / "shards", "heldout", batch_size=1, shuffle=False, drop_last=False)
    special = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    prompts, continuations = [], []
    for canvas in loader:
        ids = [i for i in canvas[0].tolist() if i not in special]
        for start in range(0, len(ids) - PROMPT_TOKENS - NEW_TOKENS, 64):
            prompts.append(tokenizer.decode(ids[start:start + PROMPT_TOKENS]))
            continuations.append(ids[start + PROMPT_TOKENS:start + PROMPT_TOKENS + NEW_TOKENS])
            if len(prompts) == count:
                return prompts, continuations
    return prompts, continuations


def anchors(prompts: list[str], continuations: list[list[int]], tokenizer, judge, vocab_size: int) -> dict:
    """What the judge says of text that is not sampled, to place the samplers' numbers: the held-out text that
    follows each prompt (the best a sampler can hope for) and uniformly random ids (what no denoising gives)."""
    from sumi.eval.quality import measure, summarize

    generator = torch.Generator().manual_seed(0)
    random_ids = torch.randint(0, vocab_size, (len(prompts), NEW_TOKENS), generator=generator).tolist()
    out = {}
    for name, rows in (("held-out text", continuations), ("uniform random ids", random_ids)):
        summary = summarize(measure(prompts, [tokenizer.decode(r) for r in rows], rows, judge))
        out[name] = {"gen_ppl": round(summary.gen_ppl, 3), "gen_ppl_se": round(summary.gen_ppl_se, 3),
                     "entropy": round(summary.entropy, 4)}
    return out


def grid(quick: bool, full: bool = False) -> list[dict]:
    """The grid points (each a dict of generate options; ``preset`` selects the release's defaults)."""
    if quick:
        return [REFERENCE, {"sampler": "ancestral", "num_denoising_steps": 32, "greedy_tail": True},
                {"sampler": "threshold", "threshold": 0.8, "tokens_per_step": 4}]
    points = [REFERENCE, dict(REFERENCE, num_denoising_steps=32),
              {"preset": "release", "sampler": "adaptive", "num_denoising_steps": 32, "temperature": 1.0},
              {"sampler": "ancestral", "num_denoising_steps": 32},
              {"sampler": "adaptive", "num_denoising_steps": 32, "tokens_per_step": 4}]
    for k in (16, 32):
        points.append({"sampler": "ancestral", "num_denoising_steps": k, "greedy_tail": True})
    for k in (16, 32, 64):
        points.append({"sampler": "psi", "num_denoising_steps": k, "psi_kappa": 0.5, "greedy_tail": True})
    for k in (8, 4):  # at most 128 / k steps: the run ends once every position is committed
        points.append({"sampler": "threshold", "threshold": 0.8, "tokens_per_step": k})
    for k in (16, 8):
        points.append({"sampler": "ancestral", "num_denoising_steps": k})
    for k in (16, 32):
        points.append({"sampler": "psi", "num_denoising_steps": k, "psi_kappa": 0.5})
    points.append({"sampler": "threshold", "threshold": 0.8, "tokens_per_step": 16})
    if full:
        for k in (64, 128):
            points.append({"sampler": "ancestral", "num_denoising_steps": k})
        points.append({"sampler": "ancestral", "num_denoising_steps": 64, "greedy_tail": True})
        points.append({"sampler": "psi", "num_denoising_steps": 32, "psi_kappa": 0.8, "greedy_tail": True})
        points.append({"sampler": "ancestral", "num_denoising_steps": 32, "temperature": 0.9, "greedy_tail": True})
        points.append({"sampler": "threshold", "threshold": 0.5, "tokens_per_step": 4})
        points.append({"sampler": "threshold", "threshold": 0.8, "tokens_per_step": 4, "temperature": 0.9})
        points.append({"preset": "release", "sampler": "adaptive", "num_denoising_steps": 128, "temperature": 1.0})
        points.append({"sampler": "adaptive", "num_denoising_steps": 128})
    return points


def speedup(points, reference_index: int) -> dict:
    ref = points[reference_index]
    bound = ref.summary.gen_ppl + ref.summary.gen_ppl_se
    floor = 0.97 * ref.summary.entropy
    matches = [(p.nfe_per_sample, p.label) for p in points  # sumi's samplers and settings, not the release's
               if p.options.get("preset") != "release" and p.summary.gen_ppl <= bound and p.summary.entropy >= floor]
    if not matches:
        return {"nfe_speedup_at_equal_quality": None, "best": None, "reference_nfe": ref.nfe_per_sample}
    nfe, label = min(matches)
    return {"nfe_speedup_at_equal_quality": round(ref.nfe_per_sample / nfe, 3), "best": label, "best_nfe": nfe,
            "reference_nfe": ref.nfe_per_sample, "reference_gen_ppl": ref.summary.gen_ppl,
            "reference_gen_ppl_se": ref.summary.gen_ppl_se, "reference_entropy": ref.summary.entropy}


def dump_point(point) -> dict:
    return {"label": point.label, "options": point.options, "nfe": point.nfe_per_sample,
            "summary": point.summary.to_json()}


def load_point(doc: dict):
    from sumi.eval.quality import QualitySummary
    from sumi.eval.sweep import SweepPoint

    summary = dict(doc["summary"])
    summary["distinct"] = {int(n): (v["mean"], v["se"]) for n, v in summary["distinct"].items()}
    return SweepPoint(label=doc["label"], options=doc["options"], summary=QualitySummary(**summary),
                      nfe_per_sample=doc["nfe"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/bench-quality"))
    parser.add_argument("--prompts", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="three grid points only")
    parser.add_argument("--full", action="store_true", help="more grid points (about twice the time)")
    parser.add_argument("--plot", type=Path, default=None, help="PNG path (default <run-dir>/sweep.png)")
    parser.add_argument("--shard", default="0/1", metavar="I/N",
                        help="measure only grid points i, i+N, …; every point is cached under <run-dir>/points, "
                             "so N processes can share the grid and any later run combines them")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)

    from sumi.checkpoint import resolve_model
    from sumi.eval.quality import load_judge
    from sumi.eval.sweep import plot_sweep, run_sweep, write_sweep

    udlm_dir, judge_dir = ensure_models(args.run_dir)
    model, tokenizer = resolve_model(str(udlm_dir))
    model.eval()
    judge = load_judge(judge_dir, batch_size=args.batch_size)
    prompts, continuations = held_out_prompts(args.run_dir, tokenizer, args.prompts)
    points_grid = grid(args.quick, args.full)
    started = time.perf_counter()

    def log(point):
        s = point.summary
        logging.info("%-40s NFE %6.1f  Gen PPL %8.2f ± %6.2f  entropy %.3f  noise %.3f  %.0fs", point.label,
                     point.nfe_per_sample, s.gen_ppl, s.gen_ppl_se, s.entropy, s.noise_share or 0.0, s.wall_s)

    shard, shards = (int(v) for v in args.shard.split("/"))
    prompts_hash = hashlib.sha1(json.dumps(prompts).encode()).hexdigest()[:12]  # new prompts, new points
    stamp = f"{udlm_dir.stat().st_mtime_ns}-{judge_dir.stat().st_mtime_ns}-{prompts_hash}-{NEW_TOKENS}"
    points, missing = [], 0
    for index, options in enumerate(points_grid):
        cache = args.run_dir / "points" / (hashlib.sha1((stamp + json.dumps(options, sort_keys=True)).encode())
                                           .hexdigest()[:16] + ".json")
        if cache.is_file():
            points.append(load_point(json.loads(cache.read_text())))
            continue
        if index % shards != shard:
            missing += 1
            continue
        [point] = run_sweep(model, tokenizer, prompts, judge, [options], base={"max_new_tokens": NEW_TOKENS},
                            batch_size=args.batch_size, seed=0, on_point=log)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(dump_point(point)))
        points.append(point)
    if missing:
        print(json.dumps({"measured": len(points), "missing": missing, "note": "run the other shards, then once more"}))
        return
    reference_index = points_grid.index(REFERENCE)
    marks = anchors(prompts, continuations, tokenizer, judge, tokenizer.vocab_size)
    result = speedup(points, reference_index)
    floor = 0.97 * points[reference_index].summary.entropy  # the speed-up's entropy condition
    write_sweep(args.run_dir / "sweep.json", points, extra={"prompts": prompts, "anchors": marks, **result},
                entropy_floor=floor)
    plot_sweep(points, args.plot or args.run_dir / "sweep.png", reference=points[reference_index],
               entropy_floor=floor, anchors={k: v["gen_ppl"] for k, v in marks.items()},
               title=f"{len(prompts)} held-out prompts, {NEW_TOKENS} new tokens (bench/sample_quality.py); "
                     "floor = 97% of the reference's entropy")
    record = {"config": {"prompts": len(prompts), "new_tokens": NEW_TOKENS, "threads": args.threads,
                         "udlm": str(udlm_dir), "judge": str(judge_dir), "torch": torch.__version__,
                         "seconds": round(time.perf_counter() - started, 1)},
              "samplers": {p.label: {"nfe": p.nfe_per_sample, "gen_ppl": round(p.summary.gen_ppl, 3),
                                     "gen_ppl_se": round(p.summary.gen_ppl_se, 3),
                                     "entropy": round(p.summary.entropy, 4),
                                     "noise_share": p.summary.noise_share} for p in points},
              "anchors": marks, **result}
    print(json.dumps(record))


if __name__ == "__main__":
    main()
