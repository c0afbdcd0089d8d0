"""The supervised (RAIDER) dual networks: trained on simulated signals, S0 refitted by least
squares, the candidate chosen by Rician likelihood. Checked against simulated truth, against the
other two estimators, and against independent NumPy/SciPy computations (tests/ml_reference.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from ml_reference import shapes
from scipy.special import i0e

from raider_bids.config import TRAINING_PRESETS
from raider_bids.estimators import ESTIMATORS, get_estimator
from raider_bids.estimators.networks import PhysicsAutoencoder
from raider_bids.estimators.supervised import SupervisedDual, predict_parameters
from raider_bids.workflows.recording import estimation_record
from raider_bids.physics.fat_spectrum import PRESETS
from raider_bids.physics.signal_model import Acquisition
from raider_bids.physics.simulation import simulate_magnitude

ECHO_TIMES_S = tuple(1.15e-3 * k for k in range(1, 7))  # the paper's protocol, 3 T
ACQUISITION = Acquisition(ECHO_TIMES_S, 3.0, PRESETS["hernando"])
CPU = torch.device("cpu")
# The fast preset with a shorter budget (2000 steps) and a smaller simulated set: ~4 s on one core.
SETTINGS = dataclasses.replace(TRAINING_PRESETS["fast"], max_epochs=20)
SIMULATED = 40_000
S0_EASY, SIGMA_EASY = 100.0, 1.0  # SNR 100, in image units that are not 1


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small matrices on a shared machine: one thread is faster and steadier than several."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _easy_data(n: int = 2000, seed: int = 7):
    """PDFF well away from 0.58 on both sides, low R2*, SNR 100."""
    rng = np.random.default_rng(seed)
    fat = rng.random(n) < 0.5
    pdff = np.where(fat, rng.uniform(0.8, 1.0, n), rng.uniform(0.0, 0.3, n))
    r2 = rng.uniform(0.0, 100.0, n)
    signals = simulate_magnitude(ACQUISITION, np.full(n, S0_EASY), pdff, r2, SIGMA_EASY, rng)
    return signals, {"pdff": pdff, "r2star_s": r2, "s0": np.full(n, S0_EASY)}


@pytest.fixture(scope="module")
def easy():
    return _easy_data()


@pytest.fixture(scope="module")
def supervised_run(easy):
    signals, _ = easy
    return SupervisedDual(SETTINGS, simulated_samples=SIMULATED).fit(signals, ACQUISITION, SIGMA_EASY, seed=0,
                                                                     device=CPU)


def _network_from_file(weights: dict) -> PhysicsAutoencoder:
    """A single network rebuilt from what the app saves (*_desc-<kind>_weights.pt)."""
    acquisition = Acquisition(tuple(weights["echo_times_s"]), weights["field_strength_t"], PRESETS["hernando"])
    model = PhysicsAutoencoder(acquisition, (weights["kind"],), torch.Generator().manual_seed(99))
    model.load_state_dict(weights["state_dict"])
    return model


def _nll(signals: np.ndarray, s0, pdff, r2, sigma: float) -> np.ndarray:
    """Independent Rician NLL (constant terms dropped) with the NumPy reference model."""
    nu = np.asarray(s0)[:, None] * shapes(np.asarray(pdff), np.asarray(r2), np.asarray(ECHO_TIMES_S), 3.0)
    z = signals * nu / sigma**2
    return -(-(signals - nu) ** 2 / (2 * sigma**2) + np.log(i0e(z))).sum(axis=1)


def test_registered_under_supervised_and_takes_the_settings():
    assert ESTIMATORS["supervised"] is SupervisedDual
    estimator = get_estimator("supervised", SETTINGS)
    assert isinstance(estimator, SupervisedDual) and estimator.training is SETTINGS
    assert "RAIDER" in estimator.method.reference and "2403.01178" in estimator.method.reference


@pytest.mark.parametrize("k, kind, pdff_range", [(0, "water", (0.0, 0.58)), (1, "fat", (0.58, 1.0))])
def test_networks_recover_truth_on_their_training_distribution(supervised_run, k, kind, pdff_range):
    """Fresh simulated signals (another seed, SNR 60, S0 = 3) from the network's own training
    distribution: small PDFF and R2* errors. A network ignoring its input would be off by about a
    quarter of the range (PDFF 0.10-0.15, R2* 125 1/s); a wrong R2* scale by hundreds of 1/s."""
    weights = supervised_run.weights[kind]
    assert weights["kind"] == kind and weights["n_echoes"] == 6
    model = _network_from_file(weights)
    rng = np.random.default_rng(1234)
    n = 5000
    pdff, r2 = rng.uniform(*pdff_range, n), rng.uniform(0.0, 500.0, n)
    signals = simulate_magnitude(ACQUISITION, np.full(n, 3.0), pdff, r2, 3.0 / 60, rng)
    predicted_pdff, predicted_r2 = (a[0] for a in predict_parameters(model, signals, CPU))
    pdff_error, r2_error = np.abs(predicted_pdff - pdff), np.abs(predicted_r2 - r2)
    assert pdff_error.mean() < 0.03 and np.median(pdff_error) < 0.025
    assert r2_error.mean() < 35.0
    low = r2 < 250  # where the signal has not decayed away by the last echoes
    assert pdff_error[low].mean() < 0.025 and r2_error[low].mean() < 20.0
    assert abs(np.mean(predicted_r2 - r2)) < 10.0  # no overall R2* bias or scale error
    assert np.corrcoef(predicted_r2, r2)[0, 1] > 0.95


def test_outputs_stay_in_their_pdff_range_and_r2star_nonnegative(supervised_run, easy):
    """The constraining transforms hold for any input: the other side's signals and pure noise."""
    signals, _ = easy
    noise = np.abs(np.random.default_rng(5).normal(size=(2000, 6)))
    for kind, (low, high) in (("water", (0.0, 0.58)), ("fat", (0.58, 1.0))):
        model = _network_from_file(supervised_run.weights[kind])
        for data in (signals, noise):
            pdff, r2 = (a[0] for a in predict_parameters(model, data, CPU))
            assert pdff.min() >= low - 1e-6 and pdff.max() <= high + 1e-6
            assert r2.min() >= 0.0
    for kind, (low, high) in (("water", (0.0, 0.58)), ("fat", (0.58, 1.0))):
        candidate = supervised_run.candidates[kind]
        assert candidate["pdff"].min() >= low - 1e-6 and candidate["pdff"].max() <= high + 1e-6
        assert candidate["r2star_s"].min() >= 0 and candidate["s0"].min() >= 0


