"""Shared fixtures: seeded tiny models and offline settings for every test."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# Tiny-model ops are too small to gain from threads, and on a loaded 2-core machine two OpenMP threads wait on
# each other (a 30x slowdown was measured); tests that need more set it themselves (subprocesses get
# OMP_NUM_THREADS from their own environment).
torch.set_num_threads(1)


@pytest.fixture
def tiny_config():
    from sumi.config import sumi_tiny

    return sumi_tiny()


@pytest.fixture
def tiny_model(tiny_config):
    from sumi.release import Sumi

    torch.manual_seed(0)
    return Sumi.from_config(tiny_config, seed=0).eval()


ASSETS = os.path.join(os.path.dirname(__file__), "assets")


def sample_texts() -> list[str]:
    """~400 verses of the King James Bible (public domain): the tiny tokenizer's training text."""
    with open(os.path.join(ASSETS, "genesis.txt"), encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A 512-id byte-level BPE (BOS/EOS/PAD = 0/1/2, matching the sumi-tiny preset)."""
    from sumi.tokenizer import train_bpe

    return train_bpe(sample_texts(), vocab_size=512, min_frequency=2)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """A self-contained model directory: sumi-tiny weights (seed 0, untrained), config, tokenizer files."""
    from sumi.config import sumi_tiny
    from sumi.release import Sumi

    directory = tmp_path_factory.mktemp("tiny_model")
    model = Sumi.from_config(sumi_tiny(), seed=0)
    model.save_pretrained(directory)
    tiny_tokenizer.save_pretrained(directory)
    return directory


@contextlib.contextmanager
def _serve_process(model_dir, *args: str, env: dict | None = None, log_name: str = "serve"):
    """``sumi serve --model DIR ARGS`` in a subprocess on a free loopback port.

    Yields ``(base_url, port, process, log_path)`` once ``/health`` answers (90 s at most; a server that exits
    first fails the test with its log); SIGTERM at exit, SIGKILL after 15 s.
    """
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "sumi.cli", "serve", "--model", str(model_dir), "--port", str(port), *args]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **(env or {}))
    log_path = Path(model_dir).parent / f"{log_name}-{port}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"sumi serve exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("sumi serve did not become healthy within 90 s")
            time.sleep(0.2)
        yield base, port, proc, log_path
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def serve_process():
    """The :func:`_serve_process` context manager, for module-scoped server fixtures."""
    return _serve_process
