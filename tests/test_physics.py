"""Physics tests: forward model, Rician likelihood, transforms, least squares, noise, mask.

Every assertion is against an independent truth: published reference values, a separate NumPy /
SciPy implementation written here, closed-form limits, or the simulation's known parameters.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import special, stats

from raider_bids.errors import InputDataError, UsageError
from raider_bids.physics.solver import fit_voxels
from raider_bids.physics.fat_spectrum import PRESETS, load_fat_spectrum
from raider_bids.physics.likelihood import (log_i0e_and_ratio, rician_log_likelihood, rician_nll_echo_major,
                                           rician_nll_per_voxel)
from raider_bids.preprocessing.mask import foreground_mask
from raider_bids.preprocessing.noise import estimate_sigma
from raider_bids.physics.signal_model import Acquisition, SignalModel, least_squares_s0, magnitude_signal
from raider_bids.physics.simulation import simulate_magnitude
from raider_bids.physics.transforms import nonnegative, pdff_transform

# --- independent truth -------------------------------------------------------------------------

# Hernando multisite 6-peak liver spectrum, written out here rather than read from the package.
HERNANDO_PPM = np.array([-3.90, -3.50, -2.70, -2.04, -0.49, 0.50])
HERNANDO_AMP = np.array([0.087, 0.694, 0.128, 0.004, 0.039, 0.048])
GAMMA_MAGORINO = 42.58e6  # Hz/T, as used for the method.md reference values
GAMMA_CODATA = 42.577478e6

# method.md section 1: 3 T, TE = 1.1..13.2 ms, S0 = 1, PDFF = 0.2, R2* = 50 1/s (gamma 42.58 MHz/T)
REFERENCE_TE_S = tuple(1.1e-3 * k for k in range(1, 13))
REFERENCE_SIGNAL = np.array([0.6077, 0.8643, 0.5715, 0.7336, 0.5122, 0.6532,
                             0.4412, 0.5947, 0.4026, 0.5248, 0.3940, 0.4583])

# The paper's in vivo protocol: 3 T, 6 echoes, TE1 = dTE = 1.15 ms.
PROTOCOL_TE_S = tuple(1.15e-3 * k for k in range(1, 7))


def numpy_magnitude(te_s, field_t, s0, pdff, r2star, gamma=GAMMA_CODATA, ppm=HERNANDO_PPM, amp=HERNANDO_AMP):
    """|S0 ((1-p) + p sum_k a_k exp(-i 2 pi f_k t)) exp(-R2* t)|: (N,) params -> (N, E).

    Uses the opposite phase sign to the package on purpose: magnitudes must not depend on it.
    """
    t = np.asarray(te_s, dtype=np.float64)
    freqs = ppm * 1e-6 * gamma * field_t
    fat = (amp[None, :] * np.exp(-2j * np.pi * freqs[None, :] * t[:, None])).sum(axis=1)  # (E,)
    s0, pdff, r2star = (np.atleast_1d(np.asarray(a, dtype=np.float64))[:, None] for a in (s0, pdff, r2star))
    complex_signal = s0 * ((1 - pdff) + pdff * fat[None, :]) * np.exp(-r2star * t[None, :])
    return np.abs(complex_signal)


def acquisition(te_s=PROTOCOL_TE_S, field_t=3.0, spectrum="hernando"):
    return Acquisition(tuple(te_s), field_t, PRESETS[spectrum])


def mixed_tissues(rng, n):
    """Water-dominant (PDFF 0-0.25) and fat-dominant (PDFF 0.8-1) voxels with R2* in 20-200 1/s."""
    fat = rng.random(n) < 0.4
    pdff = np.where(fat, rng.uniform(0.8, 1.0, n), rng.uniform(0.0, 0.25, n))
    r2star = rng.uniform(20.0, 200.0, n)
    return pdff, r2star


# --- 1. forward model --------------------------------------------------------------------------

def test_forward_model_matches_published_reference_values():
    acq = acquisition(REFERENCE_TE_S)
    signal = magnitude_signal(acq, s0=[1.0], pdff=[0.2], r2star_s=[50.0])
    assert signal.shape == (1, 12)
    np.testing.assert_allclose(signal[0], REFERENCE_SIGNAL, atol=2e-4, rtol=0)


def test_independent_numpy_model_reproduces_reference_values():
    """Sanity check of the test's own reference implementation (gamma 42.58 as in MAGORINO)."""
    ours = numpy_magnitude(REFERENCE_TE_S, 3.0, 1.0, 0.2, 50.0, gamma=GAMMA_MAGORINO)[0]
    np.testing.assert_allclose(ours, REFERENCE_SIGNAL, atol=6e-5, rtol=0)


