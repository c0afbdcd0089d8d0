"""The one interface of every estimator, what it returns, and the per-voxel choice between a
water- and a fat-dominant candidate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..config import Method, TrainingSettings
from ..physics.parameters import PARAMETERS
from ..physics.signal_model import Acquisition
from ..provenance import NetworkRecord

ProgressCallback = Callable[[int, dict[str, float]], None]  # (epoch, validation loss per training network)
ProgressCallbackFactory = Callable[[str], ProgressCallback]  # run name -> callback


@dataclass
class Estimates:
    """Per-voxel results, each of shape (N,), in package units (fraction, 1/s, image units), and
    how they were made (the workflow records it in the provenance's EstimationRecord)."""

    pdff: np.ndarray
    r2star_s: np.ndarray
    s0: np.ndarray
    log_likelihood_ratio: np.ndarray | None  # log L(chosen) - log L(rejected) >= 0; None: one candidate
    chose_fat: np.ndarray  # bool: the estimate is on the fat-dominant side
    candidates: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # kind -> pdff, r2star_s, s0
    weights: dict[str, dict[str, Any]] = field(default_factory=dict)  # network -> what torch.save writes
    training: TrainingSettings | None = None  # None: nothing was trained
    networks: list[NetworkRecord] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # what only this method has to say


def choose_by_likelihood(water: dict[str, np.ndarray], fat: dict[str, np.ndarray]) -> Estimates:
    """Per voxel, the water or the fat candidate with the lower NLL. Candidates hold
    s0, pdff, r2star_s and nll, each of shape (N,)."""
    chose_fat = fat["nll"] < water["nll"]
    keys = [p.key for p in PARAMETERS]
    pick = {k: np.where(chose_fat, fat[k], water[k]) for k in keys}
    return Estimates(**pick, log_likelihood_ratio=np.abs(water["nll"] - fat["nll"]), chose_fat=chose_fat,
                     candidates={"water": {k: water[k] for k in keys}, "fat": {k: fat[k] for k in keys}})


class Estimator:
    """Maps magnitudes to PDFF, R2* and S0. A method that trains networks is built with its
    TrainingSettings (`Estimator(training)`), the others without arguments."""

    method: Method  # its entry in config.METHODS

    @property
    def name(self) -> str:
        return self.method.name

    def fit(self, signals: np.ndarray, acquisition: Acquisition, sigma: float, *, seed: int,
            device: torch.device, progress: ProgressCallback | None = None) -> Estimates:
        """Estimate from magnitudes `signals` of shape (N, n_echoes) with noise level `sigma`
        (image units)."""
        raise NotImplementedError
