"""``import sumi.integrations.hf`` registers sumi with ``transformers``' Auto classes.

After it, ``AutoConfig`` / ``AutoModel`` / ``AutoModelForMaskGeneration`` ``.from_pretrained(dir)`` load a
release-layout directory (``model_type: "sumi"``) with sumi's own classes and no ``trust_remote_code``, even when
``config.json`` carries the release's ``auto_map`` (a locally registered class wins over remote code).
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModel, AutoModelForMaskGeneration

from sumi.hf.modeling import SumiHFConfig, SumiHFForMaskGeneration


def register() -> None:
    """Register the config and model classes. Idempotent: registering twice is a no-op."""
    AutoConfig.register(SumiHFConfig.model_type, SumiHFConfig, exist_ok=True)
    for auto in (AutoModel, AutoModelForMaskGeneration):
        auto.register(SumiHFConfig, SumiHFForMaskGeneration, exist_ok=True)


register()
