"""Noisy magnitudes with known truth, for the demo, the in silico experiment, the supervised
networks' training set and the tests."""

from __future__ import annotations

import numpy as np

from .signal_model import Acquisition, magnitude_signal


def simulate_magnitude(acquisition: Acquisition, s0: np.ndarray, pdff: np.ndarray, r2star_s: np.ndarray,
                       sigma: float | np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Noisy magnitudes (N, n_echoes) of parameters (N,): complex Gaussian noise of std `sigma`
    (image units; one value, or one per signal (N,)) in each channel.

    The noise-free complex signal's phase is irrelevant to the magnitude's distribution, so it is
    placed on the real axis.
    """
    clean = magnitude_signal(acquisition, s0, pdff, r2star_s)
    noise = rng.standard_normal(clean.shape + (2,)) * np.reshape(sigma, (-1, 1, 1))
    return np.hypot(clean + noise[..., 0], noise[..., 1])
