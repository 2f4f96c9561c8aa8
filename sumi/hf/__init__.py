"""Sumi as a Hugging Face ``transformers`` model (no ``trust_remote_code``).

``import sumi`` registers :class:`SumiHFConfig` under ``model_type="sumi"`` and
:class:`SumiHFForMaskGeneration` with ``AutoModel`` and ``AutoModelForMaskGeneration`` (see
:mod:`sumi.integrations.hf`). Importing this package imports ``transformers``.
"""

from sumi.hf.modeling import SumiHFConfig, SumiHFForMaskGeneration

__all__ = ["SumiHFConfig", "SumiHFForMaskGeneration"]
