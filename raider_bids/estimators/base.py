"""The one interface of every estimator, what it returns, and the per-voxel choice between a
water- and a fat-dominant candidate."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np
import torch

from ..config import Method, TrainingSettings
from ..physics.parameters import PARAMETERS
from ..physics.signal_model import Acquisition
from ..provenance import NetworkRecord, TrainingProgress


ProgressCallback = Callable[[TrainingProgress], None]
ProgressCallbackFactory = Callable[[str], ProgressCallback]  # run name -> callback


@dataclass
class Estimates:
    """Per-voxel results, each of shape (N,), in package units (fraction, 1/s, image units), and
    how they were made (the workflow records it in the provenance's EstimationRecord)."""

    pdff: np.ndarray
    r2star_s: np.ndarray
    s0: np.ndarray
    # log L(chosen) - log L(rejected): >= 0 for the per-voxel choice, < 0 where a spatial choice
    # followed the neighbours against the voxel's data; None: one candidate.
    log_likelihood_ratio: np.ndarray | None
    chose_fat: np.ndarray  # bool: the estimate is on the fat-dominant side
    candidates: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # kind -> pdff, r2star_s, s0, nll
    weights: dict[str, dict[str, Any]] = field(default_factory=dict)  # network -> what torch.save writes
    training: TrainingSettings | None = None  # None: nothing was trained
    networks: list[NetworkRecord] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # what only this method has to say


    def with_sides(self, chose_fat: np.ndarray) -> Estimates:
        """The same estimates with each voxel's side chosen by `chose_fat` (bool (N,)) instead."""
        water, fat = self.candidates["water"], self.candidates["fat"]
        return replace(choose(water, fat, chose_fat), weights=self.weights, training=self.training,
                       networks=self.networks, details=self.details)


def choose(water: dict[str, np.ndarray], fat: dict[str, np.ndarray], chose_fat: np.ndarray) -> Estimates:
    """Per voxel the fat candidate where `chose_fat`, else the water one. Candidates hold s0, pdff,
    r2star_s and nll, each of shape (N,)."""
    keys = [p.key for p in PARAMETERS]
    pick = {k: np.where(chose_fat, fat[k], water[k]) for k in keys}
    llr = np.where(chose_fat, water["nll"] - fat["nll"], fat["nll"] - water["nll"])
    kept = keys + ["nll"]
    return Estimates(**pick, log_likelihood_ratio=llr, chose_fat=chose_fat,
                     candidates={"water": {k: water[k] for k in kept}, "fat": {k: fat[k] for k in kept}})


def choose_by_likelihood(water: dict[str, np.ndarray], fat: dict[str, np.ndarray]) -> Estimates:
    """Per voxel, the water or the fat candidate with the lower NLL (the paper's choice)."""
    return choose(water, fat, fat["nll"] < water["nll"])


class Estimator:
    """Maps magnitudes to PDFF, R2* and S0. A method that trains networks is built with its
    TrainingSettings (`Estimator(training)`), the others without arguments."""

    method: Method  # its entry in config.METHODS

    @property
    def name(self) -> str:
        return self.method.name

    def _progress(self, progress: ProgressCallback | None) -> ProgressCallback | None:
        """`progress`, told this method's name with every TrainingProgress."""
        if progress is None:
            return None
        return lambda state: progress(replace(state, method=self.name))

    def fit(self, signals: np.ndarray, acquisition: Acquisition, sigma: float, *, seed: int,
            device: torch.device, progress: ProgressCallback | None = None) -> Estimates:
        """Estimate from magnitudes `signals` of shape (N, n_echoes) with noise level `sigma`
        (image units)."""
        raise NotImplementedError
