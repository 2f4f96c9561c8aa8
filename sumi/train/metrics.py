"""Training metrics: a JSONL log (one record per line), optional TensorBoard / W&B mirrors, a loss-curve PNG.

Records carry ``step`` (1-based count of optimizer steps done) plus scalars: ``loss``, ``elbo`` (nats/token,
the NELBO integrand for the UDLM or the exact NLL for the AR baseline), ``kl``, ``is``, ``z_loss``, ``lr``,
``grad_norm``, ``tokens`` (seen so far), ``tokens_per_s``; evaluation records carry ``heldout_nelbo``.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from sumi._io import atomic_write_text

logger = logging.getLogger(__name__)

LOGGERS = ("tensorboard", "wandb")
"""Optional metrics sinks (``training.loggers``); each needs its package (``pip install tensorboard`` / ``wandb``)."""

TIMING_KEYS = ("tokens_per_s", "elapsed_s")
"""Fields that depend on wall time (excluded when comparing two runs)."""


class MetricsLogger:
    """Append-only JSONL at ``path`` (rank 0 only), mirrored to the requested ``loggers``.

    Args:
        loggers: names from :data:`LOGGERS`; a sink whose package is missing is skipped with a warning that
            says what to install (the JSONL log is always written).
        run_config: a dict stored with the W&B run.
        wandb_project: W&B project name.
    """

    def __init__(self, path: str | Path, *, enabled: bool = True, resume_step: int | None = None,
                 loggers: list[str] | tuple[str, ...] = (), run_config: dict | None = None,
                 wandb_project: str = "sumi") -> None:
        self.path = Path(path)
        self.enabled = enabled
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.is_file():
            # Drop records written after the checkpoint we resume from, so the log reads like one run.
            kept = [json.dumps(r) for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            atomic_write_text(self.path, "".join(line + "\n" for line in kept))
        elif resume_step is None:
            atomic_write_text(self.path, "")
        if "tensorboard" in loggers:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.warning("training.loggers asks for tensorboard but the package is not installed "
                               "(pip install tensorboard); logging to %s only", self.path)
            else:
                self._tb = SummaryWriter(log_dir=str(self.path.parent / "tensorboard"))
        if "wandb" in loggers:
            try:
                import wandb
            except ImportError:
                logger.warning("training.loggers asks for wandb but the package is not installed "
                               "(pip install wandb); logging to %s only", self.path)
            else:
                self._wandb = wandb.init(project=wandb_project, dir=str(self.path.parent), config=run_config,
                                         resume="allow" if resume_step is not None else None)

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: (float(v) if isinstance(v, float) else v) for k, v in record.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(clean) + "\n")
        scalars = {k: v for k, v in record.items()
                   if k != "step" and isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}
        step = int(record.get("step", 0))
        if self._tb is not None:
            for key, value in scalars.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(scalars, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file; damaged lines (a half-written last line after a crash, bytes that
    are not UTF-8 JSON) are dropped with a warning."""
    records, dropped = [], 0
    for line in Path(path).read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            records.append(record)
        else:
            dropped += 1
    if dropped:
        logger.warning("%s: dropped %d damaged line(s) (e.g. a record cut short by a crash)", path, dropped)
    return records


def _ema(values: list[float], decay: float = 0.9) -> list[float]:
    out, state = [], None
    for v in values:
        state = v if state is None else decay * state + (1 - decay) * v
        out.append(state)
    return out


def plot_loss_curve(metrics_path: str | Path, out_path: str | Path) -> Path | None:
    """Two panels against tokens seen: the training loss, and the NELBO (nats/token: the training batches'
    ``elbo`` estimate, EMA-smoothed, and the held-out evaluations). Returns None without records."""
    records = read_metrics(metrics_path)
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "heldout_nelbo" in r]
    if not train:
        return None
    from sumi.eval.plots import _figure, _save

    tokens = [r["tokens"] for r in train]
    fig = _figure(10.0, 3.8)
    ax_loss, ax_elbo = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ax_loss.plot(tokens, [r["loss"] for r in train], lw=0.8, alpha=0.4, color="C0", label="train loss (per step)")
    ax_loss.plot(tokens, _ema([r["loss"] for r in train]), lw=1.5, color="C0", label="train loss (EMA)")
    ax_loss.set_title("training loss")
    ax_loss.set_ylabel("loss (nats/token, incl. z-loss)")
    ax_elbo.plot(tokens, _ema([r["elbo"] for r in train]), lw=1.2, color="C1",
                 label="train batches (EMA; incl. per-token t)")
    if evals:
        ax_elbo.plot([r["tokens"] for r in evals], [r["heldout_nelbo"] for r in evals], "o-", ms=4, color="C3",
                     label="held-out")
    ax_elbo.set_title("NELBO / NLL")
    ax_elbo.set_ylabel("NELBO / NLL (nats/token)")
    for ax in (ax_loss, ax_elbo):
        ax.set_xlabel("tokens seen (tokens)")
        ax.grid(alpha=0.3)
        ax.legend()
    out_path = Path(out_path)
    _save(fig, out_path)
    return out_path
