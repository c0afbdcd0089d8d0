"""The in silico experiment command, and that it is the app: run.py on the same grid gives the same numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from raider_bids.experiments import insilico

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--max-epochs", "2", "--nprocs", "1"]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    directory = tmp_path_factory.mktemp("insilico")
    results = insilico.run_experiment(directory, repetitions=2, seeds=(0,), extra=FAST)
    return directory, results


@pytest.mark.slow  # the whole experiment, if short (its fixture): ~6 s
def test_outputs_of_the_experiment(experiment):
    directory, results = experiment
    assert set(results) == {"single seed 0", "water network", "fat network", "dual (water/fat by likelihood)",
                            "conventional fit"}
    table = (directory / "insilico_conventional-fit.tsv").read_text().splitlines()
    assert len(table) == 1 + 100 * 50 and table[0].split("\t")[:4] == ["pdff_true", "r2star_true_per_s",
                                                                        "pdff_mean", "pdff_bias"]
    assert json.loads((directory / "insilico_summary.json").read_text())["methods"].keys() == results.keys()
    assert (directory / "insilico_fig4.png").read_bytes()[:4] == b"\x89PNG"
    # The constrained candidates stay on their side of 0.58, whatever the training length.
    assert results["water network"]["share_fat_side"] == 0.0
    assert results["fat network"]["share_fat_side"] == 1.0
    # The conventional fit: on this grid (SNR 60, six echoes) swaps happen, mostly at high R2*.
    fit = results["conventional fit"]
    assert 0.05 < fit["swap_rate"] < 0.2 and fit["pdff_mean_abs_bias"] < 0.1


def test_grid_statistics_against_hand_computed_values():
    pdff, r2 = insilico.grid_truth()
    maps = {"PDFFmap": np.broadcast_to(pdff[:, None, None], (100, 50, 4)).copy(),
            "R2starmap": np.broadcast_to(r2[None, :, None] + 10.0, (100, 50, 4)).copy(),
            "S0map": np.ones((100, 50, 4))}
    maps["PDFFmap"][0, 0] = [0.9, 0.9, 0.0, 0.0]  # truth 0: two swaps of four, mean 0.45
    stats = insilico.grid_statistics(maps)
    assert stats["pdff_mean"][0, 0] == pytest.approx(0.45) and stats["swap_rate"][0, 0] == 0.5
    assert stats["pdff_sd"][0, 0] == pytest.approx(np.std([0.9, 0.9, 0, 0], ddof=1))
    assert stats["swap_rate"].sum() == 0.5 and np.allclose(stats["r2star_bias"], 10.0)
    assert insilico.summary(maps, stats)["swap_rate"] == pytest.approx(0.5 / 5000)


@pytest.mark.slow  # the experiment, then run.py on its grid: ~4-6 s each
@pytest.mark.parametrize("method, name", [("fit", "fit"), ("ssl", "ssl")])
def test_run_py_on_the_grid_gives_the_experiment_numbers(experiment, tmp_path, method, name):
    directory, _ = experiment
    args = insilico.app_arguments(directory / "bids", tmp_path / "out", directory / "grid_mask.nii.gz",
                                  method, 0, FAST)
    assert "--sigma" in args and args[args.index("--sigma") + 1] == repr(1 / 60)
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), *args], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for desc in (None, "water", "fat") if method == "ssl" else (None,):
        ours = insilico.load_maps(tmp_path / "out", desc)
        theirs = insilico.load_maps(directory / "derivatives" / name, desc)
        for suffix in ours:
            np.testing.assert_array_equal(ours[suffix], theirs[suffix])