@pytest.mark.parametrize("field_t", [1.5, 3.0])
@pytest.mark.parametrize("spectrum", ["hernando", "ismrm"])
def test_signal_model_matches_independent_numpy_model(field_t, spectrum):
    rng = np.random.default_rng(1)
    n = 200
    s0 = rng.uniform(0.1, 1000.0, n)
    pdff = rng.uniform(0.0, 1.0, n)
    r2star = rng.uniform(0.0, 1000.0, n)
    te = np.sort(rng.uniform(0.5e-3, 20e-3, 8))
    ppm = HERNANDO_PPM if spectrum == "hernando" else HERNANDO_PPM + 0.1  # ISMRM: 0.1 ppm closer to water
    expected = numpy_magnitude(te, field_t, s0, pdff, r2star, ppm=ppm)

    model = SignalModel(acquisition(te, field_t, spectrum), dtype=torch.float64)
    with torch.no_grad():
        got = model(torch.tensor(s0), torch.tensor(pdff), torch.tensor(r2star)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12 * s0.max())
    np.testing.assert_allclose(magnitude_signal(acquisition(te, field_t, spectrum), s0, pdff, r2star),
                               expected, rtol=1e-12, atol=1e-12 * s0.max())


def test_signal_model_float32_close_to_float64_truth():
    rng = np.random.default_rng(2)
    s0, pdff, r2star = rng.uniform(1, 10, 50), rng.uniform(0, 1, 50), rng.uniform(0, 500, 50)
    expected = numpy_magnitude(PROTOCOL_TE_S, 3.0, s0, pdff, r2star)
    model = SignalModel(acquisition(), dtype=torch.float32)
    got = model(torch.tensor(s0, dtype=torch.float32), torch.tensor(pdff, dtype=torch.float32),
                torch.tensor(r2star, dtype=torch.float32)).detach().numpy()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("s0, r2star", [(1.0, 0.0), (250.0, 50.0), (3.0, 800.0)])
def test_pure_water_is_exponential_decay(s0, r2star):
    te = np.array(REFERENCE_TE_S)
    got = magnitude_signal(acquisition(te), [s0], [0.0], [r2star])[0]
    np.testing.assert_allclose(got, s0 * np.exp(-r2star * te), rtol=1e-12)


def test_pure_fat_magnitude_is_spectrum_magnitude_times_decay():
    """PDFF = 1 at t = 0 equals S0 (the amplitudes sum to 1), and never exceeds S0 exp(-R2* t)."""
    te = np.concatenate([[0.0], np.array(REFERENCE_TE_S)])
    got = magnitude_signal(acquisition(te), [2.0], [1.0], [30.0])[0]
    assert got[0] == pytest.approx(2.0, rel=1e-12)
    assert np.all(got <= 2.0 * np.exp(-30.0 * te) + 1e-12)


def test_main_fat_peak_frequency_at_3t():
    freqs = PRESETS["hernando"].frequencies_hz(3.0)
    main = freqs[HERNANDO_PPM.tolist().index(-3.50)]
    # -3.5e-6 * 42.577478e6 Hz/T * 3 T = -447.06 Hz
    assert main == pytest.approx(-447.06, abs=0.05)
    np.testing.assert_allclose(freqs, HERNANDO_PPM * 1e-6 * GAMMA_CODATA * 3.0, rtol=1e-12)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_amplitudes_sum_to_one(name):
    assert sum(PRESETS[name].amplitudes) == pytest.approx(1.0, abs=1e-12)
    assert len(PRESETS[name].ppm) == len(PRESETS[name].amplitudes)


def test_load_fat_spectrum_preset_by_name():
    assert load_fat_spectrum("ismrm").ppm == (-3.80, -3.40, -2.60, -1.94, -0.39, 0.60)


def test_load_fat_spectrum_json_normalises_amplitudes(tmp_path):
    path = tmp_path / "three_peak.json"
    path.write_text(json.dumps({"ppm": [-3.4, -2.6, 0.6], "amplitudes": [2.0, 1.0, 1.0]}))
    spectrum = load_fat_spectrum(str(path))
    assert spectrum.ppm == pytest.approx((-3.4, -2.6, 0.6))
    assert spectrum.amplitudes == pytest.approx((0.5, 0.25, 0.25))
    assert spectrum.name == "three_peak"


