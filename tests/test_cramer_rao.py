"""Cramer-Rao bounds: the Rician information factor against Monte Carlo (the score from SciPy's
Rice log-density, differentiated numerically), an independent quadrature and its limits; the bounds
against the Fisher matrix built from finite differences of the model; and against the spread of the
Rician maximum-likelihood fit over simulated noise, where that estimator is efficient."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, special, stats

from raider_bids import resources
from raider_bids.physics.cramer_rao import (PDFF_SD_MAX, R2STAR_SD_MAX_S, cramer_rao_sd,
                                            rician_information_factor)
from raider_bids.physics.fat_spectrum import PRESETS
from raider_bids.physics.parameters import PDFF_BOUNDARY, PDFF_RANGES, R2STAR_MAX_S
from raider_bids.physics.signal_model import Acquisition, magnitude_signal
from raider_bids.physics.simulation import simulate_magnitude
from raider_bids.physics.solver import fit_voxels

# The paper's in vivo protocol: 3 T, 6 echoes, TE1 = dTE = 1.15 ms.
PROTOCOL = Acquisition(tuple(1.15e-3 * k for k in range(1, 7)), 3.0, PRESETS["hernando"])


def _rice_score(x: np.ndarray, a: float, h: float = 1e-5) -> np.ndarray:
    """d/da log p(x | a) for x ~ Rice(a, 1), by central differences of SciPy's log-density."""
    return (stats.rice.logpdf(x, a + h) - stats.rice.logpdf(x, a - h)) / (2 * h)


# --- 1. the information factor f(a) ----------------------------------------------------------

@pytest.mark.parametrize("a", [0.5, 1.0, 2.0, 5.0, 20.0])
def test_information_factor_is_the_score_variance(a):
    """f(a) = E[score^2] over Rician draws; the score's mean is 0 (a check of the draws)."""
    rng = np.random.default_rng(int(a * 10))
    n = 400_000
    x = np.hypot(a + rng.standard_normal(n), rng.standard_normal(n))
    score = _rice_score(x, a)
    assert abs(score.mean()) < 4 * score.std() / math.sqrt(n)
    squared = score * score
    assert float(rician_information_factor(a)) == pytest.approx(squared.mean(), abs=4 * squared.std() / math.sqrt(n))


@pytest.mark.parametrize("a", [0.01, 0.3, 0.9, 1.7, 3.3, 6.0, 11.0, 17.5, 25.0, 39.99, 40.0, 45.0, 70.0])
def test_information_factor_matches_adaptive_quadrature(a):
    """Against scipy.integrate.quad of (d log p / da)^2 p with SciPy's Rice density: relative 1e-5."""
    def integrand(x):
        score = x * special.i1e(a * x) / special.i0e(a * x) - a  # d/da of -a^2/2 + log I0(a x)
        return stats.rice.pdf(x, a) * score * score

    expected = integrate.quad(integrand, max(0.0, a - 15.0), a + 15.0, epsabs=0, epsrel=1e-12, limit=200)[0]
    assert float(rician_information_factor(a)) == pytest.approx(expected, rel=1e-5)


def test_information_factor_limits():
    """0 at a = 0 and ~a^2 there (no signal, no information); 1 - 1/(2 a^2) at high SNR (the
    score's expansion in 1/a), where the noise is Gaussian; even, in 0..1, increasing."""
    assert rician_information_factor(0.0) == 0.0
    small = np.array([1e-4, 1e-3, 1e-2])
    np.testing.assert_allclose(rician_information_factor(small) / small**2, 1.0, rtol=2e-4)
    large = np.array([30.0, 100.0, 1e3, 1e5])
    np.testing.assert_allclose((1 - rician_information_factor(large)) * 2 * large**2, 1.0, rtol=2e-3)
    assert rician_information_factor(np.inf) == 1.0
    grid = np.linspace(0, 60, 6001)
    f = rician_information_factor(grid)
    assert np.all(np.diff(f) > 0) and f[0] >= 0 and f[-1] < 1
    np.testing.assert_array_equal(rician_information_factor(-grid), f)
    assert rician_information_factor(np.ones((2, 3))).shape == (2, 3)


