"""The refinement of trained networks' candidates where the water and fat side is not settled (close
sides, or a losing candidate far enough above its side's maximum to win): it takes each candidate
to its side's maximum likelihood (checked against the independent grid search of
tests/ml_reference.py), picks the side the maximum likelihood picks, and leaves clear voxels alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ml_reference import grid_search_ml
from raider_bids.estimators.base import choose_by_likelihood
from raider_bids.estimators.refinement import AMBIGUOUS_BELOW_NATS, refine_ambiguous
from raider_bids.physics.fat_spectrum import load_fat_spectrum
from raider_bids.physics.parameters import PDFF_RANGES
from raider_bids.physics.signal_model import Acquisition, magnitude_signal
from raider_bids.physics.simulation import simulate_magnitude
from raider_bids.physics.solver import refine_voxels
from raider_bids.physics.likelihood import rician_nll_per_voxel

CPU = torch.device("cpu")
# The liver-iron benchmark's 3 T protocol: eight echoes from 0.8 ms, 0.8 ms apart.
IRON_3T = Acquisition(tuple(0.8e-3 * k for k in range(1, 9)), 3.0, load_fat_spectrum("hernando"))
SIGMA = 2.0


def _liver(n: int, seed: int, r2star_s: float = 1000.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noisy magnitudes of an iron-loaded liver (S0 100, PDFF 0.05) and of steatosis (PDFF 0.20)."""
    rng = np.random.default_rng(seed)
    pdff = np.where(np.arange(n) % 2 == 0, 0.05, 0.20)
    r2 = np.full(n, r2star_s)
    return simulate_magnitude(IRON_3T, np.full(n, 100.0), pdff, r2, SIGMA, rng), pdff, r2


def _nll(signals: np.ndarray, s0, pdff, r2) -> np.ndarray:
    predicted = magnitude_signal(IRON_3T, s0, pdff, r2)
    return rician_nll_per_voxel(torch.as_tensor(signals), torch.as_tensor(predicted), SIGMA).numpy()


def _candidate(signals: np.ndarray, s0, pdff, r2) -> dict[str, np.ndarray]:
    return {"s0": np.asarray(s0, float), "pdff": np.asarray(pdff, float), "r2star_s": np.asarray(r2, float),
            "nll": _nll(signals, s0, pdff, r2)}


def test_refined_start_reaches_the_independent_maximum_likelihood_of_its_side():
    signals, pdff, r2 = _liver(60, seed=1)
    for kind in ("water", "fat"):
        reference = grid_search_ml(signals, IRON_3T.echo_times_s, 3.0, SIGMA, r2_max=1600.0,
                                   pdff_range=PDFF_RANGES[kind])
        # A start like a network's: in the right basin, off by a few percent in every parameter.
        start = (reference["s0"] * 0.9, np.clip(reference["pdff"] + 0.03, *PDFF_RANGES[kind]),
                 reference["r2star_s"] * 1.1)
        result = refine_voxels(signals, IRON_3T, PDFF_RANGES[kind], SIGMA, start)
        assert np.all(result.loss <= _nll(signals, *start) + 1e-9)  # never worse than its start
        # At least as likely as the grid's optimum (resolution 0.001 in PDFF, 1 1/s in R2*) ...
        assert np.all(result.loss <= reference["nll"] + 1e-3), kind
        # ... and at the same place.
        assert np.all(np.abs(result.pdff - reference["pdff"]) < 0.01), kind
        assert np.all(np.abs(result.r2star_s - reference["r2star_s"]) < 10.0), kind
        assert np.all((result.pdff >= PDFF_RANGES[kind][0]) & (result.pdff <= PDFF_RANGES[kind][1]))


