"""``sumi chat --model DIR``: an interactive chat in the terminal, the reply settling on its canvas.

Each line read from stdin is a user turn; the conversation is rendered with the model's chat template (the one
the server's chat endpoint uses) and the reply is denoised on one canvas. On a terminal the reply is redrawn
after every denoising step; with piped input only the final replies are printed (``--json``: one JSON line
each). ``/reset``
forgets the conversation; EOF or ``/exit`` ends.
"""

from __future__ import annotations

import argparse
import json
import sys

from sumi.sampling.config import SAMPLERS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model directory (weights, config, tokenizer files)")
    parser.add_argument("--adapter", default=None, help="a LoRA adapter directory to merge in (sumi finetune)")
    parser.add_argument("--system", default=None, help="a system message starting the conversation")
    parser.add_argument("--canvas-length", type=int, default=256,
                        help="canvas C (default 256; use the finetune.canvas_length the model was tuned with)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="reply budget (use the finetune.response_budget the model was tuned with; default: "
                             "up to the end of the canvas)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: one per reply position)")
    parser.add_argument("--sampler", choices=SAMPLERS, default="adaptive")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = argmax (default)")
    parser.add_argument("--guidance-scale", type=float, default=1.0, help="classifier-free guidance γ (1 = off)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-stream", dest="stream", action="store_false", help="print only the final reply")
    parser.add_argument("--json", action="store_true", help='print each reply as one JSON line {"reply": ...}')


def run(args: argparse.Namespace) -> int:
    from sumi.checkpoint import resolve_model
    from sumi.sampling.chat import chat_reply
    from sumi.sampling.config import SamplingConfig

    model, tokenizer = resolve_model(args.model, device=args.device, adapter=args.adapter)
    model.eval()
    config = SamplingConfig(sampler=args.sampler, temperature=args.temperature, seed=args.seed,
                            guidance_scale=args.guidance_scale, num_denoising_steps=args.steps)
    interactive = sys.stdin.isatty() and sys.stdout.isatty()
    stream = args.stream and interactive and not args.json
    start = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(start)

    def show(text: str) -> None:
        sys.stdout.write("\r\033[K" + "assistant> " + text.replace("\n", " "))
        sys.stdout.flush()

    while True:
        if interactive:
            sys.stdout.write("you> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        if not line or line.strip() == "/exit":
            return 0
        text = line.rstrip("\n")
        if text.strip() == "/reset":
            messages = list(start)
            continue
        if not text.strip():
            continue
        messages.append({"role": "user", "content": text})
        answer = chat_reply(model, tokenizer, messages, config, canvas_length=args.canvas_length,
                            max_new_tokens=args.max_new_tokens,
                            on_step=show if stream else None)
        if args.json:
            print(json.dumps({"reply": answer}, ensure_ascii=False), flush=True)
        elif stream:
            show(answer)
            sys.stdout.write("\n")
        else:
            print(("assistant> " if interactive else "") + answer, flush=True)
        messages.append({"role": "assistant", "content": answer})
