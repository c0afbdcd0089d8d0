"""The estimators against an independent maximum-likelihood reference (a dense grid search of the
Rician likelihood written with NumPy/SciPy only: tests/ml_reference.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ml_reference import grid_search_ml
from raider_bids.config import TRAINING_PRESETS
from raider_bids.estimators import get_estimator
from raider_bids.physics.solver import RICIAN_SNR
from raider_bids.physics.fat_spectrum import PRESETS
from raider_bids.physics.likelihood import rician_nll_per_voxel
from raider_bids.physics.signal_model import Acquisition, magnitude_signal
from raider_bids.physics.simulation import simulate_magnitude

ECHO_TIMES_S = tuple(1.15e-3 * k for k in range(1, 7))  # the paper's protocol, 3 T
ACQUISITION = Acquisition(ECHO_TIMES_S, 3.0, PRESETS["hernando"])
SIGMA = 1 / 60  # SNR 60 at S0 = 1
CPU = torch.device("cpu")
# Dense grid searches and networks trained to convergence, 75-80 s in all: `pytest -m slow`. In the
# default run the estimators' outputs are pinned bitwise (tests/test_golden.py) and the maps are
# checked against the phantom's truth (tests/test_end_to_end.py).
pytestmark = pytest.mark.slow


def _simulate(n: int, seed: int, r2max: float = 500.0):
    rng = np.random.default_rng(seed)
    pdff, r2 = rng.uniform(0, 1, n), rng.uniform(0, r2max, n)
    return simulate_magnitude(ACQUISITION, np.ones(n), pdff, r2, SIGMA, rng), pdff


def _nll(signals, candidate) -> np.ndarray:
    predicted = magnitude_signal(ACQUISITION, candidate["s0"], candidate["pdff"], candidate["r2star_s"])
    return rician_nll_per_voxel(torch.tensor(signals), torch.tensor(predicted), SIGMA).numpy()


@pytest.fixture(scope="module", params=["mixed", "above-floor"])
def fit_data(request):
    """150 voxels: R2* up to 500 1/s (most have an echo near the noise floor, ranked on the fine
    grid by the likelihood), or only voxels whose every echo is RICIAN_SNR sigma above it (ranked
    on the coarse grid by least squares, the second start dropped where it cannot win)."""
    if request.param == "mixed":
        signals, _ = _simulate(150, seed=21)
    else:
        signals, _ = _simulate(1000, seed=22, r2max=200)
        signals = signals[signals.min(axis=1) >= RICIAN_SNR * SIGMA][:150]
        assert len(signals) == 150
    estimates = get_estimator("fit", TRAINING_PRESETS["paper"]).fit(signals, ACQUISITION, SIGMA, seed=0, device=CPU)
    return signals, estimates


@pytest.mark.parametrize("kind, pdff_range", [("water", (0.0, 0.58)), ("fat", (0.58, 1.0))])
def test_each_side_of_the_fit_is_the_ml_estimate_of_that_side(fit_data, kind, pdff_range):
    signals, estimates = fit_data
    ml = grid_search_ml(signals, ECHO_TIMES_S, 3.0, SIGMA, pdff_range=pdff_range)
    candidate = estimates.candidates[kind]
    excess = _nll(signals, candidate) - ml["nll"]
    # The fit is continuous, the grid has steps of 0.002 PDFF and 2 1/s: the fit may be slightly better.
    assert np.mean(excess <= 1e-3) >= 0.99, np.sort(excess)[-5:]
    assert excess.max() < 0.5
    assert np.median(np.abs(candidate["pdff"] - ml["pdff"])) < 0.002
    assert np.mean(np.abs(candidate["r2star_s"] - ml["r2star_s"]) < 5) >= 0.97


def test_fit_choice_is_the_global_ml_choice(fit_data):
    signals, estimates = fit_data
    water = grid_search_ml(signals, ECHO_TIMES_S, 3.0, SIGMA, pdff_range=(0.0, 0.58))
    fat = grid_search_ml(signals, ECHO_TIMES_S, 3.0, SIGMA, pdff_range=(0.58, 1.0))
    clear = np.abs(water["nll"] - fat["nll"]) > 0.05  # ties within the grid's resolution say nothing
    ml_fat = fat["nll"] < water["nll"]
    assert np.array_equal(estimates.chose_fat[clear], ml_fat[clear])
    np.testing.assert_allclose(estimates.log_likelihood_ratio[clear], np.abs(water["nll"] - fat["nll"])[clear],
                               atol=0.05)


@pytest.mark.parametrize("preset", ["paper", "fast"])
def test_dual_networks_come_close_to_the_ml_estimate(preset):
    """The paper's claim: the self-supervised dual estimate is close to the ML answer, with the
    paper's training settings and with the fast default."""
    signals, truth = _simulate(4000, seed=5)
    estimates = get_estimator("ssl", TRAINING_PRESETS[preset]).fit(signals, ACQUISITION, SIGMA, seed=0, device=CPU)
    subset = np.random.default_rng(0).choice(len(signals), 150, replace=False)
    ml = grid_search_ml(signals[subset], ECHO_TIMES_S, 3.0, SIGMA)
    chosen = {k: getattr(estimates, k)[subset] for k in ("s0", "pdff", "r2star_s")}
    excess = _nll(signals[subset], chosen) - ml["nll"]
    assert np.median(excess) < 0.5  # nats, over 6 echoes
    assert np.median(np.abs(chosen["pdff"] - ml["pdff"])) < 0.02
    assert np.mean((chosen["pdff"] >= 0.58) == (ml["pdff"] >= 0.58)) >= 0.9
    # Swaps against the truth: the networks should not swap much more than the ML estimate does.
    swap = lambda p: np.mean((p >= 0.58) != (truth[subset] >= 0.58))  # noqa: E731
    assert swap(chosen["pdff"]) <= swap(ml["pdff"]) + 0.06