def test_close_sides_are_decided_by_the_maximum_likelihood_not_by_the_candidates_errors():
    """The 3 T liver at 1000 1/s: its water- and fat-side optima differ by about 0.1 nats. Candidates
    with a network's errors (the water one worse than the fat one, as measured) choose the fat side;
    refined, the voxels take the side of the independent maximum likelihood."""
    signals, pdff, r2 = _liver(200, seed=2)
    ml = {kind: grid_search_ml(signals, IRON_3T.echo_times_s, 3.0, SIGMA, r2_max=1600.0,
                               pdff_range=PDFF_RANGES[kind]) for kind in ("water", "fat")}
    ml_fat = ml["fat"]["nll"] < ml["water"]["nll"]
    water = _candidate(signals, ml["water"]["s0"] * 0.93, np.clip(ml["water"]["pdff"] + 0.04, 0, 0.58),
                       ml["water"]["r2star_s"] * 0.94)
    fat = _candidate(signals, ml["fat"]["s0"] * 0.99, ml["fat"]["pdff"], ml["fat"]["r2star_s"] * 1.01)
    before = choose_by_likelihood(water, fat)
    assert np.abs(before.log_likelihood_ratio).max() < AMBIGUOUS_BELOW_NATS  # every voxel is close here
    assert (before.chose_fat != ml_fat).mean() > 0.5  # the candidates' errors pick the side
    after = refine_ambiguous(before, signals, IRON_3T, SIGMA, CPU)
    assert (after.chose_fat != ml_fat).mean() < 0.02
    for kind in ("water", "fat"):  # each candidate is its side's maximum likelihood
        assert np.mean(np.abs(after.candidates[kind]["pdff"] - ml[kind]["pdff"]) < 0.01) > 0.95, kind
    assert after.details["Refinement"]["RefinedShare"] == 1.0
    assert after.details["Refinement"]["ChangedSideShare"] > 0.5


def test_a_losing_candidate_far_above_its_side_is_refined_and_can_win():
    """The same liver, its fat candidate a badly trained network's (S0 and R2* 40 % low): it loses by
    more than AMBIGUOUS_BELOW_NATS, yet at the maximum likelihood the sides are within 0.1 nats. The
    refinement takes both to their side's maximum, and the side is the maximum likelihood's (at half
    the S0 and R2* a tenth of the voxels are out of the first step's reach, and stay water)."""
    signals, _, _ = _liver(200, seed=4)
    ml = {kind: grid_search_ml(signals, IRON_3T.echo_times_s, 3.0, SIGMA, r2_max=1600.0,
                               pdff_range=PDFF_RANGES[kind]) for kind in ("water", "fat")}
    ml_fat = ml["fat"]["nll"] < ml["water"]["nll"]
    water = _candidate(signals, ml["water"]["s0"], ml["water"]["pdff"], ml["water"]["r2star_s"])
    fat = _candidate(signals, ml["fat"]["s0"] * 0.6, ml["fat"]["pdff"], ml["fat"]["r2star_s"] * 0.6)
    before = choose_by_likelihood(water, fat)
    assert np.all(before.log_likelihood_ratio > AMBIGUOUS_BELOW_NATS)  # every voxel looks settled: water
    after = refine_ambiguous(before, signals, IRON_3T, SIGMA, CPU)
    assert after.details["Refinement"]["RefinedShare"] == after.details["Refinement"]["LosingSideShare"] == 1.0
    assert np.mean(np.abs(after.candidates["fat"]["pdff"] - ml["fat"]["pdff"]) < 0.01) > 0.95
    assert (after.chose_fat != ml_fat).mean() < 0.02 and 0.2 < ml_fat.mean() < 0.8  # both sides occur