@pytest.mark.parametrize("content", [
    {"ppm": [-3.4, -2.6], "amplitudes": [1.0]},            # mismatched lengths
    {"ppm": [], "amplitudes": []},                          # empty
    {"ppm": [-3.4, -2.6], "amplitudes": [1.0, -0.5]},       # negative amplitude
    {"ppm": [-3.4], "amplitudes": [0.0]},                   # zero total
    {"ppm": [-3.4]},                                        # missing key
    {"ppm": ["a"], "amplitudes": [1.0]},                    # not numeric
])
def test_load_fat_spectrum_rejects_bad_json(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(InputDataError):
        load_fat_spectrum(str(path))


def test_load_fat_spectrum_rejects_invalid_json_text(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(InputDataError):
        load_fat_spectrum(str(path))


def test_load_fat_spectrum_unknown_name_is_usage_error(tmp_path):
    with pytest.raises(UsageError):
        load_fat_spectrum("no_such_spectrum")
    with pytest.raises(UsageError):
        load_fat_spectrum(str(tmp_path / "missing.json"))


# --- 2. Rician log-likelihood ------------------------------------------------------------------

# (m, nu, sigma): small values, moderate SNR, and z = m nu / sigma^2 up to 1e6 (log I0 overflows there).
RICE_CASES = [
    (1e-3, 0.5, 1.0), (0.1, 0.2, 1.0), (0.5, 1e-3, 1.0), (1.0, 1.0, 1.0), (2.0, 3.0, 1.0),
    (5.0, 5.0, 2.0), (30.0, 28.0, 1.0), (0.02, 0.03, 0.01), (120.0, 100.0, 5.0),
    (1000.0, 1000.0, 1.0), (1000.0, 1003.0, 1.0), (980.0, 1000.0, 1.0), (3.0e4, 3.0e4, 30.0),
]
# Far in the tail at large z, where the density itself underflows (scipy's logpdf returns -inf).
RICE_TAIL_CASES = [(950.0, 1000.0, 1.0), (1.0e4, 1.02e4, 2.0), (50.0, 1.0, 0.5)]


def _rice_arrays(cases=RICE_CASES, dtype=torch.float64):
    m, nu, sigma = (np.array(c, dtype=np.float64) for c in zip(*cases))
    return m, nu, sigma, torch.tensor(m, dtype=dtype), torch.tensor(nu, dtype=dtype), torch.tensor(sigma, dtype=dtype)


def _rice_logpdf_mpmath(m, nu, sigma):
    """log(m/s^2) - (m^2 + nu^2)/(2 s^2) + log I0(m nu / s^2) in 50-digit arithmetic."""
    mpmath = pytest.importorskip("mpmath")
    out = []
    with mpmath.workdps(50):
        for mi, ni, si in zip(m, nu, sigma):
            mi, ni, si = mpmath.mpf(float(mi)), mpmath.mpf(float(ni)), mpmath.mpf(float(si))
            out.append(float(mpmath.log(mi / si**2) - (mi**2 + ni**2) / (2 * si**2)
                             + mpmath.log(mpmath.besseli(0, mi * ni / si**2))))
    return np.array(out)


def test_rician_log_likelihood_matches_scipy_logpdf():
    m, nu, sigma, tm, tnu, tsigma = _rice_arrays()
    assert (m * nu / sigma**2).max() > 1e4
    expected = stats.rice.logpdf(m, nu / sigma, scale=sigma)
    got = rician_log_likelihood(tm, tnu, tsigma, include_constant=True).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_rician_log_likelihood_without_constant_drops_log_m_over_sigma2():
    m, nu, sigma, tm, tnu, tsigma = _rice_arrays()
    expected = stats.rice.logpdf(m, nu / sigma, scale=sigma) - np.log(m / sigma**2)
    got = rician_log_likelihood(tm, tnu, tsigma).numpy()  # default: include_constant=False
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_rician_log_likelihood_matches_high_precision_including_far_tail():
    m, nu, sigma, tm, tnu, tsigma = _rice_arrays(RICE_CASES + RICE_TAIL_CASES)
    expected = _rice_logpdf_mpmath(m, nu, sigma)
    got = rician_log_likelihood(tm, tnu, tsigma, include_constant=True).numpy()
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_rician_log_likelihood_scalar_sigma():
    m, nu = np.array([0.3, 4.0, 70.0]), np.array([0.5, 3.0, 71.0])
    expected = stats.rice.logpdf(m, nu / 2.5, scale=2.5)
    got = rician_log_likelihood(torch.tensor(m), torch.tensor(nu), 2.5, include_constant=True).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10)


@pytest.mark.parametrize("nu, sigma", [(2.0, 1.5), (0.0, 1.0), (1e3, 10.0)])
def test_rician_log_likelihood_at_zero_measurement_is_finite_limit(nu, sigma):
    """At m = 0 (zeroed background) the prediction-dependent part tends to -nu^2 / (2 sigma^2)."""
    measured = torch.zeros(1, dtype=torch.float64)
    predicted = torch.tensor([nu], dtype=torch.float64, requires_grad=True)
    ll = rician_log_likelihood(measured, predicted, sigma)
    assert torch.isfinite(ll).all()
    assert ll.item() == pytest.approx(-nu**2 / (2 * sigma**2), rel=1e-9, abs=1e-9)
    ll.sum().backward()
    assert torch.isfinite(predicted.grad).all()
    # d/dnu of -nu^2 / (2 sigma^2)
    assert predicted.grad.item() == pytest.approx(-nu / sigma**2, rel=1e-6, abs=1e-6)


def test_rician_log_likelihood_float32_large_z_is_finite_and_accurate():
    m, nu, sigma, tm, tnu, tsigma = _rice_arrays(RICE_CASES + RICE_TAIL_CASES, torch.float32)
    got32 = rician_log_likelihood(tm, tnu, tsigma).numpy()
    assert got32.dtype == np.float32
    assert np.isfinite(got32).all()
    truth = _rice_logpdf_mpmath(m, nu, sigma) - np.log(m / sigma**2)
    np.testing.assert_allclose(got32, truth, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-6), (torch.float32, 1e-3)])
