"""``sumi serve --model DIR``: serve a model over an OpenAI-compatible HTTP API (see docs/serving.md)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

SWITCH_INTERVAL_S = 0.001  # Python's default is 0.005


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model directory (release layout, with tokenizer files)")
    parser.add_argument("--tokenizer", default=None, help="tokenizer directory or name (default: the model dir)")
    parser.add_argument("--adapter", default=None, help="a LoRA adapter directory (sumi finetune) merged into --model")
    parser.add_argument("--model-name", default=None, help="model id reported by the API (default: dir name)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/*")
    parser.add_argument("--max-tokens-limit", type=int, default=512, help="largest max_tokens a request may ask")
    parser.add_argument("--max-request-bytes", type=int, default=1 << 20, help="largest request body (bytes)")
    parser.add_argument("--batch-window-ms", type=float, default=5.0,
                        help="wait this long after a request for others to batch with it (default 5)")
    parser.add_argument("--max-batch-rows", type=int, default=32, help="most sequences per sampler call")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                        help="parameter dtype (default: stored; bf16 is upcast on CPU)")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))


def run(args: argparse.Namespace) -> int:
    import torch
    import uvicorn

    from sumi.checkpoint import resolve_model
    from sumi.errors import ConfigError
    from sumi.serve import Limits, ServeConfig, create_app

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must lie in 1..65535, got {args.port}")
    if args.max_tokens_limit < 1:
        raise ConfigError("--max-tokens-limit must be >= 1")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = resolve_model(args.model, args.tokenizer, device=device, dtype=args.dtype, adapter=args.adapter)
    name = args.model_name or Path(args.model).resolve().name
    config = ServeConfig(model_id=name, api_key=args.api_key, max_request_bytes=args.max_request_bytes,
                         batch_window_ms=args.batch_window_ms, max_batch_rows=args.max_batch_rows,
                         limits=Limits(max_tokens=args.max_tokens_limit))
    app = create_app(model, tokenizer, config)
    # The model thread holds the GIL between (small) kernels; a shorter switch interval hands it to the event loop
    # sooner, so /health and new requests are answered promptly while a batch denoises.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    logger.info("serving %s (%s, %s) on http://%s:%d", name, device, model.lm_head.weight.dtype, args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0
