"""``sumi generate --model DIR --prompt TEXT``: sample continuations, optionally watching the canvas settle.

Wires the model directory (weights + tokenizer files), the sampler options of :func:`sumi.sampling.generate`,
and the views of :mod:`sumi.sampling.visual` (``--show``, ``--trajectory out.html``, ``--gif out.gif``).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from sumi._io import read_text
from sumi.errors import InputError
from sumi.sampling.config import RELEASE, SAMPLERS, SCHEDULES, TAILS, SamplingConfig

DEFAULTS = SamplingConfig()
"""Every option's default comes from the config, never from a literal here."""

logger = logging.getLogger(__name__)


def _frozen_pair(text: str) -> tuple[int, int]:
    try:
        pos, tok = text.split("=")
        return int(pos), int(tok)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--freeze takes POSITION=TOKEN_ID, got {text!r}") from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model directory (config, weights and tokenizer files)")
    parser.add_argument("--adapter", default=None, help="a LoRA adapter directory (sumi finetune) merged into --model")
    src = parser.add_argument_group("prompts (one sample per prompt; none = one unconditional sample)")
    src.add_argument("--prompt", action="append", default=[], help="a prompt text (repeatable)")
    src.add_argument("--prompt-file", action="append", default=[], type=Path,
                     help="a file whose whole content is one prompt (repeatable)")
    src.add_argument("--no-bos", action="store_true", help="do not prepend BOS to the prompts")
    src.add_argument("--suffix", default=None,
                     help="infill: text that follows the generated span; --max-new-tokens tokens are written between "
                          "--prompt (optional) and it")
    src.add_argument("--template", default=None,
                     help='infill: text with gaps, e.g. "The {fill:12} said {fill:4}." ({fill:N} = N new tokens)')
    add_sampler_arguments(parser)
    smp = parser.add_argument_group("canvas and constraints")
    smp.add_argument("--no-anchor", dest="anchor_eosbos", action="store_false", help="do not freeze EOS, BOS")
    smp.add_argument("--freeze", action="append", default=[], type=_frozen_pair, metavar="POS=ID",
                     help="freeze canvas position POS to token ID in every row (repeatable)")
    smp.add_argument("--denoise-end", type=int, default=DEFAULTS.denoise_end,
                     help="positions from here keep their start value")
    smp.add_argument("--no-trim", dest="trim_at_eos", action="store_false", help="do not cut at the first EOS")
    smp.add_argument("--no-early-stop", dest="early_stop", action="store_false")
    smp.add_argument("--sliding", action="store_true", help="allow outputs longer than the canvas")
    smp.add_argument("--context-length", type=int, default=DEFAULTS.context_length,
                     help="prompt tokens kept per sliding window")
    smp.add_argument("--stop", action="append", default=None, help="cut the text at this string (repeatable)")
    smp.add_argument("--self-correct", type=int, default=0, metavar="STEPS",
                     help="refine the result with this many self-correction steps")
    smp.add_argument("--seed", type=int, default=DEFAULTS.seed)
    smp.add_argument("--guidance-scale", type=float, default=DEFAULTS.guidance_scale,
                     help="classifier-free guidance γ for models tuned with finetune.prompt_drop (1 = off)")
    run = parser.add_argument_group("output and device")
    run.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    run.add_argument("--json", action="store_true", help="print one JSON object")
    run.add_argument("--show", action="store_true", help="live terminal view of the canvas settling")
    run.add_argument("--trajectory", type=Path, default=None, help="write an HTML replay of the denoising")
    run.add_argument("--gif", type=Path, default=None, help="write an animated GIF of the denoising")
    run.add_argument("--progress", action="store_true", help="show a progress bar over the steps")


PRESET_FIELDS = ("num_denoising_steps", "sampler", "temperature", "tokens_per_step", "canvas_length", "tail",
                 "fit_canvas",
                 "greedy_tail", "psi_kappa", "threshold")
"""Options whose default depends on the preset (sumi's measured defaults or ``--release-defaults``): their flags
default to None, meaning "the preset's value"."""


