"""Shared fixtures: seeded tiny models and offline settings for every test."""

from __future__ import annotations

import os

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
