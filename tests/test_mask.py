"""The automatic foreground mask (issue 16): a voxel is kept when its echoes stand above the noise.

Every test simulates tissue and noise with known truth and checks the mask against that truth;
sigma is estimated as the participant level does (model-residual on the provisional tissue
sample) unless the test is about the rule alone.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import stats

from cli_checks import assert_one_error, run_cli
from raider_bids.experiments import insilico
from raider_bids.experiments.phantoms import PROTOCOLS
from raider_bids.physics.fat_spectrum import PRESETS
from raider_bids.physics.signal_model import Acquisition, magnitude_signal
from raider_bids.physics.simulation import simulate_magnitude
from raider_bids.preprocessing.mask import (GROW_FALSE_ALARM, NOISE_FALSE_ALARM, above_noise, foreground_mask,
                                            noise_thresholds, provisional_tissue)
from raider_bids.preprocessing.noise import estimate_sigma

SIGMA = 2.0
PAPER = Acquisition(PROTOCOLS["paper"].echo_times_s, PROTOCOLS["paper"].field_strength_t, PRESETS["hernando"])
IRON_1P5T = Acquisition(tuple(1.0e-3 + 1.0e-3 * i for i in range(6)), 1.5, PRESETS["hernando"])
IRON_3T = Acquisition(tuple(0.8e-3 * (i + 1) for i in range(8)), 3.0, PRESETS["hernando"])


def _tissue(rng, acquisition, n, pdff=(0.0, 1.0), r2star=(0.0, 300.0), first_echo_snr=(16.0, 35.0), s0_snr=None):
    """Noisy magnitudes (n, E) of tissue with random PDFF and R2*; S0 set so that the noise-free
    first echo is `first_echo_snr` (uniform range) times SIGMA, or S0 = `s0_snr` * SIGMA."""
    p, r = rng.uniform(*pdff, n), rng.uniform(*r2star, n)
    if s0_snr is None:
        first = magnitude_signal(acquisition, np.ones(n), p, r)[:, 0]
        s0 = rng.uniform(*first_echo_snr, n) * SIGMA / first
    else:
        s0 = np.full(n, s0_snr * SIGMA)
    return simulate_magnitude(acquisition, s0, p, r, SIGMA, rng)


def _noise(rng, n, n_echoes):
    """Magnitudes (n, E) of voxels holding noise only: Rayleigh with per-channel std SIGMA."""
    return np.hypot(*rng.normal(0.0, SIGMA, (2, n, n_echoes)))


def _image(shape, n_echoes, fills):
    """(X, Y, Z, E) image from {boolean region (X, Y, Z): magnitudes (region.sum(), E)}."""
    image = np.zeros(shape + (n_echoes,))
    for region, values in fills:
        image[region] = values
    return image


def _automatic(echoes, acquisition):
    """The participant level's automatic mask: sigma on the provisional tissue, then the noise test."""
    sample = echoes[provisional_tissue(echoes)]
    sigma = estimate_sigma(sample, acquisition, np.random.default_rng(0)).sigma
    assert sigma == pytest.approx(SIGMA, rel=0.15)
    return foreground_mask(echoes, sigma)


def _disc(shape, radius):
    x, y, _ = np.indices(shape)
    return (x - (shape[0] - 1) / 2) ** 2 + (y - (shape[1] - 1) / 2) ** 2 <= radius**2


def test_pure_noise_passes_at_the_false_alarm_probability():
    """A million noise voxels: only a handful pass (Bonferroni: at most NOISE_FALSE_ALARM each),
    and each prefix threshold is the chi-square quantile it claims to be."""
    rng = np.random.default_rng(1)
    air = _noise(rng, 1_000_000, 6).reshape(100, 100, 100, 6)
    assert above_noise(air, SIGMA, NOISE_FALSE_ALARM)[0].sum() <= 5  # expected <= 1
    assert foreground_mask(air, SIGMA).sum() <= 5  # growing from those adds nothing
    thresholds = noise_thresholds(6)
    assert stats.chi2.sf(thresholds, 2 * np.arange(1, 7)) == pytest.approx(NOISE_FALSE_ALARM / 6)
    # Looser false-alarm probabilities show that the test is calibrated (not just strict): about
    # that share of noise voxels passes, never more.
    for false_alarm in (GROW_FALSE_ALARM, 0.01):
        share = above_noise(air[:50], SIGMA, false_alarm)[0].mean()
        assert 0.3 * false_alarm < share <= 1.1 * false_alarm


def test_grid_without_background_is_kept_whole():
    """(a) The in silico grid: no background at all, every first echo 16-35 sigma."""
    rng = np.random.default_rng(2)
    shape = (50, 40, 2)
    echoes = _tissue(rng, PAPER, np.prod(shape)).reshape(shape + (6,))
    mask = _automatic(echoes, PAPER)
    assert mask.mean() >= 0.99


def test_tissue_in_rayleigh_background():
    """(b) Tissue of SNR 10-80 (first echo) in air: the tissue kept, the air dropped."""
    rng = np.random.default_rng(3)
    shape = (64, 64, 3)
    body = _disc(shape, 22)
    echoes = _image(shape, 6, [(body, _tissue(rng, PAPER, body.sum(), first_echo_snr=(10, 80))),
                               (~body, _noise(rng, (~body).sum(), 6))])
    mask = _automatic(echoes, PAPER)
    assert mask[body].mean() >= 0.99
    assert (~mask[~body]).mean() >= 0.999


def test_zero_filled_background_is_dropped():
    """(c) The scanner zeroed the air (as in the real liver scan): none of it is kept."""
    rng = np.random.default_rng(4)
    shape = (48, 48, 3)
    body = _disc(shape, 16)
    echoes = _image(shape, 6, [(body, _tissue(rng, PAPER, body.sum()))])  # 0 outside the body
    mask = _automatic(echoes, PAPER)
    assert not mask[~body].any() and mask[body].mean() >= 0.99