@pytest.mark.parametrize("m, nu, sigma", [(1000.0, 1000.0, 1.0), (1000.0, 1002.5, 1.0), (3.0, 2.0, 1.0),
                                          (30.0, 28.0, 1.0), (0.4, 0.7, 1.0)])
def test_rician_gradient_matches_finite_difference_of_scipy(dtype, rtol, m, nu, sigma):
    h = 1e-4 * max(nu, 1.0)
    fd = (stats.rice.logpdf(m, (nu + h) / sigma, scale=sigma)
          - stats.rice.logpdf(m, (nu - h) / sigma, scale=sigma)) / (2 * h)
    predicted = torch.tensor([nu], dtype=dtype, requires_grad=True)
    ll = rician_log_likelihood(torch.tensor([m], dtype=dtype), predicted, sigma)
    ll.sum().backward()
    assert torch.isfinite(predicted.grad).all()
    # absolute floor: the derivative is ~0 when m = nu at large z
    assert predicted.grad.item() == pytest.approx(fd, rel=rtol, abs=rtol * 1e-1)


def test_rician_nll_per_voxel_sums_echoes_with_minus_sign():
    rng = np.random.default_rng(3)
    nu = rng.uniform(0.5, 50.0, (7, 6))
    m = stats.rice.rvs(nu / 2.0, scale=2.0, random_state=rng)
    expected = -(stats.rice.logpdf(m, nu / 2.0, scale=2.0) - np.log(m / 4.0)).sum(axis=1)
    got = rician_nll_per_voxel(torch.tensor(m), torch.tensor(nu), 2.0).numpy()
    assert got.shape == (7,)
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_rician_nll_is_minimised_near_truth_at_high_snr():
    """Consistency: over a grid of scaled predictions, the NLL of data drawn from nu is lowest near nu."""
    rng = np.random.default_rng(4)
    nu = np.full((1, 2000), 20.0)
    m = torch.tensor(stats.rice.rvs(nu, scale=1.0, random_state=rng))
    scales = np.linspace(0.9, 1.1, 41)
    nll = [rician_nll_per_voxel(m, torch.tensor(nu * s), 1.0).item() for s in scales]
    assert abs(scales[int(np.argmin(nll))] - 1.0) <= 0.01


# --- 3. transforms -----------------------------------------------------------------------------

X_WIDE = torch.linspace(-50.0, 50.0, 20001, dtype=torch.float64)


def _magnitudes_over_both_bessel_regimes(rng, n=400, sigma=2.0):
    """Echo-major (E, n) measured and predicted magnitudes whose z = m nu / sigma^2 runs from 0 to
    1e5, so that both of the solver's ways of evaluating I0 (torch below 40, the series above) count."""
    nu = sigma * np.exp(rng.uniform(np.log(1e-3), np.log(150.0), n)) * rng.uniform(0.7, 1.0, (6, n))
    m = np.hypot(nu + sigma * rng.standard_normal((6, n)), sigma * rng.standard_normal((6, n)))
    return m, nu


