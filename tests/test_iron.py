"""Iron overload through the whole app (issue 16): on the graded-iron phantom, without --mask, the
automatic mask keeps the dark liver, the fit's liver R2* is near the truth up to the top grade, and
a run whose PDFF the data cannot determine in much of the mask gets one WARNING saying so."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from cli_checks import run_cli

from raider_bids.experiments.phantoms import (IRON_PROTOCOLS, IRON_TISSUES, liver_iron, liver_labels,
                                              write_phantom_dataset)

SHAPE = (32, 32, 2)  # 180 liver voxels of 1032 in the body
UNCERTAIN = "PDFF is poorly determined"


def _run(capsys, tmp_path, protocol: str, r2star_liver_s: float, method: str = "fit", shape=SHAPE):
    phantom = liver_iron(r2star_liver_s, shape, r2star_variation=0.0)
    p = IRON_PROTOCOLS[protocol]
    truth = write_phantom_dataset(tmp_path / "bids", phantom, p.echo_times_s, p.field_strength_t, p.snr)
    code, err = run_cli(capsys, [tmp_path / "bids", tmp_path / "out", "participant", "--method", method,
                                 "--nprocs", "1"])
    assert code == 0, err
    anat = tmp_path / "out" / "sub-01" / "anat"
    load = lambda name: np.asarray(nib.load(anat / f"sub-01_{name}.nii.gz").dataobj)  # noqa: E731
    liver = np.isin(truth["labels"], liver_labels(phantom))
    mask = load("desc-foreground_mask") > 0
    return liver, mask, load("R2starmap"), load("PDFFmap"), truth, err


@pytest.mark.parametrize("protocol, grade, r2star_tolerance", [("1.5T", 1000.0, 0.10), ("3T", 2000.0, 0.20)])
def test_an_iron_loaded_liver_is_kept_and_its_r2star_measured(capsys, tmp_path, protocol, grade, r2star_tolerance):
    liver, mask, r2star, _, truth, err = _run(capsys, tmp_path, protocol, grade)
    assert mask[liver].mean() >= 0.99
    assert not mask[truth["labels"] == 0].any()  # the air (noise only) is dropped
    assert abs(np.median(r2star[liver]) / grade - 1) < r2star_tolerance
    warnings = [line for line in err.splitlines() if "[WARNING]" in line and UNCERTAIN in line]
    if protocol == "3T":  # two echoes carry signal: PDFF is not determined there
        assert len(warnings) == 1 and "sub-01" in warnings[0], err


def test_moderate_iron_keeps_pdff_and_gives_no_pdff_warning(capsys, tmp_path):
    liver, mask, r2star, pdff, truth, err = _run(capsys, tmp_path, "1.5T", 500.0)
    assert mask[liver].mean() >= 0.99
    assert abs(np.median(r2star[liver]) / 500 - 1) < 0.10
    proper = truth["labels"] == IRON_TISSUES["liver"].label  # without its steatosis
    assert abs(np.median(pdff[proper]) - np.median(truth["PDFFmap"][proper])) < 0.03
    assert UNCERTAIN not in err, err
    provenance = json.loads((tmp_path / "out" / "sub-01" / "anat" / "sub-01_provenance.json").read_text())
    assert provenance["Mask"]["Details"]["DroppedAsNoise"] > 0  # the air


@pytest.mark.slow
def test_the_dual_networks_keep_pdff_in_a_moderately_iron_loaded_liver(capsys, tmp_path):
    """ssl at 500 1/s, 1.5 T, on benchmarks/liver_iron.py's phantom (6,960 liver voxels of 38,400):
    the dark liver is a minority that the bright tissue's gradient would leave under-fitted; with
    the plain NLL its steatosis, a near tie at the ML estimate, went to the fat side (0.94 for a
    truth of 0.20). (On the 32 x 32 x 2 phantom above the steatosis has 30 voxels and reads 0.04
    low even now, the fit 0.015 low.)"""
    liver, mask, r2star, pdff, truth, err = _run(capsys, tmp_path, "1.5T", 500.0, method="ssl", shape=(96, 96, 8))
    assert abs(np.median(r2star[liver]) / 500 - 1) < 0.10
    for label in (IRON_TISSUES["liver"].label, IRON_TISSUES["liver-steatosis"].label):
        region = truth["labels"] == label
        assert abs(np.median(pdff[region]) - np.median(truth["PDFFmap"][region])) < 0.03, label
