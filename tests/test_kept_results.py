"""Nothing finished is lost without --overwrite (issue 18): a call with other methods adds theirs
beside a finished run's and leaves its files as they were; one asking for nothing new skips it;
one with other options is refused; a call that fails or is interrupted while adding removes only
what it was writing; leftovers of a killed addition are cleared by the next one."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import raider_bids.estimators.conventional_fit as conventional_fit
from cli_checks import run_cli, snapshot
from raider_bids.bids_io.derivatives import DerivativesDataset
from raider_bids.experiments.demo import write_dataset

SHORT = ["--max-epochs", "2", "--patience", "2", "--nprocs", "1"]  # every call alike: training is an option


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kept") / "bids"
    write_dataset(root, shape=(14, 14, 2), subjects=("01",), seed=3)
    return root


def call(capsys, bids: Path, out: Path, *options: str) -> tuple[int, str]:
    return run_cli(capsys, [bids, out, "participant", *SHORT, *options])


def anat(out: Path) -> Path:
    return out / "sub-01" / "anat"


def volume(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def provenance(out: Path) -> dict:
    return json.loads((anat(out) / "sub-01_provenance.json").read_text())


def run_snapshot(out: Path) -> dict[str, str]:
    return snapshot(anat(out))


def test_another_method_is_added_and_the_finished_files_are_kept(capsys, template, tmp_path):
    out, alone = tmp_path / "out", tmp_path / "alone"
    code, err = call(capsys, template, out, "--method", "fit")
    assert code == 0, err
    finished = run_snapshot(out)

    code, err = call(capsys, template, out, "--method", "ssl")
    assert code == 0, err
    assert "finished with fit; adding ssl with the same options" in err
    now = run_snapshot(out)
    # Every file of the fit run is still there, byte for byte, but the provenance (which lists more).
    changed = [name for name, digest in finished.items() if now.get(name) != digest]
    assert changed == ["sub-01_provenance.json"], changed
    # The fit's maps under the plain names and as desc-fit; ssl's as desc-ssl.
    for suffix in ("PDFFmap", "R2starmap", "S0map", "LLRmap"):
        np.testing.assert_array_equal(volume(anat(out) / f"sub-01_desc-fit_{suffix}.nii.gz"),
                                      volume(anat(out) / f"sub-01_{suffix}.nii.gz"))
    # ssl added is ssl run on its own: same mask, noise level, seed, hence identical maps (CPU).
    code, err = call(capsys, template, alone, "--method", "ssl")
    assert code == 0, err
    for suffix in ("PDFFmap", "R2starmap", "S0map", "LLRmap", "SideProbmap", "PDFFsdmap"):
        np.testing.assert_array_equal(volume(anat(out) / f"sub-01_desc-ssl_{suffix}.nii.gz"),
                                      volume(anat(alone) / f"sub-01_{suffix}.nii.gz"), err_msg=suffix)
    record = provenance(out)
    assert list(record["Methods"]) == ["fit", "ssl"] and record["Configuration"]["methods"] == ["fit", "ssl"]
    assert record["Estimation"]["Method"] == "fit"  # the plain names stay the first call's method
    assert record["Methods"]["ssl"]["AddedBy"]["CommandLine"][-2:] == ["--method", "ssl"]
    assert "AddedBy" not in record["Methods"]["fit"]
    assert set(record["Comparison"]["Agreement"]) == {"ssl"}
    for key, name in record["Outputs"].items():
        assert (anat(out) / name).is_file(), key
    assert {"PDFFmap-ssl", "PDFFmap-fit", "weights-sslwater", "weights-sslfat"} <= set(record["Outputs"])
    assert (anat(out) / "sub-01_desc-ssl_PDFFmap.json").is_file()
    assert "ssl" in json.loads((anat(out) / "sub-01_desc-ssl_PDFFmap.json").read_text())["Description"]

    # Asking for methods it has (any order, a subset) skips the run and touches nothing.
    before = run_snapshot(out)
    for methods in (["ssl", "fit"], ["fit"], ["ssl"]):
        code, err = call(capsys, template, out, "--method", *methods)
        assert code == 0 and "already finished with the same options (fit, ssl" in err, err
    assert run_snapshot(out) == before
    assert not [p for p in out.rglob(".*") if p.name != ".bidsignore"]


def test_other_options_are_refused_and_overwrite_replaces(capsys, template, tmp_path):
    out = tmp_path / "out"
    code, err = call(capsys, template, out, "--method", "fit")
    assert code == 0, err
    before = run_snapshot(out)
    code, err = call(capsys, template, out, "--method", "fit", "supervised", "--random-seed", "1")
    assert code == 73, err
    error = [line for line in err.splitlines() if "[ERROR]" in line]
    assert len(error) == 1 and "Traceback" not in err
    assert "sub-01_provenance.json" in error[0] and "--random-seed 0 -> 1" in error[0] and "--overwrite" in error[0]
    assert run_snapshot(out) == before
    code, err = call(capsys, template, out, "--method", "fit", "--write-candidates")
    assert code == 73 and "--write-candidates False -> True" in err, err  # candidates the run lacks
    code, err = call(capsys, template, out, "--method", "fit", "--choice", "voxel", "--overwrite")
    assert code == 0 and "removing earlier outputs made with other options (--choice spatial -> voxel)" in err, err
    assert provenance(out)["Configuration"]["choice"] == "voxel"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, at a chosen point."""