def test_ssl_fit_and_supervised_agree_with_each_other_and_the_truth_on_easy_data(easy, supervised_run):
    signals, truth = easy
    ssl_settings = dataclasses.replace(TRAINING_PRESETS["fast"], max_epochs=30, batch_size=256)
    results = {
        "ssl": get_estimator("ssl", ssl_settings).fit(signals, ACQUISITION, SIGMA_EASY, seed=0, device=CPU),
        "fit": get_estimator("fit", ssl_settings).fit(signals, ACQUISITION, SIGMA_EASY, seed=0, device=CPU),
        "supervised": supervised_run,
    }
    true_fat = truth["pdff"] >= 0.58
    for name, est in results.items():
        assert np.mean((est.pdff >= 0.58) == true_fat) >= 0.97, name
        assert np.mean(est.chose_fat == true_fat) >= 0.97, name
        assert np.median(np.abs(est.pdff - truth["pdff"])) < 0.02, name
        assert np.median(np.abs(est.r2star_s - truth["r2star_s"])) < 10.0, name
        assert np.median(np.abs(est.s0 / S0_EASY - 1)) < 0.04, name
    names = list(results)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            same_side = (results[a].pdff >= 0.58) == (results[b].pdff >= 0.58)
            assert np.mean(same_side) >= 0.97, (a, b)
            assert np.median(np.abs(results[a].pdff - results[b].pdff)[same_side]) < 0.02, (a, b)
    # The supervised estimate itself: (almost) no swaps on data this easy.
    assert np.mean((supervised_run.pdff >= 0.58) == true_fat) >= 0.995