def test_solver_loss_is_the_rician_nll_of_scipy_and_of_the_likelihood_module():
    """The fit's NLL (echo-major, asymptotic Bessel series) against scipy's Rice density and the
    networks' rician_nll_per_voxel: one likelihood, whichever way it is evaluated."""
    from raider_bids.physics.solver import _Loss

    sigma = 2.0
    m, nu = _magnitudes_over_both_bessel_regimes(np.random.default_rng(11), sigma=sigma)
    z = m * nu / sigma**2
    assert (z < 40).any(axis=0).any() and (z.min(axis=0) >= 40).any()  # columns of either kind
    value = _Loss(sigma).value(torch.from_numpy(m), torch.from_numpy(nu)).numpy()
    # Constant terms dropped: -log p(m) = NLL - log(m / sigma^2) per echo.
    scipy_nll = -(stats.rice.logpdf(m, nu / sigma, scale=sigma) - np.log(m / sigma**2)).sum(axis=0)
    np.testing.assert_allclose(value, scipy_nll, rtol=1e-10, atol=1e-9)
    per_voxel = rician_nll_per_voxel(torch.from_numpy(m.T), torch.from_numpy(nu.T), sigma).numpy()
    np.testing.assert_allclose(value, per_voxel, rtol=1e-12, atol=1e-10)


def test_bessel_terms_in_float32_are_as_exact_as_float32_allows():
    """The networks' training evaluates the Bessel terms in float32, where the asymptotic series
    starts lower (z = 15) and stops earlier: against scipy in float64 at the same rounded arguments
    the error is float32 rounding (a few 1e-7), not the series' truncation."""
    z32 = torch.cat([torch.zeros(1), torch.logspace(-3, 6, 30001)]).float()[None]
    log_i0e, ratio = log_i0e_and_ratio(z32)
    z = z32.double().numpy()
    np.testing.assert_allclose(log_i0e.double().numpy(), np.log(special.i0e(z)), rtol=0, atol=1e-6)
    np.testing.assert_allclose(ratio.double().numpy(), special.i1e(z) / special.i0e(z), rtol=0, atol=1e-6)
    # the NLL the training sums, over both ways of evaluating the terms, against scipy's density
    sigma = 2.0
    m, nu = _magnitudes_over_both_bessel_regimes(np.random.default_rng(14), sigma=sigma)
    m, nu = m.astype(np.float32), nu.astype(np.float32)
    value, _ = rician_nll_echo_major(torch.from_numpy(m), torch.from_numpy(nu), sigma)
    m, nu = m.astype(np.float64), nu.astype(np.float64)
    per_echo = -(stats.rice.logpdf(m, nu / sigma, scale=sigma) - np.log(m / sigma**2))
    np.testing.assert_allclose(value.numpy(), per_echo.sum(axis=0), rtol=1e-6, atol=1e-5)


def test_solver_residual_is_the_likelihood_gradient():
    """m I1(z)/I0(z) - nu, the solver's 'residual', is -sigma^2 dNLL/dnu (autograd of the module's NLL)."""
    sigma = 2.0
    m, nu = _magnitudes_over_both_bessel_regimes(np.random.default_rng(12), sigma=sigma)
    nu_t = torch.from_numpy(nu.T.copy()).requires_grad_(True)
    rician_nll_per_voxel(torch.from_numpy(m.T), nu_t, sigma).sum().backward()
    _, residual = rician_nll_echo_major(torch.from_numpy(m), torch.from_numpy(nu), sigma)
    np.testing.assert_allclose(residual.numpy(), -sigma**2 * nu_t.grad.numpy().T, rtol=1e-9, atol=1e-9)


def test_least_squares_s0_is_the_closed_form_minimiser_clamped_at_zero():
    rng = np.random.default_rng(13)
    shapes = rng.uniform(0.1, 1.0, (50, 6))
    m = shapes * rng.uniform(-2.0, 5.0, (50, 1)) + rng.normal(0, 0.05, (50, 6))
    expected = [max(0.0, float(np.linalg.lstsq(b[:, None], y, rcond=None)[0][0])) for b, y in zip(shapes, m)]
    got = least_squares_s0(m, shapes, axis=1)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)
    assert (got == 0).any() and (got > 0).any()
    torch_got = least_squares_s0(torch.from_numpy(m.T), torch.from_numpy(shapes.T), axis=0).numpy()
    np.testing.assert_allclose(torch_got, got, rtol=1e-14)
    assert least_squares_s0(np.ones((1, 4)), np.zeros((1, 4)), axis=1)[0] == 0.0  # no shape, no S0


def test_simulate_magnitude_takes_one_noise_level_per_signal():
    """Noise-only signals are Rayleigh with each signal's own sigma: mean sigma sqrt(pi / 2)."""
    sigma = np.repeat([0.5, 3.0], 20000)
    m = simulate_magnitude(acquisition(), np.zeros(sigma.size), np.zeros(sigma.size), np.zeros(sigma.size),
                           sigma, np.random.default_rng(14))
    for value in (0.5, 3.0):
        assert m[sigma == value].mean() == pytest.approx(value * math.sqrt(math.pi / 2), rel=0.01)


