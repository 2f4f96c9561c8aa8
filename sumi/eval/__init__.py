"""Evaluation: NELBO scoring (:mod:`sumi.eval.nelbo`), the lm-evaluation-harness backend
(:mod:`sumi.eval.lm_eval_backend`) and inference probes with plots (:mod:`sumi.eval.probes`).

Submodules are imported on use; ``import sumi.eval`` loads nothing heavy.
"""
