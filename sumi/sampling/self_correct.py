"""Self-correction of a finished canvas (GIDD, ``docs/design.md`` §4.6, adapted to Sumi).

Sumi's model has no time input, so the G pipeline's t0 is dropped. Each step, per row: ℓ = model(z);
P = softmax(ℓ/T); z' ~ P at every position; score_i = 1[z'_i ≠ z_i]·P_i(z'_i); the ``tokens_per_step`` best
positions take z'. acc = mean over free positions of (z_new == argmax ℓ) (ℓ from the old z). Stops per row:
*converged* when z_new == z; *early stopped* when acc has not exceeded its best for more than ``max_patience``
steps (then z_new is not accepted).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sumi.errors import InputError
from sumi.sampling.loop import forward_logits, make_generator, model_device
from sumi.sampling.posterior import gumbel_argmax


@dataclass
class SelfCorrectionStats:
    """Per-row outcome of :func:`self_correct` (lists of length B) and the forward calls made."""

    init_acc: list[float] = field(default_factory=list)
    """Agreement of the input canvas with the model's argmax (free positions)."""
    final_acc: list[float] = field(default_factory=list)
    """Best agreement reached (the accepted canvas's)."""
    num_changes: list[int] = field(default_factory=list)
    """Positions that differ between the input and the output."""
    converged: list[bool] = field(default_factory=list)
    early_stopped: list[bool] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    nfe: int = 0


@torch.inference_mode()
def self_correct(model: torch.nn.Module, canvas: torch.Tensor, *, frozen_mask: torch.Tensor | None = None,
                 steps: int = 128, temperature: float = 0.1, tokens_per_step: int = 1, max_patience: int = 32,
                 early_stopping: bool = True, seed: int | None = None,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, SelfCorrectionStats]:
    """Refine ``canvas`` [B, C] (int64) in place of a copy; positions in ``frozen_mask`` [B, C] never change.

    ``early_stopping`` toggles both stop rules (as in the reference pipeline). Returns (canvas, stats).
    """
    vocab_size = model.config.vocab_size
    canvas = torch.as_tensor(canvas)
    if canvas.dim() == 1:
        canvas = canvas[None]
    if canvas.dim() != 2 or canvas.dtype.is_floating_point:
        raise InputError(f"canvas must be an integer [batch, length] tensor, got {tuple(canvas.shape)}")
    if canvas.numel() and (int(canvas.min()) < 0 or int(canvas.max()) >= vocab_size):
        raise InputError(f"canvas token ids must lie in [0, {vocab_size})")
    max_positions = model.config.max_position_embeddings
    if canvas.shape[1] > max_positions:
        raise InputError(f"canvas length {canvas.shape[1]} exceeds the model's max positions {max_positions}")
    if not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be an integer >= 1, got {steps!r}")
    if temperature < 0:
        raise InputError(f"temperature must be >= 0, got {temperature}")
    if not isinstance(tokens_per_step, int) or tokens_per_step < 1:
        raise InputError(f"tokens_per_step must be an integer >= 1, got {tokens_per_step!r}")
    if max_patience < 0:
        raise InputError(f"max_patience must be >= 0, got {max_patience}")
    device = model_device(model)
    z = canvas.to(device=device, dtype=torch.long).clone()
    batch = z.shape[0]
    frozen = torch.zeros_like(z, dtype=torch.bool) if frozen_mask is None else torch.as_tensor(frozen_mask).to(device)
    if frozen.shape != z.shape:
        raise InputError(f"frozen_mask shape {tuple(frozen.shape)} must equal the canvas shape {tuple(z.shape)}")
    free = ~frozen.bool()
    gen = make_generator(seed, generator, device)
    n_free = free.sum(1).clamp(min=1)
    stats = SelfCorrectionStats(init_acc=[0.0] * batch, final_acc=[0.0] * batch, num_changes=[0] * batch,
                                converged=[False] * batch, early_stopped=[False] * batch, steps=[0] * batch)
    best_acc = torch.full((batch,), -1.0, device=device)
    patience = torch.zeros(batch, dtype=torch.long, device=device)
    active = torch.ones(batch, dtype=torch.bool, device=device)
    k = min(tokens_per_step, z.shape[1])
    for step in range(steps):
        rows = active.nonzero().squeeze(-1)
        if rows.numel() == 0:
            break
        zr, free_r = z[rows], free[rows]
        logits = forward_logits(model, zr, vocab_size)
        stats.nfe += 1
        argmax = logits.argmax(-1)
        if temperature == 0:
            proposal = argmax
            prob = torch.ones_like(zr, dtype=torch.float32)
        else:
            scaled = logits / temperature
            proposal = gumbel_argmax(scaled, gen)
            prob = torch.exp(scaled.gather(-1, proposal[..., None]).squeeze(-1) - torch.logsumexp(scaled, -1))
        score = torch.where((proposal != zr) & free_r, prob, torch.zeros_like(prob))
        top = torch.topk(score, k, dim=-1)
        take = torch.zeros_like(free_r).scatter(1, top.indices, top.values > 0)
        z_new = torch.where(take, proposal, zr)
        acc = ((z_new == argmax) & free_r).sum(1) / n_free[rows]
        if step == 0:
            init = ((zr == argmax) & free_r).sum(1) / n_free[rows]
            for j, r in enumerate(rows.tolist()):
                stats.init_acc[r] = float(init[j])
        improved = acc > best_acc[rows]
        best_acc[rows] = torch.where(improved, acc, best_acc[rows])
        patience[rows] = torch.where(improved, torch.zeros_like(patience[rows]), patience[rows] + 1)
        out_of_patience = early_stopping & (patience[rows] > max_patience)
        converged = early_stopping & ~take.any(1)
        accept = ~out_of_patience & ~converged
        z[rows] = torch.where(accept[:, None], z_new, zr)
        for j, r in enumerate(rows.tolist()):
            stats.steps[r] = step + 1
            if bool(out_of_patience[j]):
                stats.early_stopped[r] = True
            elif bool(converged[j]):
                stats.converged[r] = True
        active[rows] = accept
    stats.final_acc = [max(0.0, float(a)) for a in best_acc]
    stats.num_changes = (z != canvas.to(device)).sum(1).tolist()
    return z, stats
