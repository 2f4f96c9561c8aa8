"""GIDD diffusion math in log-SNR form: rates, mixing distributions, noising, loss and NELBO weights.

Read in this order: ``schedule`` (λ ↔ α ↔ t, the training-time t sampler), ``mixing`` (π_λ, π'_λ and drawing
z ~ q_λ(·|x)), ``loss`` (KL + Itakura-Saito, loss/ELBO weights, Sumi's training loss). No I/O, logging or
distributed code lives here.
"""

from sumi.diffusion.loss import (
    GiddTerms,
    causal_lm_loss,
    gidd_terms,
    gidd_terms_at_log_snr,
    loss_weights,
    sumi_loss,
    sumi_loss_reference,
)
from sumi.diffusion.mixing import MixingDistribution, uniform
from sumi.diffusion.schedule import (
    LOG_SNR_MAX,
    LOG_SNR_MIN,
    TimeSampler,
    alpha_from_log_snr,
    alpha_from_time,
    log_snr_density,
    log_snr_from_alpha,
    time_range,
)

__all__ = [
    "GiddTerms", "causal_lm_loss", "gidd_terms", "gidd_terms_at_log_snr", "loss_weights", "sumi_loss",
    "sumi_loss_reference",
    "MixingDistribution", "uniform", "LOG_SNR_MAX", "LOG_SNR_MIN", "TimeSampler", "alpha_from_log_snr",
    "alpha_from_time", "log_snr_density", "log_snr_from_alpha", "time_range",
]
