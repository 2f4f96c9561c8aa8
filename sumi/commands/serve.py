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
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/* (visible in "
                        "ps: prefer --api-key-file or $SUMI_API_KEY)")
    parser.add_argument("--api-key-file", default=None, help="read the API key from this file")
    parser.add_argument("--allowed-host", action="append", default=None, metavar="NAME",
                        help="a Host header name to answer (repeatable; default: localhost, 127.0.0.1, ::1 and the "
                        "bind address; '*' answers any host — only behind a proxy that checks it)")
    parser.add_argument("--header-timeout", type=float, default=10.0,
                        help="close a connection whose request head has not arrived after this many seconds")
    parser.add_argument("--max-request-cost", type=int, default=None,
                        help="most prompts x n x steps x canvas positions per request (default 2^24)")
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
    from sumi.serve.security import default_allowed_hosts, protocol_with_deadline, resolve_api_key

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must lie in 1..65535, got {args.port}")
    if args.max_tokens_limit < 1:
        raise ConfigError("--max-tokens-limit must be >= 1")
    max_cost = Limits.max_cost if args.max_request_cost is None else args.max_request_cost
    if not 0 < args.header_timeout <= 3600 or max_cost < 1:
        raise ConfigError("--header-timeout must lie in (0, 3600] and --max-request-cost must be >= 1")
    api_key = resolve_api_key(args.api_key, args.api_key_file)
    allowed = tuple(args.allowed_host) if args.allowed_host else default_allowed_hosts(args.host)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = resolve_model(args.model, args.tokenizer, device=device, dtype=args.dtype, adapter=args.adapter)
    name = args.model_name or Path(args.model).resolve().name
    config = ServeConfig(model_id=name, api_key=api_key, max_request_bytes=args.max_request_bytes,
                         batch_window_ms=args.batch_window_ms, max_batch_rows=args.max_batch_rows,
                         limits=Limits(max_tokens=args.max_tokens_limit, max_cost=max_cost),
                         allowed_hosts=allowed)
    app = create_app(model, tokenizer, config)
    # The model thread holds the GIL between (small) kernels; a shorter switch interval hands it to the event loop
    # sooner, so /health and new requests are answered promptly while a batch denoises.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    logger.info("serving %s (%s, %s) on http://%s:%d", name, device, model.lm_head.weight.dtype, args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5,
                http=protocol_with_deadline(args.header_timeout), timeout_keep_alive=5)
    return 0