@pytest.mark.parametrize("kind, low, high", [("water", 0.0, 0.58), ("fat", 0.58, 1.0), ("full", 0.0, 1.0)])
def test_pdff_transform_range_and_reaches_both_ends(kind, low, high):
    pdff = pdff_transform(X_WIDE, kind)
    assert pdff.min().item() >= low - 1e-12 and pdff.max().item() <= high + 1e-12
    assert pdff.min().item() == pytest.approx(low, abs=1e-6)
    assert pdff.max().item() == pytest.approx(high, abs=1e-6)


@pytest.mark.parametrize("kind", ["water", "fat", "full"])
def test_pdff_transform_matches_paper_eq7(kind):
    x = X_WIDE.numpy()
    b = 0.58
    expected = {"water": b / 2 * (np.sin(x) + 1),
                "fat": 1 - (1 - b) / 2 * (np.sin(x) + 1),
                "full": (np.sin(x) + 1) / 2}[kind]
    np.testing.assert_allclose(pdff_transform(X_WIDE, kind).numpy(), expected, atol=1e-12)


def test_pdff_transform_unknown_kind_raises():
    with pytest.raises(ValueError):
        pdff_transform(X_WIDE, "both")


def test_pdff_transform_has_gradient_everywhere():
    x = X_WIDE.clone().requires_grad_(True)
    pdff_transform(x, "water").sum().backward()
    assert torch.isfinite(x.grad).all()


def test_nonnegative_transform():
    y = nonnegative(X_WIDE)
    assert (y >= 0).all()
    np.testing.assert_allclose(y.numpy(), X_WIDE.numpy() ** 2)


# --- 4. least squares --------------------------------------------------------------------------

@pytest.mark.parametrize("te_s", [PROTOCOL_TE_S, REFERENCE_TE_S], ids=["6echoes", "12echoes"])
def test_least_squares_recovers_noise_free_truth(te_s):
    pdff_true = np.array([0.0, 0.05, 0.1, 0.2, 0.3, 0.8, 0.9, 0.95, 1.0])
    r2_true = np.array([10.0, 50.0, 150.0, 300.0])
    pdff, r2star = (a.ravel() for a in np.meshgrid(pdff_true, r2_true, indexing="ij"))
    s0 = np.full(pdff.shape, 800.0)
    signals = numpy_magnitude(te_s, 3.0, s0, pdff, r2star)

    fit = fit_voxels(signals, acquisition(te_s))
    np.testing.assert_allclose(fit.pdff, pdff, atol=1e-3)
    np.testing.assert_allclose(fit.r2star_s, r2star, atol=1.0)
    np.testing.assert_allclose(fit.s0, s0, rtol=2e-3)
    np.testing.assert_allclose(fit.fitted, signals, atol=1e-3 * 800.0)
    np.testing.assert_allclose(fit.loss, ((signals - fit.fitted) ** 2).sum(axis=1), rtol=1e-9, atol=1e-9)


def test_least_squares_is_a_minimiser_on_noisy_data():
    rng = np.random.default_rng(5)
    n, sigma = 1000, 1.0
    pdff, r2star = mixed_tissues(rng, n)
    s0 = rng.uniform(30.0, 100.0, n)
    acq = acquisition()
    clean = numpy_magnitude(PROTOCOL_TE_S, 3.0, s0, pdff, r2star)
    noisy = clean + rng.normal(0.0, sigma, clean.shape)
    rss_truth = ((noisy - clean) ** 2).sum(axis=1)

    fit = fit_voxels(noisy, acq)
    rss_fit = ((noisy - numpy_magnitude(PROTOCOL_TE_S, 3.0, fit.s0, fit.pdff, fit.r2star_s)) ** 2).sum(axis=1)
    np.testing.assert_allclose(fit.loss, rss_fit, rtol=1e-9)
    assert np.mean(rss_fit <= rss_truth * (1 + 1e-9)) >= 0.99
    # and the fitted parameters respect the bounds
    assert fit.pdff.min() >= 0 and fit.pdff.max() <= 1 and fit.r2star_s.min() >= 0 and fit.s0.min() >= 0


# --- 5. noise ----------------------------------------------------------------------------------