def add_sampler_arguments(parser: argparse.ArgumentParser) -> None:
    """The sampler flags shared by ``sumi generate`` and ``sumi eval-samples``."""
    smp = parser.add_argument_group("sampler (defaults: sumi's measured defaults, see docs/sampling.md)")
    smp.add_argument("--release-defaults", action="store_true",
                     help="start from the released sampler's defaults (2048 canvas with its tail denoised, "
                          "ancestral, T=1, 128 steps) instead of sumi's")
    smp.add_argument("--max-new-tokens", type=int, default=DEFAULTS.max_new_tokens)
    smp.add_argument("--steps", "--num-denoising-steps", dest="num_denoising_steps", type=int, default=None,
                     help=f"denoising steps (default: {DEFAULTS.num_denoising_steps or 'max-new-tokens'})")
    smp.add_argument("--sampler", choices=SAMPLERS, default=None, help=f"default {DEFAULTS.sampler}")
    smp.add_argument("--schedule", choices=SCHEDULES, default=DEFAULTS.schedule)
    smp.add_argument("--min-log-snr", type=float, default=DEFAULTS.min_log_snr)
    smp.add_argument("--max-log-snr", type=float, default=DEFAULTS.max_log_snr)
    smp.add_argument("--temperature", type=float, default=None, help=f"0 = argmax (default {DEFAULTS.temperature})")
    smp.add_argument("--top-k", type=int, default=DEFAULTS.top_k)
    smp.add_argument("--top-p", type=float, default=DEFAULTS.top_p)
    smp.add_argument("--tokens-per-step", type=int, default=None, help=f"default {DEFAULTS.tokens_per_step}")
    smp.add_argument("--psi-kappa", type=float, default=None,
                     help=f"psi: weight of the ancestral posterior (default {DEFAULTS.psi_kappa})")
    smp.add_argument("--threshold", type=float, default=None,
                     help=f"threshold: confidence that commits a position (default {DEFAULTS.threshold})")
    smp.add_argument("--greedy-tail", action=argparse.BooleanOptionalAction, default=None,
                     help=f"last step takes the argmax everywhere (default {DEFAULTS.greedy_tail})")
    smp.add_argument("--canvas-length", type=int, default=None,
                     help="canvas width (default: what the prompt + budget + anchor need; release: 2048), "
                          "capped at max positions")
    smp.add_argument("--fit-canvas", action=argparse.BooleanOptionalAction, default=None,
                     help="without --canvas-length: a canvas as wide as the prompt + budget + anchor need "
                          f"(default {DEFAULTS.fit_canvas}; --no-fit-canvas: 2048, the release)")
    smp.add_argument("--tail", choices=TAILS, default=None,
                     help=f"positions after the anchor: freeze or denoise them (default {DEFAULTS.tail})")


def preset_options(args: argparse.Namespace) -> SamplingConfig:
    """The preset (``--release-defaults`` or sumi's) with the preset-dependent flags that were given."""
    base = RELEASE if getattr(args, "release_defaults", False) else DEFAULTS
    return base.replace(**{name: getattr(args, name) for name in PRESET_FIELDS if getattr(args, name) is not None})


def sampling_options(args: argparse.Namespace, batch: int) -> SamplingConfig:
    """The :class:`SamplingConfig` the command line asks for (``--freeze`` pairs apply to every row)."""
    return preset_options(args).replace(
        max_new_tokens=args.max_new_tokens, schedule=args.schedule, min_log_snr=args.min_log_snr,
        max_log_snr=args.max_log_snr, top_k=args.top_k, top_p=args.top_p, anchor_eosbos=args.anchor_eosbos,
        frozen=[list(args.freeze)] * batch if args.freeze else None, denoise_end=args.denoise_end,
        trim_at_eos=args.trim_at_eos, seed=args.seed, early_stop=args.early_stop, sliding=args.sliding,
        context_length=args.context_length, guidance_scale=args.guidance_scale,
    )


def _read_prompts(args) -> list[str] | None:
    prompts = list(args.prompt)
    for path in args.prompt_file:
        if not path.is_file():
            raise InputError(f"--prompt-file {path} does not exist")
        prompts.append(read_text(path))
    return prompts or None


