"""sumi: uniform diffusion language models (UDLMs) — pretrain, sample, score, probe and ship.

The public API is re-exported here; submodules are imported lazily so that ``import sumi`` stays fast.
"""

from sumi.config import SumiConfig, get_preset, list_presets
from sumi.errors import CheckpointError, ConfigError, InputError, SumiError

__version__ = "0.1.0"

__all__ = [
    "SumiConfig",
    "get_preset",
    "list_presets",
    "SumiError",
    "ConfigError",
    "CheckpointError",
    "InputError",
    "Sumi",
    "SumiForMaskGeneration",
    "load_model",
    "load_tokenizer",
    "generate",
    "score",
]

_SUBMODULES = ("chat", "checkpoint", "config", "data", "diffusion", "eval", "model", "sampling", "serve", "tokenizer",
               "train")


def __getattr__(name: str):
    # Lazy re-exports: heavy modules (torch model, samplers, scorers) load on first use.
    if name == "SumiForMaskGeneration":
        from sumi.model import SumiForMaskGeneration

        return SumiForMaskGeneration
    if name == "load_model":
        from sumi.release import load_model

        return load_model
    if name == "Sumi":
        from sumi.release import Sumi

        return Sumi
    if name == "load_tokenizer":
        from sumi.tokenizer import load_tokenizer

        return load_tokenizer
    if name == "generate":
        from sumi.sampling import generate

        return generate
    if name == "score":
        from sumi.eval.nelbo import score

        return score
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"sumi.{name}")
    raise AttributeError(f"module 'sumi' has no attribute {name!r}")
