"""The partial-volume evidence of the spatial choice: a border voxel's side from mixes of its
neighbours' signals, against simulated voxels whose tissues are summed as complex signals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raider_bids.choice.partial_volume import EXCESS_NATS, face_neighbours, mix_evidence, sides_meet
from raider_bids.estimators import get_estimator
from raider_bids.physics.fat_spectrum import PRESETS
from raider_bids.physics.signal_model import Acquisition, complex_signal, magnitude_signal

# The hard protocol of docs/water-fat-choice.md: 1.5 T, six echoes 2 ms apart, SNR 40.
ACQUISITION = Acquisition(tuple(1.2e-3 + 2.0e-3 * k for k in range(6)), 1.5, PRESETS["hernando"])
SIGMA = 2.5
FAT = (120.0, 0.92, 50.0)  # S0, PDFF, R2* (1/s): subcutaneous fat
MUSCLE = (100.0, 0.05, 30.0)
BLOOD = (90.0, 0.0, 15.0)


def _noisy(rng, clean: np.ndarray) -> np.ndarray:
    """Magnitudes of complex signals `clean` (N, E) with complex Gaussian noise SIGMA."""
    return np.abs(clean + rng.normal(0, SIGMA, clean.shape) + 1j * rng.normal(0, SIGMA, clean.shape))


def _tissue(params, n: int) -> np.ndarray:
    s0, pdff, r2 = (np.full(n, v) for v in params)
    return complex_signal(ACQUISITION, s0, pdff, r2)


def test_the_complex_signal_has_the_model_magnitude():
    rng = np.random.default_rng(0)
    s0, pdff, r2 = rng.uniform(10, 200, 50), rng.uniform(0, 1, 50), rng.uniform(0, 800, 50)
    np.testing.assert_allclose(np.abs(complex_signal(ACQUISITION, s0, pdff, r2)),
                               magnitude_signal(ACQUISITION, s0, pdff, r2), rtol=1e-12)


def test_face_neighbours_and_where_sides_meet_on_a_small_grid():
    mask = np.ones((3, 4, 2), bool)
    mask[0, 0, 0] = False
    index = np.full(mask.shape, -1)
    index[mask] = np.arange(mask.sum())
    voxel = index[1, 2, 1]
    found = face_neighbours(mask, np.array([voxel]))[0]
    assert sorted(found.tolist()) == sorted([index[0, 2, 1], index[2, 2, 1], index[1, 1, 1], index[1, 3, 1], -1,
                                             index[1, 2, 0]])
    assert face_neighbours(mask, np.array([index[1, 0, 0]]))[0].tolist().count(-1) == 3  # (0, 0, 0) is out
    fat = np.zeros(mask.shape, bool)
    fat[:, 2:] = True
    meet = sides_meet(fat, mask)
    expected = np.zeros(mask.shape, bool)
    expected[:, 1:3] = True
    np.testing.assert_array_equal(meet, expected & mask)


@pytest.fixture(scope="module")
def fat_muscle_border():
    """400 rows of (fat, border voxel, muscle) on a 400 x 3 x 1 grid; each border voxel holds a
    share c ~ U(0.15, 0.85) of fat tissue, its complex signal the sum of the two tissues'. Its true
    side is that of its PDFF, fat protons over all protons. Fitted voxel by voxel."""
    rng = np.random.default_rng(3)
    rows = 400
    c = rng.uniform(0.15, 0.85, rows)
    clean = np.stack([_tissue(FAT, rows), c[:, None] * _tissue(FAT, rows) + (1 - c[:, None]) * _tissue(MUSCLE, rows),
                      _tissue(MUSCLE, rows)], axis=1)  # (rows, 3, E)
    signals = _noisy(rng, clean.reshape(-1, ACQUISITION.n_echoes))
    fat_protons = c * FAT[0] * FAT[1] + (1 - c) * MUSCLE[0] * MUSCLE[1]
    border_fat = fat_protons / (c * FAT[0] + (1 - c) * MUSCLE[0]) >= 0.58
    truth = np.stack([np.ones(rows, bool), border_fat, np.zeros(rows, bool)], axis=1).ravel()
    candidates = get_estimator("fit", None).fit(signals, ACQUISITION, SIGMA, seed=0,
                                                device=torch.device("cpu")).candidates
    return np.ones((rows, 3, 1), bool), signals, truth, candidates


def test_border_voxels_take_the_side_of_their_neighbours_mix(fat_muscle_border):
    """Where a first cut put the tissues on their sides, the mixes of the neighbours explain nearly
    every border voxel, and their evidence points to its true side far more often than the
    voxel's own."""
    mask, signals, truth, candidates = fat_muscle_border
    water, fat = candidates["water"], candidates["fat"]
    chosen = {key: np.where(truth, fat[key], water[key]) for key in ("s0", "pdff", "r2star_s")}
    border = np.zeros(mask.shape, bool)
    border[:, 1] = True
    border = border[mask]
    evidence = mix_evidence(mask, signals, SIGMA, ACQUISITION, chosen, truth, np.minimum(water["nll"], fat["nll"]),
                            border)
    assert evidence.candidates == border.sum()
    assert evidence.index.size > 0.9 * border.sum()
    own = (water["nll"] - fat["nll"])[evidence.index] > 0
    from_mix = evidence.log_ratio > 0
    right = truth[evidence.index]
    assert np.mean(from_mix == right) > 0.9
    assert np.mean(from_mix == right) > np.mean(own == right) + 0.1


def test_a_vessel_in_fat_is_not_explained_by_its_neighbours():
    """A water voxel (blood) inside fat: no mix of fat neighbours explains its echoes, so it keeps
    its own evidence; the fat voxels around it, alike, are explained."""
    rng = np.random.default_rng(5)
    mask = np.ones((9, 9, 3), bool)
    truth = np.ones(mask.shape, bool)
    truth[4, 4, 1] = False
    clean = np.where(truth[mask][:, None], _tissue(FAT, mask.sum()), _tissue(BLOOD, mask.sum()))
    signals = _noisy(rng, clean)
    candidates = get_estimator("fit", None).fit(signals, ACQUISITION, SIGMA, seed=0,
                                                device=torch.device("cpu")).candidates
    water, fat = candidates["water"], candidates["fat"]
    chosen_fat = truth[mask]
    chosen = {key: np.where(chosen_fat, fat[key], water[key]) for key in ("s0", "pdff", "r2star_s")}
    own = np.minimum(water["nll"], fat["nll"])
    evidence = mix_evidence(mask, signals, SIGMA, ACQUISITION, chosen, chosen_fat, own, np.ones(mask.sum(), bool))
    vessel = np.flatnonzero(~chosen_fat)[0]
    assert evidence.candidates == 7  # the vessel and its six neighbours meet the other side
    assert vessel not in evidence.index
    assert evidence.index.size == 6 and np.all(evidence.log_ratio > 0)


def test_the_excess_bound_is_half_the_chi_square_quantile():
    # Twice the excess of a mix with one parameter fewer is chi-square(1) where the voxel is a mix.
    from scipy.stats import chi2

    assert 2 * EXCESS_NATS == pytest.approx(chi2.ppf(0.999, 1))
