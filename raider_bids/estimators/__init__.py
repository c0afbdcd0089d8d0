"""Estimators: each maps magnitudes (N, n_echoes) to PDFF, R2*, S0 (see base.Estimator)."""

from __future__ import annotations

from ..errors import UsageError
from .base import (DEFAULT_TRAINING, TRAINING_PRESETS, Estimates, Estimator, ProgressCallback,
                   ProgressCallbackFactory, TrainingSettings)
from .conventional_fit import ConventionalFit
from .dual_network import SelfSupervisedDual, SingleNetwork
from .supervised import SupervisedDual

ESTIMATORS: dict[str, type] = {cls.name: cls for cls in (SelfSupervisedDual, ConventionalFit, SingleNetwork,
                                                     SupervisedDual)}
DEFAULT_METHOD = SelfSupervisedDual.name


def get_estimator(name: str, settings: TrainingSettings) -> Estimator:
    """The estimator registered under `name`."""
    if name not in ESTIMATORS:
        raise UsageError(f"unknown method {name!r}; choose one of {', '.join(sorted(ESTIMATORS))}")
    return ESTIMATORS[name](settings)


__all__ = ["ESTIMATORS", "DEFAULT_METHOD", "DEFAULT_TRAINING", "TRAINING_PRESETS", "Estimates", "Estimator", "ProgressCallback", "ProgressCallbackFactory",
           "TrainingSettings", "get_estimator"]
