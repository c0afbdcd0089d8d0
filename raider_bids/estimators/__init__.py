"""Estimators: each maps magnitudes (N, n_echoes) to PDFF, R2*, S0 (see base.Estimator)."""

from __future__ import annotations

from ..errors import UsageError
from .base import Estimates, Estimator, ProgressCallback, ProgressCallbackFactory, TrainingSettings
from .dual_network import SelfSupervisedDual

ESTIMATORS: dict[str, type] = {SelfSupervisedDual.name: SelfSupervisedDual}
DEFAULT_METHOD = SelfSupervisedDual.name


def get_estimator(name: str, settings: TrainingSettings) -> Estimator:
    """The estimator registered under `name`."""
    if name not in ESTIMATORS:
        raise UsageError(f"unknown method {name!r}; choose one of {', '.join(sorted(ESTIMATORS))}")
    return ESTIMATORS[name](settings)


__all__ = ["ESTIMATORS", "DEFAULT_METHOD", "Estimates", "Estimator", "ProgressCallback", "ProgressCallbackFactory",
           "TrainingSettings", "get_estimator"]