# --- 2. the bounds against the Fisher matrix of a numerical Jacobian ---------------------------

def _numeric_jacobian(acquisition, s0, pdff, r2star):
    """dA/d(S0, PDFF, R2*) by central differences of magnitude_signal: (N, E, 3)."""
    theta = np.stack([s0, pdff, r2star], axis=1).astype(np.float64)
    steps = np.array([1e-6, 1e-6, 1e-5]) * np.maximum(np.abs(theta), 1.0)
    columns = []
    for i in range(3):
        up, down = theta.copy(), theta.copy()
        up[:, i] += steps[:, i]
        down[:, i] -= steps[:, i]
        difference = magnitude_signal(acquisition, *up.T) - magnitude_signal(acquisition, *down.T)
        columns.append(difference / (2 * steps[:, i, None]))
    return np.stack(columns, axis=-1)


def _bounds(jacobian, weights):
    """sqrt(diag(F^-1)) for PDFF and R2*, F = J' diag(weights) J, by np.linalg.inv."""
    fisher = np.einsum("nei,ne,nej->nij", jacobian, weights, jacobian)
    variance = np.diagonal(np.linalg.inv(fisher), axis1=1, axis2=2)
    return np.sqrt(variance[:, 1]), np.sqrt(variance[:, 2])


PDFF_CASES = np.array([0.02, 0.15, 0.3, 0.45, 0.58, 0.7, 0.85, 0.98])
R2STAR_CASES = np.array([20.0, 60.0, 150.0, 400.0, 40.0, 250.0, 100.0, 30.0])


def test_gaussian_limit_is_the_least_squares_bound():
    """At high SNR f = 1, so F = J'J / sigma^2 with J from finite differences."""
    s0, sigma = np.full(8, 1e5), 2.0
    expected_pdff, expected_r2 = _bounds(_numeric_jacobian(PROTOCOL, s0, PDFF_CASES, R2STAR_CASES),
                                         np.full((8, 6), sigma**-2))
    got = cramer_rao_sd(PROTOCOL, s0, PDFF_CASES, R2STAR_CASES, sigma)
    np.testing.assert_allclose(got["pdff"], expected_pdff, rtol=1e-5)
    np.testing.assert_allclose(got["r2star_s"], expected_r2, rtol=1e-5)


def test_low_snr_bound_weights_each_echo_by_its_information():
    """S0 / sigma = 15 with late echoes near the noise floor: F = J' diag(f(A / sigma) / sigma^2) J;
    the weights change the bounds by well over the tolerance."""
    s0, sigma = np.full(8, 45.0), 3.0
    jacobian = _numeric_jacobian(PROTOCOL, s0, PDFF_CASES, R2STAR_CASES)
    amplitude = magnitude_signal(PROTOCOL, s0, PDFF_CASES, R2STAR_CASES)
    expected_pdff, expected_r2 = _bounds(jacobian, rician_information_factor(amplitude / sigma) / sigma**2)
    got = cramer_rao_sd(PROTOCOL, s0, PDFF_CASES, R2STAR_CASES, sigma)
    np.testing.assert_allclose(got["pdff"], expected_pdff, rtol=1e-6)
    np.testing.assert_allclose(got["r2star_s"], expected_r2, rtol=1e-6)
    gaussian_r2 = _bounds(jacobian, np.full((8, 6), sigma**-2))[1]
    assert np.max(got["r2star_s"] / gaussian_r2) > 1.05


def test_bound_scales_with_noise_at_high_snr():
    low, high = (cramer_rao_sd(PROTOCOL, 1e5, 0.3, 60.0, sigma) for sigma in (1.0, 3.0))
    assert high["pdff"][0] == pytest.approx(3 * low["pdff"][0], rel=1e-6)
    assert high["r2star_s"][0] == pytest.approx(3 * low["r2star_s"][0], rel=1e-6)


