"""The conventional magnitude fit the paper compares against (MAGORINO-style, method.md Sec. 4):
per voxel, a Rician maximum-likelihood fit from a water-dominant and from a fat-dominant start,
the better kept."""

from __future__ import annotations

import numpy as np
import torch

from ..config import METHODS
from ..physics.parameters import PDFF_RANGES, R2STAR, S0
from ..physics.solver import (COARSE_PDFF_POINTS, COARSE_R2STAR_POINTS, GRID_PDFF_POINTS, GRID_R2STAR_POINTS,
                              LM_ITERATIONS, R2STAR_GRID_MAX_S, RICIAN_SNR, fit_voxels)
from .base import Estimates, Estimator, ProgressCallback, choose_by_likelihood

OPTIMISER = (f"per PDFF range, starts from a grid over PDFF and R2* (0-{R2STAR_GRID_MAX_S:g} 1/s, S0 "
             f"profiled): for voxels with an echo under {RICIAN_SNR:g} sigma, the best of a "
             f"{GRID_PDFF_POINTS} x {GRID_R2STAR_POINTS} grid and of its row at PDFF 0.58 by the Rician "
             f"likelihood; for the others, the same from a {COARSE_PDFF_POINTS} x {COARSE_R2STAR_POINTS} "
             "grid by least squares, the row's start dropped where it cannot end better; then up to "
             f"{LM_ITERATIONS} bounded Levenberg-Marquardt steps each, the better kept")


class ConventionalFit(Estimator):
    """Two-start Rician ML fit. Each start keeps PDFF on its side of 0.58, so the two answers are
    the two local maxima of the degenerate likelihood and their difference is a confidence map
    comparable with the networks'. Nothing is trained, so it takes no settings."""

    method = METHODS["fit"]

    def fit(self, signals: np.ndarray, acquisition, sigma: float, *, seed: int, device: torch.device,
            progress: ProgressCallback | None = None) -> Estimates:
        candidates = []
        for kind in ("water", "fat"):
            result = fit_voxels(signals, acquisition, PDFF_RANGES[kind], sigma=sigma, device=device)
            candidates.append({"s0": result.s0, "pdff": result.pdff, "r2star_s": result.r2star_s,
                               "nll": result.loss})
        estimates = choose_by_likelihood(*candidates)
        estimates.details = {"Optimiser": OPTIMISER,
                             "Bounds": {"S0": list(S0.bounds), "R2starPerSecond": list(R2STAR.bounds)}}
        return estimates