@pytest.mark.parametrize("acquisition, tissue", [
    # An iron-loaded liver at 1.5 T: R2* 1000 1/s, first echo about 18 sigma, 6 echoes 1-6 ms.
    pytest.param(IRON_1P5T, dict(r2star=(1000, 1000), first_echo_snr=(17, 19)), id="R2*1000-1.5T"),
    # R2* 2000 1/s at 3 T, 8 echoes 0.8-6.4 ms, S0 at SNR 50: first echo 6-10 sigma at these
    # liver-like PDFF, kept thanks to the growth (at PDFF ~0.5 it falls to ~4.5 sigma, the floor).
    pytest.param(IRON_3T, dict(r2star=(2000, 2000), pdff=(0.0, 0.3), s0_snr=50.0), id="R2*2000-3T"),
])
def test_dark_fast_decaying_tissue_is_kept(acquisition, tissue):
    """(d) Dark tissue (only the early echoes above the noise) beside bright tissue, in air."""
    rng = np.random.default_rng(5)
    shape = (64, 64, 2)
    body, liver = _disc(shape, 26), _disc(shape, 14)
    n_echoes = len(acquisition.echo_times_s)
    rest = body & ~liver
    echoes = _image(shape, n_echoes, [
        (liver, _tissue(rng, acquisition, liver.sum(), **tissue)),
        (rest, _tissue(rng, acquisition, rest.sum(), r2star=(20, 60), first_echo_snr=(40, 80))),
        (~body, _noise(rng, (~body).sum(), n_echoes))])
    mask = _automatic(echoes, acquisition)
    assert mask[liver].mean() >= 0.99
    assert mask[rest].mean() >= 0.99 and (~mask[~body]).mean() >= 0.999
    if acquisition is IRON_3T:  # the test voxel by voxel alone leaves out a few % (first echoes ~6 sigma)
        strict = foreground_mask(echoes, SIGMA, grow_false_alarm=None)
        assert 0.8 < strict[liver].mean() < 0.99 and not (strict & ~mask).any()


def test_thin_structures_and_lone_voxels_are_kept():
    """(e) A line of tissue one voxel thick (skin, a thin fat layer) and a lone tissue voxel in
    air: no opening, no removal of small components."""
    rng = np.random.default_rng(6)
    shape = (40, 40, 3)
    line, lone = np.zeros(shape, dtype=bool), np.zeros(shape, dtype=bool)
    line[5:35, 20, 1] = True
    lone[8, 8, 0] = True
    tissue = line | lone
    echoes = _image(shape, 6, [(tissue, _tissue(rng, PAPER, tissue.sum())),
                               (~tissue, _noise(rng, (~tissue).sum(), 6))])
    mask = foreground_mask(echoes, SIGMA)
    assert mask[line].all() and mask[lone].all()
    assert not mask[~tissue].any()


def test_nan_voxels_are_left_out():
    rng = np.random.default_rng(7)
    echoes = _tissue(rng, PAPER, 200).reshape(10, 10, 2, 6)
    echoes[3, 3, 1, 2] = np.nan
    mask = foreground_mask(echoes, SIGMA)
    assert not mask[3, 3, 1] and mask.sum() == 199


def test_app_keeps_the_whole_insilico_grid_and_records_the_rule(capsys, tmp_path):
    """(f) The app's command line (`python -m raider_bids`'s main, in-process) on the in silico grid
    (no background) without --mask or --sigma: the written mask holds >= 99 % of the grid, and the
    provenance and the mask's sidecar record the rule."""
    bids = tmp_path / "bids"
    insilico.write_grid_dataset(bids, repetitions=1)
    out = tmp_path / "out"
    code, err = run_cli(capsys, [bids, out, "participant", "--method", "fit", "--choice", "voxel", "--nprocs", "1"])
    assert code == 0, err
    anat = out / f"sub-{insilico.SUBJECT}" / "anat"
    mask = np.asarray(nib.load(anat / f"sub-{insilico.SUBJECT}_desc-foreground_mask.nii.gz").dataobj) > 0
    assert mask.shape == (insilico.N_PDFF, insilico.N_R2STAR, 1) and mask.mean() >= 0.99
    provenance = json.loads((anat / f"sub-{insilico.SUBJECT}_provenance.json").read_text())
    record = provenance["Mask"]
    assert record["Source"].startswith("automatic") and record["Voxels"] == mask.sum()
    details = record["Details"]
    assert details["FalseAlarmProbability"] == NOISE_FALSE_ALARM and "chi-square" in details["Rule"]
    assert details["UsableVoxels"] == mask.size and details["DroppedAsNoise"] == mask.size - mask.sum()
    assert provenance["Noise"]["Sigma"] == pytest.approx(insilico.SIGMA, rel=0.15)  # from the provisional sample
    sidecar = json.loads((anat / f"sub-{insilico.SUBJECT}_desc-foreground_mask.json").read_text())
    assert "noise" in sidecar["Description"]


def test_app_refuses_a_run_whose_voxels_do_not_stand_above_the_noise(capsys, tmp_path):
    """A sigma far above the signal (or data that are noise): < 1 % of the usable voxels pass,
    and the run fails as bad input (exit 65) with one line saying so."""
    bids = tmp_path / "bids"
    insilico.write_grid_dataset(bids, repetitions=1)
    code, err = run_cli(capsys, [bids, tmp_path / "out", "participant", "--method", "fit", "--sigma", "10",
                                 "--nprocs", "1"])
    assert code == 65
    assert_one_error(err, "stand above the noise", "sigma 10", "--mask")
