"""Every plot sumi writes names its axes (with units) and has a legend."""

from __future__ import annotations

import json

import numpy as np
import pytest

import sumi.eval.plots as plots


@pytest.fixture
def figures(monkeypatch):
    saved = []
    real_save = plots._save

    def capture(fig, path):
        saved.append(fig)
        return real_save(fig, path)

    monkeypatch.setattr(plots, "_save", capture)
    return saved


def _check(fig):
    axes = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    main = [ax for ax in axes if ax.get_xlabel()]
    assert main, "no axis has an x label"
    for ax in main:
        assert ax.get_ylabel(), ax.get_title()
        assert ax.get_legend() is not None and ax.get_legend().get_texts(), ax.get_title()
    labels = " ".join(ax.get_ylabel() + ax.get_xlabel() for ax in axes)
    return labels


def test_probe_and_training_plots_are_labelled(figures, tmp_path):
    from sumi.train.metrics import plot_loss_curve

    records = [{"nelbo": 5.0 - i, "nelbo_stderr": 0.1, "wall_s": 1.0 + i, "steps": 2 ** (i + 3)} for i in range(3)]
    plots.sweep_plot(records, "steps", "denoising steps", tmp_path / "a.png")
    plots.commit_order_plot(np.eye(6, dtype=bool), 3, tmp_path / "b.png", budget=4)
    plots.flips_plot(np.array([0, 2, 1, 3]), 3, tmp_path / "c.png")
    plots.entropy_plot([3.0, 2.0, 1.0], [0.2, 0.5, 0.9], [4, 2, 1], tmp_path / "d.png")
    plots.frequency_plot([5, 3, 1], [2, 1], tmp_path / "e.png")
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "tokens": 64 * s, "loss": 1.0 / s, "elbo": 5.0 / s}) + "\n"
                               for s in range(1, 6)) + json.dumps({"step": 5, "tokens": 320, "heldout_nelbo": 2.0}))
    assert plot_loss_curve(metrics, tmp_path / "loss.png").stat().st_size > 0
    assert len(figures) == 6
    units = [_check(fig) for fig in figures]
    assert "(nats/token)" in units[0] and "(s)" in units[0] and "(nats/token)" in units[-1]