def _fail_in_fit(monkeypatch) -> None:
    def fit(self, *args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(conventional_fit.ConventionalFit, "fit", fit)


def _interrupt_after_writing(monkeypatch) -> None:
    real = DerivativesDataset._write_weights

    def write_weights(self, *args, **kwargs):
        real(self, *args, **kwargs)  # the added method's maps (and the copies) are written ...
        raise Interrupted()  # ... and the call is stopped before the provenance lists them

    monkeypatch.setattr(DerivativesDataset, "_write_weights", write_weights)


@pytest.mark.parametrize("failure, code, says", [
    (_fail_in_fit, 1, "run sub-01 ran out of memory"),
    (_interrupt_after_writing, 130, "sub-01: stopped; the outputs it was writing were removed (its finished "
                                    "ones are kept)")], ids=["out-of-memory", "ctrl-c-after-writing"])
def test_a_failed_addition_removes_only_what_it_wrote(capsys, template, tmp_path, monkeypatch, failure, code, says):
    out = tmp_path / "out"
    assert call(capsys, template, out, "--method", "ssl")[0] == 0
    before = run_snapshot(out)
    with monkeypatch.context() as patch:
        failure(patch)
        exit_code, err = call(capsys, template, out, "--method", "fit")
    assert exit_code == code and says in err, err
    assert "Traceback" not in err
    assert run_snapshot(out) == before  # the ssl run untouched, nothing of fit's left
    assert not [p for p in out.rglob(".*") if p.name != ".bidsignore"]
    exit_code, err = call(capsys, template, out, "--method", "fit")
    assert exit_code == 0 and "adding fit" in err, err


def test_leftovers_of_a_killed_addition_are_cleared_by_the_next(capsys, template, tmp_path):
    out = tmp_path / "out"
    code, err = call(capsys, template, out, "--method", "fit")
    assert code == 0, err
    # What SIGKILL during an addition leaves: a map not yet in the provenance, a temporary file.
    (anat(out) / "sub-01_desc-supervised_PDFFmap.nii.gz").write_bytes(b"half a map")
    (anat(out) / ".sub-01_desc-supervised_S0map.nii.gz.k1l2m3.nii.gz").write_bytes(b"temporary")
    code, err = call(capsys, template, out, "--method", "fit")
    assert code == 0 and "already finished" in err, err  # still a finished fit run
    code, err = call(capsys, template, out, "--method", "supervised")
    assert code == 0 and "removing 2 file(s) left by an interrupted call" in err, err
    assert not [p for p in out.rglob(".*") if p.name != ".bidsignore"]
    pdff = volume(anat(out) / "sub-01_desc-supervised_PDFFmap.nii.gz")
    mask = volume(anat(out) / "sub-01_desc-foreground_mask.nii.gz") > 0
    assert np.all((pdff[mask] >= 0) & (pdff[mask] <= 1)) and np.ptp(pdff[mask]) > 0.3
