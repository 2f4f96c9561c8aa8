"""Pretraining: typed run config, the trainer (UDLM or AR baseline), parallelism, DCP checkpoints, metrics.

Entry points: :func:`resolve_run_config` (defaults < preset < YAML < ``key=value`` overrides) and
:func:`train` / :class:`Trainer`. The CLI is ``sumi train --config recipe.yaml [key.sub=value ...]``.
"""

from sumi.train.config import (
    CheckpointSection,
    DataSection,
    ModelSection,
    NoiseSection,
    OptimizerSection,
    RunConfig,
    ScheduleSection,
    TrainingSection,
    resolve_run_config,
)
from sumi.train.trainer import Trainer, TrainingDivergedError, TrainResult, train

__all__ = [
    "CheckpointSection", "DataSection", "ModelSection", "NoiseSection", "OptimizerSection", "RunConfig",
    "ScheduleSection", "TrainingSection", "resolve_run_config", "Trainer", "TrainingDivergedError", "TrainResult",
    "train",
]
