"""Register sumi with ``transformers``' Auto classes (run by ``import sumi`` once transformers is imported).

After it, ``AutoConfig`` / ``AutoModel`` / ``AutoModelForMaskGeneration`` ``.from_pretrained(dir)`` load a
release-layout directory (``model_type: "sumi"``) with sumi's own classes and no ``trust_remote_code``, even when
``config.json`` carries the release's ``auto_map`` (a locally registered class wins over remote code).
"""

from __future__ import annotations


def register() -> None:
    """Idempotent: registering twice is a no-op."""
    from transformers import AutoConfig, AutoModel, AutoModelForMaskGeneration

    from sumi.hf.modeling import SumiHFConfig, SumiHFForMaskGeneration

    AutoConfig.register(SumiHFConfig.model_type, SumiHFConfig, exist_ok=True)
    for auto in (AutoModel, AutoModelForMaskGeneration):
        auto.register(SumiHFConfig, SumiHFForMaskGeneration, exist_ok=True)