def test_simulate_magnitude_high_snr_mean_is_clean_signal():
    rng = np.random.default_rng(6)
    n = 20000
    acq = acquisition()
    s0, pdff, r2star = np.full(n, 100.0), np.full(n, 0.1), np.full(n, 40.0)
    noisy = simulate_magnitude(acq, s0, pdff, r2star, sigma=1.0, rng=rng)
    clean = numpy_magnitude(PROTOCOL_TE_S, 3.0, 100.0, 0.1, 40.0)[0]
    assert noisy.shape == (n, 6)
    # Rician mean ~ sqrt(nu^2 + sigma^2) at high SNR; the standard error is 1/sqrt(n) = 0.007
    np.testing.assert_allclose(noisy.mean(axis=0), np.sqrt(clean**2 + 1.0), atol=0.03)
    np.testing.assert_allclose(noisy.std(axis=0), 1.0, rtol=0.03)


def test_simulate_magnitude_zero_signal_is_rayleigh():
    rng = np.random.default_rng(7)
    sigma, n = 3.0, 50000
    noisy = simulate_magnitude(acquisition(), np.zeros(n), np.zeros(n), np.zeros(n), sigma=sigma, rng=rng)
    assert noisy.min() >= 0
    assert noisy.mean() == pytest.approx(sigma * math.sqrt(math.pi / 2), rel=0.01)
    assert np.mean(noisy**2) == pytest.approx(2 * sigma**2, rel=0.01)
    assert stats.kstest(noisy[:, 0], stats.rayleigh(scale=sigma).cdf).pvalue > 1e-3


def test_simulate_magnitude_matches_rice_distribution():
    rng = np.random.default_rng(8)
    n, sigma = 20000, 2.0
    noisy = simulate_magnitude(acquisition(), np.full(n, 4.0), np.zeros(n), np.zeros(n), sigma=sigma, rng=rng)
    for echo in range(2):
        assert stats.kstest(noisy[:, echo], stats.rice(4.0 / sigma, scale=sigma).cdf).pvalue > 1e-3


@pytest.mark.parametrize("te_s", [PROTOCOL_TE_S, REFERENCE_TE_S], ids=["6echoes", "12echoes"])
@pytest.mark.parametrize("sigma", [0.7, 12.0])
def test_estimate_sigma_recovers_known_sigma(te_s, sigma):
    rng = np.random.default_rng(9)
    n = 1500
    pdff, r2star = mixed_tissues(rng, n)
    s0 = sigma * rng.uniform(30.0, 100.0, n)  # SNR 30-100
    signals = simulate_magnitude(acquisition(te_s), s0, pdff, r2star, sigma, rng)
    estimate = estimate_sigma(signals, acquisition(te_s), np.random.default_rng(0))
    assert estimate.sigma == pytest.approx(sigma, rel=0.07)
    assert estimate.method == "model-residual"
    assert 100 <= estimate.n_voxels <= n


def test_estimate_sigma_subsamples_large_inputs():
    rng = np.random.default_rng(10)
    n, sigma = 3000, 2.0
    pdff, r2star = mixed_tissues(rng, n)
    signals = simulate_magnitude(acquisition(), rng.uniform(60, 200, n), pdff, r2star, sigma, rng)
    estimate = estimate_sigma(signals, acquisition(), np.random.default_rng(0), max_voxels=1000)
    assert estimate.n_voxels <= 1000
    assert estimate.sigma == pytest.approx(sigma, rel=0.1)


def test_estimate_sigma_needs_more_than_three_echoes():
    rng = np.random.default_rng(11)
    te = PROTOCOL_TE_S[:3]
    signals = simulate_magnitude(acquisition(te), np.full(500, 50.0), np.full(500, 0.1), np.full(500, 40.0), 1.0, rng)
    with pytest.raises(InputDataError):
        estimate_sigma(signals, acquisition(te), np.random.default_rng(0))


def test_estimate_sigma_needs_enough_voxels():
    rng = np.random.default_rng(12)
    signals = simulate_magnitude(acquisition(), np.full(5, 50.0), np.full(5, 0.1), np.full(5, 40.0), 1.0, rng)
    with pytest.raises(InputDataError):
        estimate_sigma(signals, acquisition(), np.random.default_rng(0))


def test_estimate_sigma_fails_cleanly_on_noise_free_data():
    signals = numpy_magnitude(PROTOCOL_TE_S, 3.0, np.full(200, 50.0), np.full(200, 0.1), np.full(200, 40.0))
    with pytest.raises(InputDataError):
        estimate_sigma(signals, acquisition(), np.random.default_rng(0))


# --- 6. mask -----------------------------------------------------------------------------------

def _disc(shape_xy, radius, centre=None):
    x, y = np.indices(shape_xy)
    cx, cy = centre if centre is not None else ((shape_xy[0] - 1) / 2, (shape_xy[1] - 1) / 2)
    return (x - cx) ** 2 + (y - cy) ** 2 <= radius**2


