"""Estimators: each maps a run's magnitudes (N, n_echoes) to PDFF, R2* and S0 (base.Estimator).

    base              the interface, the results, the choice by likelihood
    networks          the physics autoencoder stack and its one inference loop
    training          the one training loop (early stopping) and the one train/validation split
    self_supervised   ssl (the paper's dual networks) and single (the naive baseline)
    supervised        supervised (RAIDER: dual networks trained on simulated signals)
    conventional_fit  fit (MAGORINO: two-start Rician maximum likelihood)

Uses physics, config and the provenance schema; knows nothing of files, reports or workflows.
"""

from __future__ import annotations

import torch

from ..config import TrainingSettings
from ..errors import UsageError
from .base import Estimates, Estimator
from .conventional_fit import ConventionalFit
from .self_supervised import SelfSupervisedDual, SingleNetwork
from .supervised import SupervisedDual

ESTIMATORS: dict[str, type[Estimator]] = {cls.method.name: cls for cls in (SelfSupervisedDual, ConventionalFit,
                                                                           SingleNetwork, SupervisedDual)}


def get_estimator(name: str, training: TrainingSettings) -> Estimator:
    """The estimator registered under `name`; methods that train networks get `training`."""
    if name not in ESTIMATORS:
        raise UsageError(f"unknown method {name!r}; choose one of {', '.join(sorted(ESTIMATORS))}")
    cls = ESTIMATORS[name]
    return cls(training) if cls.method.networks else cls()


def resolve_device(name: str) -> torch.device:
    """--device: auto = cuda when available."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is visible (under Apptainer, pass --nv)")
    return torch.device(name)


__all__ = ["ESTIMATORS", "Estimates", "Estimator", "get_estimator", "resolve_device"]
