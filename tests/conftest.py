"""Shared fixtures: seeded tiny models and offline settings for every test."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def tiny_config():
    from sumi.config import sumi_tiny

    return sumi_tiny()


@pytest.fixture
def tiny_model(tiny_config):
    from sumi.model import SumiForMaskGeneration

    torch.manual_seed(0)
    return SumiForMaskGeneration.from_config(tiny_config, seed=0).eval()
