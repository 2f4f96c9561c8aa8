"""Per-sample noise for training and evaluation: each row's (t, z) comes from its own keyed random stream.

Row ``j`` of global micro-batch ``(step, micro)`` is noised with a generator seeded by
``stream_seed(seed, step, micro, j)`` (:func:`sumi.data.streams.stream_seed`), so a rank draws the noise of its
own rows only, and a row's noise is the same whichever rank holds it and however many ranks there are. Nothing
is carried from step to step, so resuming at step k needs no generator state.
"""

from __future__ import annotations

import torch

from sumi.data.streams import stream_seed
from sumi.diffusion import MixingDistribution, TimeSampler, alpha_from_time


def noise_rows(x: torch.Tensor, keys: list[tuple[int, ...]], time_sampler: TimeSampler,
               mixing: MixingDistribution) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, t) for clean canvases ``x`` [B, S] (int64, CPU), row ``i`` drawn from the stream of ``keys[i]``.

    Returns z [B, S] int64 and t [B, S] fp32, both on CPU.
    """
    if len(keys) != x.shape[0]:
        raise ValueError(f"{len(keys)} stream keys for {x.shape[0]} rows")
    z_rows, t_rows = [], []
    for row, key in zip(x, keys):
        generator = torch.Generator().manual_seed(stream_seed(*key))
        t = time_sampler.sample(1, x.shape[1], generator=generator)
        z_rows.append(mixing.sample_zt(row[None], alpha_from_time(t), generator=generator))
        t_rows.append(t)
    return torch.cat(z_rows), torch.cat(t_rows)
