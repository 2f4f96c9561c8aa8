"""The run folder of ``sumi train``: one trainer at a time, and never a silent restart over an earlier run.

- :class:`RunLock` holds an exclusive ``fcntl.flock`` on ``<output_dir>/.lock`` for the whole run (rank 0), so a
  second trainer pointed at the same folder stops at once with one line naming the holder's pid. The kernel
  drops the lock when the holder dies (even by SIGKILL), so a stale lock file never blocks a new run.
- :func:`claim_run_dir` refuses to start a fresh run where an earlier one left metrics, checkpoints or an
  export: that run is continued with ``--resume``, or moved aside whole with ``--overwrite`` (never deleted).
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path

from sumi.errors import ConfigError

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"
RUN_ARTIFACTS = ("metrics.jsonl", "checkpoints", "model", "loss.png", "config.yaml", "tensorboard")
"""What a run writes into its folder; ``--overwrite`` moves exactly these aside (shards, tokenizers stay)."""


class RunLock:
    """An exclusive lock on a run folder, held until :meth:`release` (or process exit)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / LOCK_FILE
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 64, 0).decode("ascii", "replace").strip() or "?"
            os.close(self._fd)
            self._fd = None
            raise ConfigError(f"another sumi train (pid {holder}) is using the run folder {self.run_dir}; wait for "
                              "it to finish or choose another training.output_dir") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def earlier_run(run_dir: str | Path) -> list[str]:
    """The artifacts of an earlier run in ``run_dir`` that a fresh run would overwrite (empty if none)."""
    run_dir = Path(run_dir)
    found = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file() and metrics.stat().st_size > 0:
        found.append("metrics.jsonl")
    checkpoints = run_dir / "checkpoints"
    if checkpoints.is_dir() and any(p.name.startswith("step-") for p in checkpoints.iterdir()):
        found.append("checkpoints/")
    if (run_dir / "model").exists():
        found.append("model/")
    return found


def check_run_dir(run_dir: str | Path, *, resume: bool, overwrite: bool) -> None:
    """Raise ConfigError when a fresh run would overwrite an earlier one (cheap; takes no lock)."""
    if resume or overwrite:
        return
    found = earlier_run(run_dir)
    if found:
        raise ConfigError(f"the run folder {run_dir} already holds a run ({', '.join(found)}); continue it with "
                          "--resume, move it aside with --overwrite, or choose another training.output_dir")


def move_run_aside(run_dir: str | Path) -> Path | None:
    """Move the earlier run's artifacts into a new sibling folder ``<run_dir>.old-<time>``; returns it."""
    run_dir = Path(run_dir)
    present = [name for name in RUN_ARTIFACTS if (run_dir / name).exists()]
    if not present:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = run_dir.with_name(f"{run_dir.name}.old-{stamp}")
    suffix = 0
    while aside.exists():
        suffix += 1
        aside = run_dir.with_name(f"{run_dir.name}.old-{stamp}-{suffix}")
    aside.mkdir()
    for name in present:
        os.replace(run_dir / name, aside / name)
    logger.warning("moved the earlier run in %s aside to %s", run_dir, aside)
    return aside


def claim_run_dir(run_dir: str | Path, *, resume: bool, overwrite: bool) -> RunLock:
    """Lock ``run_dir``, then refuse (or with ``overwrite`` move aside) an earlier run unless resuming."""
    lock = RunLock(run_dir)
    try:
        if overwrite and not resume:
            move_run_aside(run_dir)
        check_run_dir(run_dir, resume=resume, overwrite=False)
    except BaseException:
        lock.release()
        raise
    return lock