def _tissue_echoes(rng, disc3d, sigma, n_echoes=6):
    """(X, Y, Z, E) magnitudes: tissue (SNR 20-80, water and fat) inside `disc3d`, zero signal outside."""
    n = disc3d.sum()
    pdff, r2star = mixed_tissues(rng, n)
    clean = np.zeros(disc3d.shape + (n_echoes,))
    clean[disc3d] = numpy_magnitude(PROTOCOL_TE_S[:n_echoes], 3.0, sigma * rng.uniform(20, 80, n), pdff, r2star)
    return clean


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def _add_rician_noise(rng, clean, sigma):
    return np.hypot(clean + rng.normal(0, sigma, clean.shape), rng.normal(0, sigma, clean.shape))


def test_mask_disc_in_rayleigh_background():
    rng = np.random.default_rng(13)
    disc = np.repeat(_disc((96, 96), 30)[:, :, None], 3, axis=2)
    echoes = _add_rician_noise(rng, _tissue_echoes(rng, disc, 5.0), 5.0)
    mask = foreground_mask(echoes, 5.0)
    assert mask.shape == disc.shape and mask.dtype == bool
    assert _dice(mask, disc) > 0.95
    assert mask[~disc].mean() < 0.005  # background stays out
    # far from the disc nothing at all is kept
    assert not mask[~np.repeat(_disc((96, 96), 36)[:, :, None], 3, axis=2)].any()


def test_mask_disc_with_zeroed_background_and_noise_ring():
    rng = np.random.default_rng(14)
    disc = np.repeat(_disc((96, 96), 30)[:, :, None], 3, axis=2)
    within_ring = np.repeat(_disc((96, 96), 38)[:, :, None], 3, axis=2)
    echoes = _add_rician_noise(rng, _tissue_echoes(rng, disc, 5.0), 5.0)
    echoes[~within_ring] = 0.0  # the scanner zeroed everything beyond a ring of low noise
    mask = foreground_mask(echoes, 5.0)
    assert _dice(mask, disc) > 0.95
    assert not mask[~within_ring].any()
    assert mask[within_ring & ~disc].mean() < 0.01


def test_mask_of_all_zero_image_is_empty():
    assert not foreground_mask(np.zeros((8, 8, 2, 4)), 1.0).any()


def test_fitting_model_value_and_jacobian_match_signal_model_and_autograd():
    from raider_bids.physics.solver import MagnitudeJacobian

    acq = acquisition()
    model = MagnitudeJacobian(acq, torch.device("cpu"))
    rng = np.random.default_rng(4)
    theta = torch.tensor(np.column_stack([rng.uniform(0.5, 2, 20), rng.uniform(0.01, 0.99, 20),
                                          rng.uniform(0, 400, 20)]))
    f, jac = model.value_and_jacobian(theta)
    np.testing.assert_allclose(f.numpy(), magnitude_signal(acq, *theta.numpy().T), rtol=1e-12)
    reference = SignalModel(acq, dtype=torch.float64)
    for i in range(theta.shape[0]):
        auto = torch.autograd.functional.jacobian(lambda t: reference(t[:1], t[1:2], t[2:3])[0], theta[i])
        np.testing.assert_allclose(jac[i].numpy(), auto.numpy(), rtol=1e-9, atol=1e-12)


def test_the_fit_in_blocks_on_threads_is_the_fit_in_one_block(monkeypatch):
    """fit_voxels fits blocks of voxels on Python threads (one intra-op thread each): with blocks of
    700 voxels the 3,000 voxels' answers are the same bits on one thread and on two, and equal
    those of one block to rounding (each voxel's answer depends on its own starts only)."""
    from raider_bids.physics import solver

    acquisition = Acquisition(tuple(1.15e-3 * k for k in range(1, 7)), 3.0, PRESETS["hernando"])
    rng = np.random.default_rng(5)
    n = 3000
    signals = simulate_magnitude(acquisition, np.full(n, 100.0), rng.uniform(0, 1, n), rng.uniform(10, 300, n),
                                 2.0, rng)
    threads = torch.get_num_threads()
    results = {}
    try:
        for block, count in ((10**9, 2), (700, 1), (700, 2)):
            monkeypatch.setattr(solver, "_BLOCK", block)
            torch.set_num_threads(count)
            results[block, count] = fit_voxels(signals, acquisition, (0.0, 0.58), sigma=2.0)
    finally:
        torch.set_num_threads(threads)
    for key in ("s0", "pdff", "r2star_s", "loss", "fitted"):
        one, two, whole = (getattr(results[k], key) for k in ((700, 1), (700, 2), (10**9, 2)))
        assert np.array_equal(one, two), key
        np.testing.assert_allclose(two, whole, rtol=1e-10, atol=1e-10, err_msg=key)
