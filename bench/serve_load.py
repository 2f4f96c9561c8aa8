"""Load test of ``sumi serve``: requests/s and p50/p95 latency, batched vs one sequence per sampler call.

Builds a sumi-tiny model directory (random weights, a byte-level tokenizer trained on the test corpus), starts a
real ``sumi serve`` process twice on 127.0.0.1 — with batching (``--max-batch-rows 32``) and without
(``--max-batch-rows 1``, the baseline) — and sends N completion requests, C in flight at a time, to each.
Prints one JSON line: per configuration requests/s, p50/p95 latency, failures, sampler calls, and the
batched/unbatched throughput ratio.

    .venv/bin/python bench/serve_load.py [--requests 50 --concurrency 8 --max-tokens 8 --steps 4 --canvas 24]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def build_model_dir(directory: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import sample_texts

    from sumi.config import sumi_tiny
    from sumi.release import Sumi
    from sumi.tokenizer import train_bpe

    Sumi.from_config(sumi_tiny(), seed=0).save_pretrained(directory)
    train_bpe(sample_texts(), vocab_size=512, min_frequency=2).save_pretrained(directory)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_load(model_dir: Path, max_batch_rows: int, args: argparse.Namespace) -> dict:
    port = free_port()
    cmd = [sys.executable, "-m", "sumi.cli", "serve", "--model", str(model_dir), "--port", str(port),
           "--max-batch-rows", str(max_batch_rows), "--batch-window-ms", str(args.window_ms), "--log-level",
           "warning"]
    proc = subprocess.Popen(cmd, env=dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false"))
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            raise RuntimeError("server did not start")
        body = {"max_tokens": args.max_tokens, "num_denoising_steps": args.steps, "canvas_length": args.canvas,
                "temperature": 0.9}
        with httpx.Client(base_url=base, timeout=120) as client:
            client.post("/v1/completions", json={"prompt": "warm up", **body})
            before = client.get("/health").json()
            latencies: list[float] = []

            def one(i: int) -> int:
                start = time.perf_counter()
                status = client.post("/v1/completions", json={"prompt": f"Verse {i}: and God", **body}).status_code
                latencies.append(time.perf_counter() - start)
                return status

            start = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(max_workers=args.concurrency) as pool:
                statuses = list(pool.map(one, range(args.requests)))
            wall = time.perf_counter() - start
            after = client.get("/health").json()
        latencies.sort()
        return {"requests_per_s": round(args.requests / wall, 2),
                "p50_ms": round(1000 * statistics.median(latencies), 1),
                "p95_ms": round(1000 * latencies[max(0, int(0.95 * len(latencies)) - 1)], 1),
                "failed": sum(s != 200 for s in statuses),
                "sampler_calls": after["batches_run"] - before["batches_run"]}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--canvas", type=int, default=24)
    parser.add_argument("--window-ms", type=float, default=5.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "sumi-tiny"
        build_model_dir(model_dir)
        batched = run_load(model_dir, 32, args)
        unbatched = run_load(model_dir, 1, args)
    print(json.dumps({"bench": "serve_load", "requests": args.requests, "concurrency": args.concurrency,
                      "batched": batched, "unbatched": unbatched,
                      "batched_vs_unbatched_throughput": round(batched["requests_per_s"]
                                                               / unbatched["requests_per_s"], 2)}))


if __name__ == "__main__":
    main()
