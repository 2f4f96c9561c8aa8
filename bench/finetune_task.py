"""Instruction tuning proven on a task: held-out exact match before and after ``sumi finetune``, full fine-tuning vs
LoRA, with and without classifier-free guidance.

1. **Base model**: ``--base DIR``; by default the demo's (``runs/demo/model``, from ``bash scripts/run.sh``),
   or, when there is none, a small UDLM this script pretrains on the embedded corpus for ``--base-minutes`` (the
   demo's 8k BPE and recipe, 64-token canvases).
2. **Task** (:mod:`sumi.finetune.tasks`): ``--kinds`` (default ``count,category``: "Count the words: …" and
   "Name the category of: …", two instructions over the same kind of word list, so the instruction decides the
   answer); ``--train`` training chats and ``--heldout`` held-out ones (split by a hash of the instruction). The
   kinds that copy words out of the prompt (``pick``, ``reverse``, ``sort``, ``lookup``) are there too, but the
   demo base does not learn them in this budget (docs/finetuning.md says why).
3. **Fine-tuning**: ``sumi finetune`` twice, full and LoRA (rank ``--lora-rank`` on ``--lora-targets``, by default
   every attention and MLP projection and the input embedding, plus the RMSNorm gains with ``--lora-norms``),
   both with ``finetune.prompt_drop`` so one model serves guided and unguided sampling. The two runs go in
   parallel, one thread each (2 cores in all), each stopped by ``training.time_limit_minutes``.
4. **Evaluation** (in the same two processes): every held-out prompt on the fine-tuning layout (prompt,
   ``--budget`` reply positions, EOS/BOS anchor), adaptive sampler at T = 0, exact match of the reply (cut at
   ``<|im_end|>``), at γ = 1 and at every γ of ``--guidance``; exact match ± its standard error over prompts.

Prints ONE JSON line. Wall time depends on what else runs on the machine: the line carries wall and CPU seconds
and the load average, so a slow run on a shared machine is visible as such.

The defaults fit the issue's 15 minutes on 2 idle cores (measured: 10.1 min wall; docs/finetuning.md).

Usage: python bench/finetune_task.py [--base runs/demo/model] [--kinds count,category] [--minutes 11.5]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", default=None, help="base model directory (default: runs/demo/model if it exists, "
                   "else pretrain one here)")
    p.add_argument("--base-minutes", type=float, default=2.0, help="pretraining budget when --base is not given")
    p.add_argument("--output", default="runs/finetune_task")
    p.add_argument("--kinds", default="count,category",
                   help="comma-separated task kinds (sumi.finetune.tasks.TASK_KINDS)")
    p.add_argument("--train", type=int, default=6000, help="training chats")
    p.add_argument("--heldout", type=int, default=200, help="held-out chats")
    p.add_argument("--canvas", type=int, default=64, help="fine-tuning canvas length")
    p.add_argument("--budget", type=int, default=4, help="reply budget (finetune.response_budget, max_new_tokens)")
    p.add_argument("--minutes", type=float, default=11.5, help="time limit of each fine-tuning run")
    p.add_argument("--steps", type=int, default=3800, help="planned optimizer steps of each run")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate, full fine-tuning")
    p.add_argument("--lora-lr", type=float, default=1e-3, help="peak learning rate, LoRA")
    p.add_argument("--lora-rank", type=int, default=12)
    p.add_argument("--lora-targets", default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,embed_tokens",
                   help="comma-separated lora.targets (default: every attention and MLP projection and the input "
                   "embedding)")
    p.add_argument("--prompt-drop", type=float, default=0.1)
    p.add_argument("--log-snr-range", default=None, metavar="MIN,MAX",
                   help="noise.min_log_snr,noise.max_log_snr of the fine-tuning runs (default: the config's)")
    p.add_argument("--guidance", default="1.5,3", help="guidance scales γ compared with γ = 1 (comma-separated)")
    p.add_argument("--eval-steps", type=int, default=4, help="denoising steps per reply")
    p.add_argument("--lora-norms", action=argparse.BooleanOptionalAction, default=True,
                   help="LoRA also trains the RMSNorm gains (lora.train_norms)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-before", action="store_true", help="do not score the base model (reported as null)")
    p.add_argument("--worker", choices=("full", "lora"), default=None, help=argparse.SUPPRESS)
    return p.parse_args()


def pretrain_base(out: Path, minutes: float, seed: int) -> Path:
    """A demo-sized UDLM on the embedded corpus, 64-token canvases (the demo's tokenizer and recipe)."""
    from sumi.commands.demo import RECIPE, _shards, _tokenizer
    from sumi.train import resolve_run_config, train

    if (out / "model" / "config.json").is_file():
        return out / "model"
    tok = _tokenizer(out, 8192)
    shards = _shards(out, tok, 64, seed)
    cfg = resolve_run_config(RECIPE, [
        f"data.shard_dir={shards}", f"training.output_dir={out}", f"training.seed={seed}",
        "model.overrides.max_position_embeddings=64", "training.micro_batch_size=32", "training.steps=2000",
        "schedule.warmup_steps=20", f"training.time_limit_minutes={minutes}", "training.progress=false",
        "training.eval_every=0", "checkpoint.every=0"])
    train(cfg, tokenizer=tok)
    return out / "model"


def guidance_scales(args) -> list[float]:
    return [float(g) for g in args.guidance.split(",") if g.strip()]


def kinds_of(args) -> tuple[str, ...]:
    return tuple(k.strip() for k in args.kinds.split(",") if k.strip())


def write_task(out: Path, train: int, heldout: int, seed: int, kinds: tuple[str, ...]):
    from sumi.finetune.tasks import generate_split

    out.mkdir(parents=True, exist_ok=True)
    train_examples = generate_split("train", train, seed=seed, kinds=kinds)
    held = generate_split("heldout", heldout, seed=seed, kinds=kinds)
    for name, examples in (("train", train_examples), ("heldout", held)):
        with open(out / f"{name}.jsonl", "w") as f:
            for e in examples:
                f.write(json.dumps({"messages": e.messages(system=False)}) + "\n")
    return held


def finetune_overrides(args, base: Path, out: Path, lora: bool) -> list[str]:
    lr = args.lora_lr if lora else args.lr
    return [f"model.init_from={base}", f"finetune.data={out / 'train.jsonl'}",
            f"finetune.heldout_data={out / 'heldout.jsonl'}", f"finetune.canvas_length={args.canvas}",
            f"finetune.response_budget={args.budget}",
            f"finetune.prompt_drop={args.prompt_drop}", *lora_overrides(args, lora),
            f"optimizer.lr={lr}", f"schedule.min_lr={lr / 10}", "optimizer.weight_decay=0.0", "schedule.kind=wsd",
            f"schedule.warmup_steps={min(20, args.steps // 10)}", "schedule.decay_fraction=0.2",
            f"training.steps={args.steps}",
            f"training.micro_batch_size={args.batch}", f"training.time_limit_minutes={args.minutes}",
            "training.device=cpu", "training.progress=false", "training.eval_batches=2", "training.log_every=10",
            "checkpoint.every=0", f"training.seed={args.seed}",
            f"training.output_dir={out / ('lora' if lora else 'full')}"] + noise_overrides(args)


def lora_section(args):
    """The LoRA settings of the command line (what the LoRA run trains, and what its share is counted on)."""
    from sumi.finetune.config import LoraSection

    targets = {"targets": args.lora_targets.split(",")} if args.lora_targets else {}
    return LoraSection(rank=args.lora_rank, train_norms=args.lora_norms, **targets)


def lora_overrides(args, lora: bool) -> list[str]:
    """The ``lora.*`` overrides of a fine-tuning run: :func:`lora_section` for the LoRA run, rank 0 (full) else."""
    section = lora_section(args)
    return [f"lora.rank={section.rank if lora else 0}", f"lora.train_norms={str(section.train_norms).lower()}",
            f"lora.targets=[{','.join(section.targets)}]"]


def noise_overrides(args) -> list[str]:
    if not args.log_snr_range:
        return []
    low, high = (float(v) for v in args.log_snr_range.split(","))
    return [f"noise.min_log_snr={low}", f"noise.max_log_snr={high}"]


def worker(args) -> int:
    """One fine-tuning run and its evaluation (a subprocess of :func:`main`, one thread): writes <name>.json."""
    import torch

    from sumi.checkpoint import load_model
    from sumi.finetune.run import finetune
    from sumi.finetune.tasks import generate_split
    from sumi.train import resolve_run_config

    torch.set_num_threads(1)
    out, lora = Path(args.output), args.worker == "lora"
    start, cpu_start = time.perf_counter(), time.process_time()
    result = finetune(resolve_run_config(None, finetune_overrides(args, Path(args.base), out, lora)))
    train_s, train_cpu_s = time.perf_counter() - start, time.process_time() - cpu_start
    held = generate_split("heldout", args.heldout, seed=args.seed, kinds=kinds_of(args))
    model = load_model(result.model_dir).eval()
    from sumi.tokenizer import load_tokenizer

    tok = load_tokenizer(result.model_dir)
    plain = evaluate(model, tok, held, args.budget, 1.0, args.eval_steps)
    guided = {f"{g:g}": evaluate(model, tok, held, args.budget, g, args.eval_steps) for g in guidance_scales(args)}
    record = {"exact_match": plain["exact_match"], "exact_match_se": plain["exact_match_se"],
              "exact_match_guided": {g: [r["exact_match"], r["exact_match_se"]] for g, r in guided.items()},
              "by_kind": plain["by_kind"], "samples": plain["samples"],
              "steps": result.steps, "final_loss": round(result.final_loss, 4),
              "heldout_response_nelbo": round(result.heldout_nelbo, 4), "train_s": round(train_s, 1),
              "train_cpu_s": round(train_cpu_s, 1), "eval_s": round(time.perf_counter() - start - train_s, 1)}
    (out / f"{args.worker}.json").write_text(json.dumps(record))
    return 0


def run_workers(args, base: Path, out: Path) -> dict[str, dict]:
    """Full and LoRA fine-tuning + evaluation in parallel, one thread each (2 cores in all)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    procs = {}
    for name in ("full", "lora"):
        command = [sys.executable, __file__, *sys.argv[1:], "--worker", name, "--base", str(base)]
        log = open(out / f"{name}.log", "w")
        procs[name] = (subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log)
    results = {}
    for name, (proc, log) in procs.items():
        code = proc.wait()
        log.close()
        if code != 0:
            raise SystemExit(f"fine-tuning {name} failed (exit {code}); see {out / (name + '.log')}")
        results[name] = json.loads((out / f"{name}.json").read_text())
    return results


def evaluate(model, tok, examples, budget: int, guidance: float, steps: int) -> dict:
    """Exact match of the replies to held-out prompts. Prompts are batched by length, so every row's canvas is
    exactly the fine-tuning layout (prompt, ``budget`` reply positions, EOS/BOS anchor; no tail)."""
    from sumi.finetune.data import prompt_ids_of
    from sumi.finetune.tasks import exact_match
    from sumi.sampling import generate
    from sumi.sampling.chat import reply_ids

    groups: dict[int, list[int]] = {}
    prompts = [prompt_ids_of(e.messages(system=False)[:-1], tok) for e in examples]
    for i, ids in enumerate(prompts):
        groups.setdefault(len(ids), []).append(i)
    correct, replies, by_kind = [False] * len(examples), [""] * len(examples), {}
    for rows in groups.values():
        out = generate(model, [prompts[i] for i in rows], max_new_tokens=budget, canvas_length=None,
                       fit_canvas=True, sampler="adaptive", temperature=0.0, num_denoising_steps=steps,
                       tokens_per_step=max(1, -(-budget // steps)), seed=0, guidance_scale=guidance)
        for i, seq in zip(rows, out.sequences):
            replies[i] = tok.decode(reply_ids(seq, tok), skip_special_tokens=True)
            correct[i] = exact_match(replies[i], examples[i].answer)
    for e, ok in zip(examples, correct):
        by_kind.setdefault(e.kind, []).append(ok)
    share = sum(correct) / len(correct)
    return {"exact_match": round(share, 4), "exact_match_se": round((share * (1 - share) / len(correct)) ** 0.5, 4),
            "by_kind": {k: round(sum(v) / len(v), 4) for k, v in by_kind.items()},
            "samples": [f"{e.prompt} -> {r!r}" for e, r in list(zip(examples, replies))[:3]]}


def main() -> int:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.worker:
        return worker(args)
    import torch

    from sumi.checkpoint import load_model, resolve_model
    from sumi.finetune.lora import apply_lora, parameter_counts

    torch.set_num_threads(2)
    started, cpu_started = time.perf_counter(), time.process_time()
    out = Path(args.output)
    demo = ROOT / "runs" / "demo" / "model"  # what `bash scripts/run.sh` leaves behind
    if args.base:
        base = Path(args.base)
    elif (demo / "config.json").is_file():
        base = demo
    else:
        base = pretrain_base(out / "base", args.base_minutes, args.seed)
    base_s = time.perf_counter() - started
    held = write_task(out, args.train, args.heldout, args.seed, kinds_of(args))
    model, tok = resolve_model(base)
    before = None if args.skip_before else evaluate(model.eval(), tok, held, args.budget, 1.0, args.eval_steps)
    trainable, total = parameter_counts(apply_lora(load_model(base), lora_section(args)))
    runs = run_workers(args, base, out)
    result = {"bench": "finetune_task", "task": list(kinds_of(args)), "train_chats": args.train,
              "heldout_chats": args.heldout,
              "canvas": args.canvas, "budget": args.budget, "base": str(base), "base_s": round(base_s, 1),
              "before": before and before["exact_match"], "full": {**runs["full"], "trainable_share": 1.0},
              "lora": {**runs["lora"], "trainable_share": round(trainable / total, 4), "rank": args.lora_rank}}
    result.update(guidance_scales=guidance_scales(args), prompt_drop=args.prompt_drop, steps_planned=args.steps,
                  minutes_limit_per_run=args.minutes, wall_s=round(time.perf_counter() - started, 1),
                  cpu_s_main=round(time.process_time() - cpu_started, 1),
                  load_avg_1m=round(os.getloadavg()[0], 2))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
