"""Offline datasets for the example lm-eval tasks (docs/evaluation.md): the jsonl files next to this module."""

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def load(name: str = "sumi_tiny.jsonl", **_) -> dict:
    """lm-eval ``custom_dataset``: {"test": Dataset} from ``name`` in this folder (no hub access)."""
    import datasets

    rows = [json.loads(line) for line in (HERE / name).read_text(encoding="utf-8").splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
