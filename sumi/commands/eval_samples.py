"""``sumi eval-samples``: sample quality under a judge (Gen PPL, unigram entropy, distinct-n, noise share, NFE).

Either samples one continuation per prompt with ``--model`` and the sampler options, or scores existing samples
(``--samples FILE.jsonl``, one ``{"prompt": …, "text": …}`` per line). Prints the summary as one JSON line and
writes the per-sample records with ``--output``. Metrics: :mod:`sumi.eval.quality`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sumi._io import read_text
from sumi.errors import InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--judge", required=True,
                        help="a causal LM directory: a sumi AR baseline (model.causal=true) or any Hugging Face "
                             "AutoModelForCausalLM directory with its tokenizer")
    parser.add_argument("--model", help="the diffusion model directory to sample from")
    parser.add_argument("--samples", type=Path, help="score these samples instead (JSONL: prompt, text)")
    parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    parser.add_argument("--prompts", type=Path, help="a file with one prompt per line")
    parser.add_argument("--output", type=Path, help="write {summary, samples} JSON here")
    parser.add_argument("--batch-size", type=int, default=32, help="rows per sampler call (default 32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    from sumi.commands.generate import add_sampler_arguments

    add_sampler_arguments(parser)


def _prompts(args) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts is not None:
        if not args.prompts.is_file():
            raise InputError(f"--prompts {args.prompts} is not a file")
        prompts += [line.rstrip("\n") for line in read_text(args.prompts).splitlines()
                    if line.strip()]
    return prompts


def _read_samples(path: Path) -> tuple[list[str], list[str]]:
    if not path.is_file():
        raise InputError(f"--samples {path} is not a file")
    prompts, texts = [], []
    for number, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            prompts.append(str(record.get("prompt", "")))
            texts.append(str(record["text"]))
        except (json.JSONDecodeError, KeyError, AttributeError) as exc:
            raise InputError(f"{path}:{number}: each line must be a JSON object with a 'text' (and optional "
                             f"'prompt') field ({exc})") from exc
    if not texts:
        raise InputError(f"{path} holds no samples")
    return prompts, texts


def run(args: argparse.Namespace) -> int:
    from sumi.eval.quality import load_judge, measure, sample_quality, summarize, write_report

    if (args.model is None) == (args.samples is None):
        raise InputError("pass either --model (sample, then score) or --samples FILE.jsonl (score only)")
    judge = load_judge(args.judge, device=args.device)
    if args.samples is not None:
        prompts, texts = _read_samples(args.samples)
        # the sampler's ids are unknown here: the token statistics use the judge's tokens
        records = measure(prompts, texts, [judge.encode(text) for text in texts], judge)
        summary = summarize(records)
    else:
        from sumi.checkpoint import resolve_model

        prompts = _prompts(args)
        if not prompts:
            raise InputError("no prompts: pass --prompt TEXT (repeatable) or --prompts FILE")
        model, tokenizer = resolve_model(args.model, device=args.device)
        from sumi.commands.generate import preset_options

        options = preset_options(args).replace(max_new_tokens=args.max_new_tokens, schedule=args.schedule,
                                               top_k=args.top_k, top_p=args.top_p)
        records, summary = sample_quality(model.eval(), tokenizer, prompts, judge, batch_size=args.batch_size,
                                          seed=args.seed, config=options)
    if args.output is not None:
        write_report(args.output, records, summary)
    print(json.dumps(summary.to_json()))
    return 0
