"""``sumi info MODEL_DIR_OR_PRESET [--json]``: the resolved config and parameter counts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sumi.config import CONFIG_NAME, PRESETS, SumiConfig, get_preset
from sumi.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help=f"a model directory (with {CONFIG_NAME}) or a preset: {', '.join(PRESETS)}")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")


def resolve_config(model: str) -> tuple[SumiConfig, str]:
    """A config from a directory / config.json path, or a preset name. Returns (config, source)."""
    path = Path(model)
    if path.is_dir() or path.suffix == ".json":
        return SumiConfig.from_json_file(path), str(path)
    if model.lower().replace("_", "-") in PRESETS:
        return get_preset(model), f"preset:{model}"
    raise ConfigError(f"{model!r} is neither a model directory nor a preset ({', '.join(PRESETS)})")


def run(args: argparse.Namespace) -> int:
    config, source = resolve_config(args.model)
    counts = config.num_parameters()
    info = {"source": source, "config": config.to_dict(), "parameters": counts}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{source}: {config.num_hidden_layers} layers, d={config.hidden_size}, "
          f"heads {config.num_attention_heads}/{config.num_key_value_heads}, vocab {config.vocab_size}")
    for key, value in counts.items():
        print(f"  {key:>14}: {value:,}")
    return 0
