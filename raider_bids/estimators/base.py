"""What every estimator returns, and the registry that maps --method names to estimators."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np
import torch

from ..signal_model import Acquisition

ProgressCallback = Callable[[int, dict[str, float]], None]  # (epoch, validation loss per training network)
ProgressCallbackFactory = Callable[[str], ProgressCallback]  # run name -> callback


@dataclass
class Estimates:
    """Per-voxel results, each of shape (N,), in package units (fraction, 1/s, image units)."""

    pdff: np.ndarray
    r2star_s: np.ndarray
    s0: np.ndarray
    log_likelihood_ratio: np.ndarray | None  # log L(chosen) - log L(rejected) >= 0; None: one candidate
    chose_fat: np.ndarray  # bool: the estimate is on the fat-dominant side
    candidates: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # kind -> pdff, r2star_s, s0
    provenance: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, dict[str, Any]] = field(default_factory=dict)  # saved with torch.save


def choose_by_likelihood(water: dict[str, np.ndarray], fat: dict[str, np.ndarray]) -> Estimates:
    """Per voxel, the water or the fat candidate with the lower NLL. Candidates hold
    s0, pdff, r2star_s and nll, each of shape (N,)."""
    chose_fat = fat["nll"] < water["nll"]
    keys = ("pdff", "r2star_s", "s0")
    pick = {k: np.where(chose_fat, fat[k], water[k]) for k in keys}
    return Estimates(**pick, log_likelihood_ratio=np.abs(water["nll"] - fat["nll"]), chose_fat=chose_fat,
                     candidates={"water": {k: water[k] for k in keys}, "fat": {k: fat[k] for k in keys}})


@dataclass(frozen=True)
class TrainingSettings:
    """Options of the self-supervised training loop; the defaults are the paper's."""

    learning_rate: float = 1e-3
    batch_size: int = 128
    patience: int = 10
    max_epochs: int = 1000
    validation_fraction: float = 0.1
    # None: an epoch is one pass over the training voxels in shuffled mini-batches (the paper).
    # A number: an epoch is that many mini-batches drawn at random, so the work per epoch and the
    # number of steps no longer grow with the number of voxels.
    steps_per_epoch: int | None = None
    max_validation_voxels: int | None = None
    # With steps_per_epoch: anneal the learning rate along a half cosine to this fraction of it
    # over max_epochs x steps_per_epoch steps (None: constant, as in the paper).
    final_lr_fraction: float | None = None


# The paper's exact settings, and the fast default: larger random mini-batches with a higher
# learning rate annealed to 1% over a budget of 8000 steps, whatever the number of voxels (big
# data does not mean more steps, small data is not undertrained), validation on <= 20k voxels.
TRAINING_PRESETS = {
    "paper": TrainingSettings(),
    "fast": TrainingSettings(learning_rate=5e-3, batch_size=1024, patience=10, max_epochs=80,
                             steps_per_epoch=100, max_validation_voxels=20000, final_lr_fraction=0.01),
}
DEFAULT_TRAINING = "fast"


class Estimator(Protocol):
    name: str

    def fit(self, signals: np.ndarray, acquisition: Acquisition, sigma: float, *, seed: int,
            device: torch.device, progress: ProgressCallback | None = None) -> Estimates:
        """Estimate from magnitudes `signals` of shape (N, n_echoes) with noise level `sigma`."""
        ...