def test_s0_is_the_least_squares_optimum_and_the_choice_is_by_likelihood(easy, supervised_run):
    signals, _ = easy
    te = np.asarray(ECHO_TIMES_S)
    for kind in ("water", "fat"):
        candidate = supervised_run.candidates[kind]
        for i in range(0, 2000, 250):
            b = shapes(candidate["pdff"][i:i + 1], candidate["r2star_s"][i:i + 1], te, 3.0)[0]
            (s0,), *_ = np.linalg.lstsq(b[:, None], signals[i], rcond=None)
            assert candidate["s0"][i] == pytest.approx(max(s0, 0.0), rel=1e-6)
    nll = {kind: _nll(signals, *(supervised_run.candidates[kind][k] for k in ("s0", "pdff", "r2star_s")), SIGMA_EASY)
           for kind in ("water", "fat")}
    np.testing.assert_array_equal(supervised_run.chose_fat, nll["fat"] < nll["water"])
    np.testing.assert_allclose(supervised_run.log_likelihood_ratio, np.abs(nll["fat"] - nll["water"]),
                               rtol=1e-6, atol=1e-6)
    chosen = np.where(supervised_run.chose_fat, supervised_run.candidates["fat"]["pdff"],
                      supervised_run.candidates["water"]["pdff"])
    np.testing.assert_array_equal(supervised_run.pdff, chosen)


def test_provenance_records_the_training_for_the_report(supervised_run):
    estimator = SupervisedDual(SETTINGS, simulated_samples=SIMULATED)
    prov = estimation_record(estimator, supervised_run, 1.0).to_json()
    assert prov["Method"] == "supervised" and prov["Description"] and prov["Reference"].startswith("Bray")
    assert prov["TrainingSettings"] == dataclasses.asdict(SETTINGS)
    sim = prov["Details"]["SimulatedTrainingSet"]
    assert sim["SamplesPerNetwork"] == SIMULATED
    assert sim["TrainingSamplesPerNetwork"] + sim["ValidationSamplesPerNetwork"] == SIMULATED
    assert sim["SNRRange"] == [20.0, 120.0] and sim["R2starRangePerSecond"] == [0.0, 500.0]
    assert [net["Network"] for net in prov["Networks"]] == ["water", "fat"]
    for net in prov["Networks"]:
        assert len(net["TrainLoss"]) == len(net["ValidationLoss"]) == net["Epochs"] >= 1
        assert 1 <= net["BestEpoch"] <= net["Epochs"]
        assert net["BestValidationLoss"] == pytest.approx(min(net["ValidationLoss"]))
        assert net["ValidationLoss"][-1] < 0.05  # MSE(PDFF) + MSE(R2*/500) well below a constant guess's
    assert prov["ShareChoosingFat"] == pytest.approx(supervised_run.chose_fat.mean())


def test_same_seed_gives_identical_outputs_and_training_ignores_the_voxels(easy):
    signals, _ = easy
    tiny = dataclasses.replace(SETTINGS, max_epochs=2, steps_per_epoch=20)

    def run(data, seed):
        return SupervisedDual(tiny, simulated_samples=4000).fit(data, ACQUISITION, SIGMA_EASY, seed=seed, device=CPU)

    first, second = run(signals, 0), run(signals, 0)
    for key in ("pdff", "r2star_s", "s0", "log_likelihood_ratio", "chose_fat"):
        np.testing.assert_array_equal(getattr(first, key), getattr(second, key))
    for a, b in zip(first.networks, second.networks):
        assert a.train_loss == b.train_loss and a.validation_loss == b.validation_loss
    # The training set depends on the acquisition and the seed only, never on the run's voxels.
    other = run(signals[:300] * 0.5, 0)
    for kind in ("water", "fat"):
        for name, value in first.weights[kind]["state_dict"].items():
            assert torch.equal(value, other.weights[kind]["state_dict"][name])
    reseeded = run(signals, 1)
    assert not torch.equal(first.weights["water"]["state_dict"]["weights.0"],
                           reseeded.weights["water"]["state_dict"]["weights.0"])
