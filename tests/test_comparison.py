"""Agreement statistics between two methods, against values worked out by hand and a plain loop."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from raider_bids.cli import main
from raider_bids.reports.comparison import AGREEMENT, agreement
from raider_bids.experiments.demo import write_dataset


def test_agreement_of_a_hand_made_case():
    reference = {"pdff": [0.10, 0.20, 0.70, 0.90, 0.50], "r2star_s": [30, 40, 50, 60, 70], "s0": [100, 200, 0, 50, 10]}
    other = {"pdff": [0.15, 0.80, 0.70, 0.30, np.nan], "r2star_s": [35, 20, 50, 90, 70], "s0": [110, 100, 5, 50, 10]}
    stats = agreement(reference, other)
    assert set(stats) == set(AGREEMENT)
    assert stats["Voxels"] == 4  # the NaN voxel is left out of every statistic
    assert stats["SameSide"] == 0.5  # 0.10/0.15 and 0.70/0.70 agree; 0.20/0.80 and 0.90/0.30 do not
    assert stats["PDFFMedianAbsDifference"] == pytest.approx(0.325)  # median of 0.05, 0.6, 0, 0.6
    assert stats["PDFFMedianAbsDifferenceSameSide"] == pytest.approx(0.025)  # median of 0.05, 0
    assert stats["R2starMedianDifference"] == pytest.approx(2.5)  # median of 5, -20, 0, 30
    assert stats["R2starMedianAbsDifference"] == pytest.approx(12.5)  # median of 5, 20, 0, 30
    assert stats["S0MedianRelativeDifference"] == pytest.approx(0.0)  # 0.1, -0.5, 0 (S0_ref = 0 left out)


def test_agreement_matches_a_plain_loop():
    rng = np.random.default_rng(3)
    n = 501
    reference = {"pdff": rng.uniform(0, 1, n), "r2star_s": rng.uniform(0, 300, n), "s0": rng.uniform(0, 10, n)}
    other = {"pdff": rng.uniform(0, 1, n), "r2star_s": rng.uniform(0, 300, n), "s0": rng.uniform(0, 10, n)}
    stats = agreement(reference, other)
    same, dp, dp_same, dr, rel = 0, [], [], [], []
    for i in range(n):
        a, b = reference["pdff"][i], other["pdff"][i]
        agree = (a >= 0.58) == (b >= 0.58)
        same += agree
        dp.append(abs(b - a))
        if agree:
            dp_same.append(abs(b - a))
        dr.append(other["r2star_s"][i] - reference["r2star_s"][i])
        rel.append(other["s0"][i] / reference["s0"][i] - 1)
    assert stats["SameSide"] == pytest.approx(same / n)
    assert stats["PDFFMedianAbsDifference"] == pytest.approx(statistics.median(dp))
    assert stats["PDFFMedianAbsDifferenceSameSide"] == pytest.approx(statistics.median(dp_same))
    assert stats["R2starMedianDifference"] == pytest.approx(statistics.median(dr))
    assert stats["R2starMedianAbsDifference"] == pytest.approx(statistics.median([abs(d) for d in dr]))
    assert stats["S0MedianRelativeDifference"] == pytest.approx(statistics.median(rel))


def test_no_common_voxels_gives_none():
    empty = {"pdff": [], "r2star_s": [], "s0": []}
    stats = agreement(empty, empty)
    assert stats["Voxels"] == 0 and stats["SameSide"] is None and stats["R2starMedianDifference"] is None


# ---------------------------------------------------------------- several methods in one call

@pytest.fixture(scope="module")
def several(tmp_path_factory):
    root = tmp_path_factory.mktemp("several")
    write_dataset(root / "bids", shape=(16, 16, 2), subjects=("01",), seed=2)
    argv = [str(root / "bids"), str(root / "out"), "participant", "--method", "fit", "single", "fit",
            "--max-epochs", "2", "--nprocs", "2"]
    assert main(argv) == 0
    return root / "out"


def _load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj, dtype=np.float64)


def test_each_method_is_a_desc_variant_and_the_first_also_plain(several):
    anat = several / "sub-01" / "anat"
    for method in ("fit", "single"):
        for suffix in ("PDFFmap", "R2starmap", "S0map"):
            assert (anat / f"sub-01_desc-{method}_{suffix}.nii.gz").is_file()
        sidecar = json.loads((anat / f"sub-01_desc-{method}_PDFFmap.json").read_text())
        assert f"--method {method}" in sidecar["Description"]
    for suffix in ("PDFFmap", "R2starmap", "S0map", "LLRmap"):
        np.testing.assert_array_equal(_load(anat / f"sub-01_{suffix}.nii.gz"),
                                      _load(anat / f"sub-01_desc-fit_{suffix}.nii.gz"))
    assert (anat / "sub-01_desc-singlefull_weights.pt").is_file()  # the second method's network
    provenance = json.loads((anat / "sub-01_provenance.json").read_text())
    assert provenance["Configuration"]["methods"] == ["fit", "single"]  # the repeated fit runs once
    assert set(provenance["Methods"]) == {"fit", "single"}
    described = {line.split("\t")[0] for line in (several / "descriptions.tsv").read_text().splitlines()[1:]}
    used = {part for f in several.rglob("*") for part in f.name.split("_") if part.startswith("desc-")}
    assert used <= described, used - described


def test_the_recorded_agreement_is_that_of_the_written_maps(several):
    anat = several / "sub-01" / "anat"
    provenance = json.loads((anat / "sub-01_provenance.json").read_text())
    assert provenance["Comparison"]["Reference"] == "fit"
    stats = provenance["Comparison"]["Agreement"]["single"]
    mask = _load(anat / "sub-01_desc-foreground_mask.nii.gz") > 0
    ref = {k: _load(anat / f"sub-01_desc-fit_{s}.nii.gz")[mask] for k, s in
           (("pdff", "PDFFmap"), ("r2star_s", "R2starmap"), ("s0", "S0map"))}
    other = {k: _load(anat / f"sub-01_desc-single_{s}.nii.gz")[mask] for k, s in
             (("pdff", "PDFFmap"), ("r2star_s", "R2starmap"), ("s0", "S0map"))}
    same = np.mean((ref["pdff"] >= 0.58) == (other["pdff"] >= 0.58))
    assert stats["Voxels"] == mask.sum()
    # The maps are stored as float32: a voxel within rounding of 0.58 could flip; none does here.
    assert stats["SameSide"] == pytest.approx(same, abs=1.5 / mask.sum())
    assert stats["PDFFMedianAbsDifference"] == pytest.approx(np.median(np.abs(other["pdff"] - ref["pdff"])), abs=1e-6)
    assert stats["R2starMedianDifference"] == pytest.approx(np.median(other["r2star_s"] - ref["r2star_s"]), abs=1e-3)


def test_the_report_shows_the_differences(several):
    page = (several / "sub-01.html").read_text()
    assert "Methods compared with fit" in page
    for suffix in ("PDFFmap", "R2starmap"):
        figure = several / "sub-01" / "figures" / f"sub-01_{suffix}-single-minus-fit.png"
        assert figure.read_bytes()[:4] == b"\x89PNG" and figure.relative_to(several).as_posix() in page
    assert "share of voxels on the same side" in page


def test_several_methods_validate(several, bids_validator):
    bids_validator(several)


def test_the_group_level_summarises_every_method(several, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(several, out)
    assert main([str(several.parent / "bids"), str(out), "group"]) == 0
    lines = (out / "group_roistats.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"))) for line in lines[1:]]
    assert {(r["method"], r["map"]) for r in rows} == {(m, k) for m in ("fit", "single")
                                                       for k in ("PDFF", "R2star", "S0")}
    anat = out / "sub-01" / "anat"
    mask = _load(anat / "sub-01_desc-foreground_mask.nii.gz") > 0
    for method in ("fit", "single"):
        (row,) = [r for r in rows if r["method"] == method and r["map"] == "PDFF"]
        expected = np.median(_load(anat / f"sub-01_desc-{method}_PDFFmap.nii.gz")[mask])
        assert float(row["median"]) == pytest.approx(expected, rel=1e-6)
    page = (out / "group.html").read_text()
    for method in ("fit", "single"):  # a row of the ROI's numeric table per map and method
        assert f"<td>PDFF</td><td>fraction (0-1)</td><td>{method}</td>" in page