def run(args: argparse.Namespace) -> int:
    import torch

    from sumi.checkpoint import resolve_model
    from sumi.sampling import cut_at_stop, generate
    from sumi.sampling.generate import trim
    from sumi.sampling.self_correct import self_correct
    from sumi.sampling.visual import LiveView, write_trajectory_gif, write_trajectory_html

    wants_view = args.show or args.trajectory is not None or args.gif is not None
    if args.sliding and wants_view:
        raise InputError("--show/--trajectory/--gif follow one canvas; drop --sliding or the views")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {args.device}: CUDA is not available on this machine; use --device cpu")
    model, tokenizer = resolve_model(args.model, device=args.device, adapter=args.adapter)
    model.eval()
    if args.suffix is not None or args.template is not None:
        return _run_infill(args, model, tokenizer)
    texts = _read_prompts(args)
    ids = None if texts is None else [tokenizer.encode(t, add_bos=not args.no_bos) for t in texts]
    batch = 1 if ids is None else len(ids)
    if args.sliding and (args.freeze or args.denoise_end is not None):
        raise InputError("--freeze/--denoise-end cannot be combined with --sliding")
    options = sampling_options(args, batch)
    start = time.perf_counter()
    if args.show:
        with LiveView(tokenizer) as view:
            out = generate(model, ids, options, callback=view.update, return_trajectory=wants_view,
                           show_progress=args.progress)
    else:
        out = generate(model, ids, options, return_trajectory=wants_view, show_progress=args.progress)
    corrections = None
    if args.self_correct:
        canvas, corrections = self_correct(model, out.canvas, frozen_mask=_frozen_for_correction(out),
                                           steps=args.self_correct, seed=args.seed)
        out.canvas = canvas
        out.sequences = trim(canvas, out.prompt_lengths, out.budgets, model.config.eos_token_id, args.trim_at_eos)
    seconds = time.perf_counter() - start
    outputs = [cut_at_stop(tokenizer.decode(seq, skip_special_tokens=True), args.stop) for seq in out.sequences]
    eos = model.config.eos_token_id
    if args.trajectory is not None:
        meta = f"{args.model} · {args.sampler} · T={args.temperature} · {out.steps_run} steps · {out.nfe} forwards"
        write_trajectory_html(args.trajectory, out.trajectory, tokenizer, meta=meta, eos_id=eos)
        logger.info("wrote %s", args.trajectory)
    if args.gif is not None:
        write_trajectory_gif(args.gif, out.trajectory, tokenizer)
        logger.info("wrote %s", args.gif)
    new_tokens = sum(len(s) for s in out.sequences)
    if args.json:
        record = {
            "model": str(args.model),
            "samples": [{"prompt": (texts[i] if texts else None), "text": outputs[i], "token_ids": out.sequences[i],
                         "num_tokens": len(out.sequences[i])} for i in range(len(outputs))],
            "steps_run": out.steps_run, "nfe": out.nfe, "seconds": round(seconds, 4),
            "new_tokens_per_second": round(new_tokens / seconds, 2) if seconds > 0 else None,
            "options": options.to_dict(),
            "resolved": {"canvas_length": int(out.canvas.shape[1]), "num_denoising_steps": options.steps,
                         "budgets": out.budgets, "prompt_lengths": out.prompt_lengths},
        }
        if corrections is not None:
            record["self_correction"] = corrections.__dict__
        print(json.dumps(record, ensure_ascii=False))
        return 0
    for i, text in enumerate(outputs):
        if len(outputs) > 1:
            print(f"--- sample {i} ---")
        print((texts[i] if texts else "") + text)
    logger.info("%d new tokens in %.2fs (%d steps, %d forwards)", new_tokens, seconds, out.steps_run, out.nfe)
    return 0


def _run_infill(args: argparse.Namespace, model, tokenizer) -> int:
    """``--suffix`` / ``--template``: fill the gaps between fixed text (:mod:`sumi.infill`)."""
    from sumi.infill import infill

    if args.template is not None and (args.suffix is not None or args.prompt or args.prompt_file):
        raise InputError("--template holds the whole text; do not combine it with --prompt/--suffix")
    if len(args.prompt) > 1 or args.prompt_file:
        raise InputError("--suffix fills one text: give at most one --prompt")
    if args.sliding or args.freeze or args.denoise_end is not None or args.self_correct:
        raise InputError("--suffix/--template cannot be combined with --sliding, --freeze, --denoise-end or "
                         "--self-correct")
    options = sampling_options(args, 1)
    if args.template is not None:
        result = infill(model, tokenizer, args.template, config=options)
    else:
        result = infill(model, tokenizer, prompt=args.prompt[0] if args.prompt else "", suffix=args.suffix,
                        fill_tokens=args.max_new_tokens, config=options)
    out = result.output
    if args.json:
        sample = {"text": result.text, "fills": result.fills}
        sample.update({"template": args.template} if args.template is not None else
                      {"prompt": args.prompt[0] if args.prompt else "", "suffix": args.suffix})
        print(json.dumps({"model": str(args.model), "samples": [sample], "steps_run": out.steps_run,
                          "nfe": out.nfe, "options": options.to_dict(),
                          "resolved": {"canvas_length": int(out.canvas.shape[1]),
                                       "num_denoising_steps": options.steps}}, ensure_ascii=False))
        return 0
    print(result.text)
    return 0


def _frozen_for_correction(out):
    """Self-correction may change only the free positions of the generated budget."""
    import torch

    frozen = torch.ones_like(out.canvas, dtype=torch.bool)
    for b, (p, budget) in enumerate(zip(out.prompt_lengths, out.budgets)):
        frozen[b, p:p + budget] = False
    if out.frozen_mask is not None:
        frozen |= out.frozen_mask
    return frozen
