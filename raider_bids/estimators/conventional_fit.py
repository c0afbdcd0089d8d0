"""The conventional magnitude fit the paper compares against (MAGORINO-style, method.md Sec. 4):
per voxel, a Rician maximum-likelihood fit from a water-dominant and from a fat-dominant start,
the better kept."""

from __future__ import annotations

import numpy as np
import torch

from ..transforms import PDFF_RANGES
from .base import Estimates, ProgressCallback, TrainingSettings, choose_by_likelihood
from .model_fitting import (COARSE_PDFF_POINTS, COARSE_R2STAR_POINTS, GRID_PDFF_POINTS, GRID_R2STAR_POINTS,
                            LM_ITERATIONS, R2STAR_GRID_MAX_S, R2STAR_MAX_S, RICIAN_SNR, fit_voxels)


class ConventionalFit:
    """Two-start Rician ML fit. Each start keeps PDFF on its side of 0.58, so the two answers are
    the two local maxima of the degenerate likelihood and their difference is a confidence map
    comparable with the networks'."""

    name = "fit"
    description = ("conventional voxel-wise Rician maximum-likelihood fit from a water-dominant "
                   "(PDFF <= 0.58) and a fat-dominant (PDFF >= 0.58) start, the higher likelihood kept")
    reference = ("Bray TJP, Bainbridge A, Lim E, Hall-Craggs MA, Zhang H. MAGORINO: Magnitude-only fat "
                 "fraction and R2* estimation with Rician noise modeling. Magn Reson Med 2023;89:1173-1192.")

    def __init__(self, settings: TrainingSettings = TrainingSettings()):
        self.settings = settings  # unused: nothing is trained

    def fit(self, signals: np.ndarray, acquisition, sigma: float, *, seed: int, device: torch.device,
            progress: ProgressCallback | None = None) -> Estimates:
        candidates = []
        for kind in ("water", "fat"):
            result = fit_voxels(signals, acquisition, PDFF_RANGES[kind], sigma=sigma, device=device)
            candidates.append({"s0": result.s0, "pdff": result.pdff, "r2star_s": result.r2star_s,
                               "nll": result.loss})
        estimates = choose_by_likelihood(*candidates)
        estimates.provenance = {
            "Method": self.name, "Description": self.description,
            "Optimiser": (f"per PDFF range, starts from a grid over PDFF and R2* (0-{R2STAR_GRID_MAX_S:g} 1/s, S0 "
                          f"profiled): for voxels with an echo under {RICIAN_SNR:g} sigma, the best of a "
                          f"{GRID_PDFF_POINTS} x {GRID_R2STAR_POINTS} grid and of its row at PDFF 0.58 by the Rician "
                          f"likelihood; for the others, the same from a {COARSE_PDFF_POINTS} x {COARSE_R2STAR_POINTS} "
                          "grid by least squares, the row's start dropped where it cannot end better; then up to "
                          f"{LM_ITERATIONS} bounded Levenberg-Marquardt steps each, the better kept"),
            "Bounds": {"S0": [0, None], "R2starPerSecond": [0, R2STAR_MAX_S]},
            "ShareChoosingFat": float(estimates.chose_fat.mean()),
            "ShareChoosingWater": float(1 - estimates.chose_fat.mean()),
        }
        return estimates
