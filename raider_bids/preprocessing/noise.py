"""Automatic estimate of the noise level sigma (std of each complex channel).

Method ("model-residual"): a least-squares fit of the signal model on a sample of foreground voxels;
each voxel's residual sum of squares is sigma^2 times a chi-square with n_echoes - 3 degrees of
freedom, so sigma^2 = median(RSS) / median(chi2_{n-3}). Voxels whose fitted signal falls below
5 sigma at any echo are then dropped (the Rician floor biases them) and the estimate is repeated.
Uses only the echo dimension, so it works where the scanner zeroed the background and where
interpolation made the noise spatially correlated (both break background and spatial estimators).
"""

from __future__ import annotations

import numpy as np
from scipy import special

from ..errors import InputDataError
from ..physics.signal_model import Acquisition
from ..physics.solver import fit_voxels
from ..provenance import NoiseRecord

MIN_SNR_FOR_GAUSSIAN = 5.0


def estimate_sigma(signals: np.ndarray, acquisition: Acquisition, rng: np.random.Generator,
                   max_voxels: int = 20000) -> NoiseRecord:
    """Sigma from foreground magnitudes `signals` of shape (N, n_echoes)."""
    n_voxels, n_echoes = signals.shape
    dof = n_echoes - 3
    if dof < 1:
        raise InputDataError(f"{n_echoes} echoes leave no degrees of freedom to estimate the noise: "
                             "give --sigma")
    if n_voxels < 10:
        raise InputDataError(f"only {n_voxels} foreground voxels: too few to estimate the noise; give --sigma")
    if n_voxels > max_voxels:
        signals = signals[np.sort(rng.choice(n_voxels, max_voxels, replace=False))]
    fit = fit_voxels(signals, acquisition)
    chi2_median = special.chdtri(dof, 0.5)  # the chi-squared median
    sigma = float(np.sqrt(np.median(fit.loss) / chi2_median))
    used = fit.loss.size
    high_snr = fit.fitted.min(axis=1) >= MIN_SNR_FOR_GAUSSIAN * sigma
    if high_snr.sum() >= 100:
        sigma = float(np.sqrt(np.median(fit.loss[high_snr]) / chi2_median))
        used = int(high_snr.sum())
    # Relative to the signal: rounding noise alone must not pass for a noise level.
    if not np.isfinite(sigma) or sigma <= 1e-6 * float(np.median(signals)):
        raise InputDataError("the automatic noise estimate failed: the echoes fit the model exactly (constant "
                             "or noise-free images?); give --sigma")
    return NoiseRecord(sigma, "model-residual", used)
