"""Registration of sumi with third-party frameworks, by an explicit import (nothing happens on ``import sumi``).

* ``import sumi.integrations.hf`` — ``transformers``' ``AutoConfig`` / ``AutoModel`` /
  ``AutoModelForMaskGeneration`` learn ``model_type: "sumi"`` (:mod:`sumi.integrations.hf`);
* ``import sumi.integrations.lm_eval`` — ``lm_eval.simple_evaluate(model="sumi", ...)`` and
  ``lm_eval --model sumi`` find sumi's backend (:mod:`sumi.integrations.lm_eval`; ``sumi eval`` does this).

Each module registers when it is imported and exposes an idempotent ``register()`` for callers who prefer to
call it. Nothing here patches an import system: ``import sumi`` neither imports nor hooks either framework.
"""