def test_voxels_whose_sides_are_far_apart_keep_the_networks_candidates_bit_for_bit():
    """A water voxel's water candidate at the truth and a fat one at its side's maximum likelihood
    (so no step brings it closer): far apart, both are kept as they are."""
    rng = np.random.default_rng(3)
    acquisition = Acquisition(tuple(1.15e-3 * k for k in range(1, 7)), 3.0, load_fat_spectrum("hernando"))
    n = 50
    truth_pdff = np.linspace(0.0, 0.3, n)
    signals = simulate_magnitude(acquisition, np.full(n, 100.0), truth_pdff, np.full(n, 40.0), 1.0, rng)
    predicted_water = magnitude_signal(acquisition, np.full(n, 100.0), truth_pdff, np.full(n, 40.0))
    start = (np.full(n, 60.0), np.full(n, 0.9), np.full(n, 200.0))
    fat_ml = refine_voxels(signals, acquisition, PDFF_RANGES["fat"], 1.0, start)
    predicted_fat = magnitude_signal(acquisition, fat_ml.s0, fat_ml.pdff, fat_ml.r2star_s)
    nll = {kind: rician_nll_per_voxel(torch.as_tensor(signals), torch.as_tensor(p), 1.0).numpy()
           for kind, p in (("water", predicted_water), ("fat", predicted_fat))}
    assert (nll["fat"] - nll["water"]).min() > AMBIGUOUS_BELOW_NATS
    water = {"s0": np.full(n, 100.0), "pdff": truth_pdff, "r2star_s": np.full(n, 40.0), "nll": nll["water"]}
    fat = {"s0": fat_ml.s0, "pdff": fat_ml.pdff, "r2star_s": fat_ml.r2star_s, "nll": nll["fat"]}
    before = choose_by_likelihood(water, fat)
    after = refine_ambiguous(before, signals, acquisition, 1.0, CPU)
    for kind in ("water", "fat"):
        for key, value in before.candidates[kind].items():
            assert np.array_equal(after.candidates[kind][key], value), (kind, key)
    assert after.details["Refinement"]["RefinedShare"] == 0.0


def test_refine_none_gives_the_networks_own_candidates_and_the_default_refines_only_close_voxels(tmp_path):
    """The same seed with and without --refine: the candidates are identical where the networks'
    sides are far apart and differ where they were close (refined there), and each provenance says
    which it did."""
    import json

    import nibabel as nib

    from raider_bids.cli import main
    from raider_bids.experiments.demo import write_dataset

    # A low SNR and a short training leave many voxels close, so both kinds are present.
    write_dataset(tmp_path / "bids", shape=(24, 24, 2), snr=15.0)
    maps = {}
    for refine in ("ambiguous", "none"):
        out = tmp_path / refine
        assert main([str(tmp_path / "bids"), str(out), "participant", "--method", "ssl", "--max-epochs", "2",
                     "--refine", refine, "--write-candidates", "--nprocs", "1"]) == 0
        anat = out / "sub-01" / "anat"
        provenance = json.loads((anat / "sub-01_provenance.json").read_text())
        assert provenance["Configuration"]["refine"] == refine
        maps[refine] = {name: np.asarray(nib.load(anat / f"sub-01_{name}.nii.gz").dataobj)
                        for name in ("desc-water_PDFFmap", "desc-fat_PDFFmap", "LLRmap", "desc-foreground_mask")}
        maps[refine]["details"] = provenance["Estimation"]["Details"]
    assert "Refinement" not in maps["none"]["details"]
    share = maps["ambiguous"]["details"]["Refinement"]["RefinedShare"]
    assert 0.05 < share < 0.99
    mask = maps["none"]["desc-foreground_mask"] > 0
    llr_none = maps["none"]["LLRmap"][mask]
    close = np.abs(llr_none) < AMBIGUOUS_BELOW_NATS
    details = maps["ambiguous"]["details"]["Refinement"]
    # the LLR map is written in float32
    assert share == pytest.approx(np.mean(close) + details["LosingSideShare"], abs=0.01)
    changed = np.zeros(mask.sum(), bool)
    for name in ("desc-water_PDFFmap", "desc-fat_PDFFmap"):
        refined, own = maps["ambiguous"][name][mask], maps["none"][name][mask]
        assert not np.array_equal(refined[close], own[close]), name
        changed |= refined != own
    # no more voxels changed than were refined (a refined one may keep its start's PDFF)
    assert np.mean(changed) <= share + 1e-9
    # The group level's QC table and both reports give the share refined (n/a without refinement).
    for refine, expected in (("ambiguous", f"{share}"), ("none", "n/a")):
        out = tmp_path / refine
        assert main([str(tmp_path / "bids"), str(out), "group"]) == 0
        header, row = (line.split("\t") for line in (out / "group_qc.tsv").read_text().splitlines())
        cell = dict(zip(header, row))["refined_share"]
        assert cell == "n/a" if expected == "n/a" else float(cell) == pytest.approx(share)
        page = (out / "sub-01.html").read_text()
        assert "Refined to the side" in page
        assert (f"{100 * share:.1f}%" in page) == (refine == "ambiguous")