def test_undetermined_voxels_are_reported_at_the_caps():
    """S0 = 0, a non-finite parameter, or too few echoes for three parameters: finite caps, not NaN."""
    got = cramer_rao_sd(PROTOCOL, [0.0, np.nan, 100.0, 100.0, 1e-3], [0.2, 0.2, np.inf, 0.2, 0.2],
                        [50.0, 50.0, 50.0, 50.0, 50.0], 1.0)
    np.testing.assert_array_equal(got["pdff"], [PDFF_SD_MAX, PDFF_SD_MAX, PDFF_SD_MAX, got["pdff"][3], PDFF_SD_MAX])
    np.testing.assert_array_equal(got["r2star_s"][[0, 1, 2, 4]], R2STAR_SD_MAX_S)
    assert got["pdff"][3] < 0.05 and got["r2star_s"][3] < 10
    assert PDFF_SD_MAX == 1.0 and R2STAR_SD_MAX_S == R2STAR_MAX_S
    two_echoes = Acquisition(PROTOCOL.echo_times_s[:2], 3.0, PRESETS["hernando"])
    got = cramer_rao_sd(two_echoes, [100.0, 1e4], [0.2, 0.9], [50.0, 50.0], 1.0)
    np.testing.assert_array_equal(got["pdff"], PDFF_SD_MAX)
    np.testing.assert_array_equal(got["r2star_s"], R2STAR_SD_MAX_S)
    with pytest.raises(ValueError):
        cramer_rao_sd(PROTOCOL, [1.0], [0.2], [50.0], 0.0)


def test_any_input_gives_finite_maps_independent_of_chunking():
    rng = np.random.default_rng(3)
    n = 20_000
    s0, pdff, r2star = rng.uniform(0, 300, n), rng.uniform(0, 1, n), rng.uniform(0, 2000, n)
    reference = cramer_rao_sd(PROTOCOL, s0, pdff, r2star, 2.0)
    try:
        resources.set_working_memory(1)  # chunks of a few thousand voxels
        small = cramer_rao_sd(PROTOCOL, s0, pdff, r2star, 2.0)
    finally:
        resources.set_working_memory(resources.DEFAULT_WORKING_BYTES)
    for key, cap in (("pdff", PDFF_SD_MAX), ("r2star_s", R2STAR_SD_MAX_S)):
        np.testing.assert_allclose(small[key], reference[key], rtol=1e-9)  # SIMD tails round differently
        assert reference[key].shape == (n,) and np.all(np.isfinite(reference[key]))
        assert np.all((reference[key] > 0) & (reference[key] <= cap))
    broadcast = cramer_rao_sd(PROTOCOL, 100.0, pdff[:5], 50.0, 2.0)
    np.testing.assert_array_equal(broadcast["pdff"], cramer_rao_sd(PROTOCOL, np.full(5, 100.0), pdff[:5],
                                                                   np.full(5, 50.0), 2.0)["pdff"])


# --- 3. the bounds against the spread of the Rician ML fit --------------------------------------

@pytest.mark.parametrize("s0, pdff, r2star", [
    (100.0, 0.15, 40.0), (200.0, 0.15, 100.0), (100.0, 0.85, 100.0), (200.0, 0.85, 40.0),
    (30.0, 0.15, 400.0),  # SNR 30, the last echo 1.9 sigma above the noise floor
])
def test_bound_matches_the_ml_fit_spread(s0, pdff, r2star):
    """Where the Rician ML fit is efficient (SNR well above the floor, PDFF away from the bounds and
    the water/fat boundary, fitted on the true side), its SD over noise repeats is the bound
    (3000 repeats: 1.3 % sampling error), and its bias is small beside it."""
    rng = np.random.default_rng(int(s0 + 100 * pdff + r2star))
    n, sigma = 3000, 1.0
    signals = simulate_magnitude(PROTOCOL, np.full(n, s0), np.full(n, pdff), np.full(n, r2star), sigma, rng)
    fit = fit_voxels(signals, PROTOCOL, PDFF_RANGES["water" if pdff < PDFF_BOUNDARY else "fat"], sigma=sigma)
    bound = cramer_rao_sd(PROTOCOL, s0, pdff, r2star, sigma)
    for estimate, truth, sd in ((fit.pdff, pdff, bound["pdff"][0]), (fit.r2star_s, r2star, bound["r2star_s"][0])):
        assert estimate.std() / sd == pytest.approx(1.0, abs=0.15)
        assert abs(estimate.mean() - truth) < 0.25 * sd
