"""Reruns judge a finished run by the content of the files its options name: a --mask or a
--fat-spectrum file edited in place makes the run's outputs stale, even with its size and
modification time kept (refused, then redone with --overwrite); an untouched one is skipped."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cli_checks import run_cli
from raider_bids.experiments.demo import AFFINE, write_dataset

SPECTRUM = {"ppm": [-3.4, -2.6, 0.6], "amplitudes": [0.7, 0.2, 0.1]}


@pytest.fixture
def inputs(tmp_path):
    truth = write_dataset(tmp_path / "bids", shape=(12, 12, 2), subjects=("01",), seed=2)["01"]
    mask = tmp_path / "mask.nii"  # uncompressed: an edit keeps its size exactly
    nib.save(nib.Nifti1Image((truth["labels"] > 0).astype(np.uint8), AFFINE), mask)
    spectrum = tmp_path / "spectrum.json"
    spectrum.write_text(json.dumps(SPECTRUM))
    return tmp_path / "bids", mask, spectrum


def _edit_in_place(path: Path, content: bytes) -> None:
    """New content of the same size, the old modification time put back (as rsync -t or a careful
    editor would leave it): only the content tells."""
    stat = path.stat()
    assert len(content) == stat.st_size and content != path.read_bytes()
    path.write_bytes(content)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_mask_and_spectrum_files_edited_in_place_redo_the_run(capsys, inputs, tmp_path):
    bids, plain, spectrum = inputs
    out = tmp_path / "out"
    argv = [bids, out, "participant", "--method", "fit", "--mask", plain, "--fat-spectrum", spectrum]
    code, err = run_cli(capsys, argv)
    assert code == 0, err
    provenance = json.loads((out / "sub-01" / "anat" / "sub-01_provenance.json").read_text())
    assert provenance["OptionFiles"] == {
        "mask_file": {"Path": str(plain), "Bytes": plain.stat().st_size,
                      "SHA256": hashlib.sha256(plain.read_bytes()).hexdigest()},
        "fat_spectrum": {"Path": str(spectrum), "Bytes": spectrum.stat().st_size,
                         "SHA256": hashlib.sha256(spectrum.read_bytes()).hexdigest()}}

    code, err = run_cli(capsys, argv)
    assert code == 0 and "already finished with the same options" in err

    img = nib.load(plain)
    data = np.asarray(img.dataobj).copy()
    data[tuple(np.argwhere(data > 0)[0])] = 0
    _edit_in_place(plain, nib.Nifti1Image(data, img.affine, img.header).to_bytes())
    code, err = run_cli(capsys, argv)
    assert code == 73 and "made from a mask or fat spectrum file whose content has changed since" in err, err
    assert "give --overwrite" in err
    code, err = run_cli(capsys, [*argv, "--overwrite"])
    assert code == 0 and "removing earlier outputs made from a mask or fat spectrum file" in err, err
    voxels = json.loads((out / "sub-01" / "anat" / "sub-01_provenance.json").read_text())["Mask"]["Voxels"]
    assert voxels == provenance["Mask"]["Voxels"] - 1

    _edit_in_place(spectrum, spectrum.read_bytes().replace(b"0.7", b"0.6"))
    code, err = run_cli(capsys, [*argv, "--overwrite"])
    assert code == 0 and "whose content has changed since" in err, err

    code, err = run_cli(capsys, argv)
    assert code == 0 and "already finished with the same options" in err


def test_the_same_files_at_other_paths_are_the_same_inputs(capsys, inputs, tmp_path):
    """Moved, or mounted elsewhere (a container): the content decides, not the path."""
    bids, mask, spectrum = inputs
    out, moved = tmp_path / "out", tmp_path / "moved"
    code, err = run_cli(capsys, [bids, out, "participant", "--method", "fit", "--mask", mask,
                                 "--fat-spectrum", spectrum])
    assert code == 0, err
    moved.mkdir()
    argv = [bids, out, "participant", "--method", "fit", "--mask", mask.rename(moved / mask.name),
            "--fat-spectrum", spectrum.rename(moved / spectrum.name)]
    code, err = run_cli(capsys, argv)
    assert code == 0 and "already finished with the same options" in err, err
    code, err = run_cli(capsys, [bids, out, "participant", "--method", "fit", "--mask", moved / mask.name])
    # the preset spectrum instead of the file
    assert code == 73 and "made with other options (--fat-spectrum a file -> hernando)" in err, err


def test_a_preset_spectrum_names_no_file(capsys, inputs, tmp_path):
    bids, _, _ = inputs
    out = tmp_path / "out"
    code, err = run_cli(capsys, [bids, out, "participant", "--method", "fit"])
    assert code == 0, err
    assert json.loads((out / "sub-01" / "anat" / "sub-01_provenance.json").read_text())["OptionFiles"] == {}
