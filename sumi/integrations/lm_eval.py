"""``import sumi.integrations.lm_eval`` registers the ``sumi`` model with lm-evaluation-harness.

The registration is lazy: lm-eval stores the placeholder ``"sumi.eval.lm_eval_backend:SumiLM"`` (its own
``model_registry.register(name, target="module:Class")`` API) and imports the backend (and torch) only when a
run asks for ``model="sumi"``.
"""

from __future__ import annotations

# lm-eval fills its registry with the built-in models only when it finds it empty (get_model); import them
# first so that adding ours does not hide "hf", "vllm", ….
import lm_eval.models  # noqa: F401
from lm_eval.api.registry import model_registry

BACKEND = "sumi.eval.lm_eval_backend:SumiLM"
MODEL_NAME = "sumi"


def register() -> None:
    """Make ``lm_eval.simple_evaluate(model="sumi", ...)`` and ``lm_eval --model sumi`` work. Idempotent."""
    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=BACKEND)


register()
