"""Issue 7, "Bad input", at the command line: one test per case of the issue's checklist.

Each refusal ends with one error line naming the file (or the option) and the problem, its
BIDS-Apps exit code, no traceback, the raw dataset byte for byte unchanged, and no output of the
refused run nor any temporary file in the output directory. Where only one run is bad (sub-01),
the other participant (sub-02) is still processed, and the exit code is still that of the bad run.
An ROI on another grid at the group level: tests/test_group.py::test_roi_errors_exit_65. Whole
calls refused before anything is written (no magnitude images, no dataset, an output path that
cannot be written, ...): tests/test_cli.py::test_errors, the one table of command-line errors.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cli_checks import assert_no_partial_files, assert_one_error, run_cli, snapshot
from raider_bids.bids_io import raw as bids_io
from raider_bids.workflows import participant as workflows
from raider_bids.experiments.demo import AFFINE, ECHO_TIMES_S, write_dataset

P = "participant"
SHAPE = (16, 16, 2)
FAST = ["--method", "fit"]  # the conventional fit: trains nothing, well under a second per run
MAPS = ("PDFFmap", "R2starmap", "S0map")
_REPORTS = workflows.write_participant_reports


# ---------------------------------------------------------------- fixtures and helpers

@pytest.fixture(autouse=True)
def _no_reports(monkeypatch):
    # The HTML reports (tests/test_reports.py) cost ~1.4 s per participant, most of this file's
    # time; tests that want them ask for `with_reports`.
    monkeypatch.setattr(workflows, "write_participant_reports", lambda config, dataset, subjects: None)


@pytest.fixture
def with_reports(monkeypatch):
    monkeypatch.setattr(workflows, "write_participant_reports", _REPORTS)


@pytest.fixture(scope="session")
def template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad-input") / "bids"
    write_dataset(root, shape=SHAPE, subjects=("01", "02"))
    return root


@pytest.fixture
def bids(template, tmp_path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "bids")).resolve()


@pytest.fixture
def out(tmp_path) -> Path:
    return tmp_path.resolve() / "out"


def echo(bids: Path, i: int, sub: str = "01", ext: str = ".nii.gz", part: str = "mag") -> Path:
    return bids / f"sub-{sub}" / "anat" / f"sub-{sub}_echo-{i}_part-{part}_MEGRE{ext}"


def sidecar(bids: Path, i: int, sub: str = "01") -> Path:
    return echo(bids, i, sub, ".json")


def read(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj, dtype=np.float64)


def save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> None:
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), affine), path)


def edit_sidecar(path: Path, **meta) -> None:
    """Set keys of a JSON sidecar; None deletes the key."""
    content = json.loads(path.read_text())
    content.update(meta)
    path.write_text(json.dumps({k: v for k, v in content.items() if v is not None}))


def write_mask(path: Path) -> Path:
    """A user mask on the template's grid: a box inside the body (background voxels, pure noise,
    would only slow the fit down)."""
    box = np.zeros(SHAPE, np.uint8)
    box[5:11, 5:11] = 1
    nib.save(nib.Nifti1Image(box, AFFINE), path)
    return path


def shifted(mm: float) -> np.ndarray:
    affine = AFFINE.copy()
    affine[0, 3] += mm
    return affine


def files_of(out: Path, run: str) -> list[str]:
    return [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and run in p.name] \
        if out.is_dir() else []


def assert_processed(out: Path, *subjects: str) -> None:
    for sub in subjects:
        anat = out / f"sub-{sub}" / "anat"
        for name in (*MAPS, "desc-foreground_mask"):
            assert (anat / f"sub-{sub}_{name}.nii.gz").is_file(), (sub, name)
        assert (anat / f"sub-{sub}_provenance.json").is_file(), sub


def assert_run_refused(code: int, err: str, out: Path, *, expected: int, fragments: list[str],
                       failed: str = "sub-01", processed: str = "02") -> None:
    """One run refused, with its own code and one error line; the other processed."""
    assert code == expected, err
    assert_one_error(err, *fragments)
    assert "1 run(s) processed" in err and f"1 failed ({failed})" in err, err
    assert not files_of(out, failed)
    assert_no_partial_files(out)
    assert_processed(out, processed)


def assert_accepted(code: int, err: str, out: Path, subjects=("01", "02")) -> None:
    assert code == 0, err
    assert "[ERROR]" not in err and "Traceback" not in err, err
    assert_no_partial_files(out)
    assert_processed(out, *subjects)


def provenance(out: Path, sub: str = "01") -> dict:
    return json.loads((out / f"sub-{sub}" / "anat" / f"sub-{sub}_provenance.json").read_text())


# ---------------------------------------------------------------- one run unusable, the other processed

def _no_echo_time(bids):
    edit_sidecar(sidecar(bids, 3), EchoTime=None)
    return 66, [str(echo(bids, 3)), "no EchoTime"]


def _echo_time(value):
    def prepare(bids):
        edit_sidecar(sidecar(bids, 3), EchoTime=value)
        return 65, [str(echo(bids, 3)), f"EchoTime {value!r} is not a number"]
    return prepare


def _echo_times_in_ms(bids):
    for i, te in enumerate(ECHO_TIMES_S, 1):
        edit_sidecar(sidecar(bids, i), EchoTime=round(te * 1e3, 4))
    return 65, [f"{bids}/sub-01/anat/sub-01_echo-", "looks like milliseconds", "seconds"]


def _echo_times_in_microseconds_as_seconds(bids):
    for i, te in enumerate(ECHO_TIMES_S, 1):
        edit_sidecar(sidecar(bids, i), EchoTime=te * 1e-3)
    return 65, [f"{bids}/sub-01/anat/sub-01_echo-", "shorter than any MRI echo time", "seconds"]


def _nii_and_nii_gz_copies(bids):
    nib.save(nib.load(echo(bids, 2)), str(echo(bids, 2)).removesuffix(".gz"))  # the same echo, uncompressed
    return 65, ["sub-01_echo-2_part-mag_MEGRE.nii", "same EchoTime", ".nii and .nii.gz copies"]


def _duplicate_echo_time(bids):
    edit_sidecar(sidecar(bids, 4), EchoTime=ECHO_TIMES_S[1])
    return 65, [str(echo(bids, 4)), "same EchoTime", echo(bids, 2).name]


def _unsorted_duplicate_echo_times(bids):
    # Files in reverse echo-time order, and echo-6 with echo-2's time: equal once sorted.
    tes = ECHO_TIMES_S[::-1][:5] + (ECHO_TIMES_S[4],)
    for i, te in enumerate(tes, 1):
        edit_sidecar(sidecar(bids, i), EchoTime=te)
    return 65, [str(echo(bids, 6)), "same EchoTime", echo(bids, 2).name]


def _magnitude_with_and_without_part(bids):
    for i in range(1, 7):  # the same echoes again without part-mag: the same run, twice each echo time
        for ext in (".nii.gz", ".json"):
            shutil.copy(echo(bids, i, ext=ext), str(echo(bids, i, ext=ext)).replace("_part-mag", ""))
    return 65, ["sub-01_echo-", "same EchoTime", "mixed part-mag and part-less"]


def _three_echoes(bids):
    for i in (4, 5, 6):
        echo(bids, i).unlink()
        sidecar(bids, i).unlink()
    return 65, [str(bids / "sub-01" / "anat"), "run sub-01 has 3 echoes", "at least 4"]


def _other_shape(bids):
    save(echo(bids, 3), np.ones((16, 16, 3)))
    return 65, [str(echo(bids, 3)), "shape (16, 16, 3)", "(16, 16, 2)"]


def _other_affine(bids):
    save(echo(bids, 3), read(echo(bids, 3)), shifted(0.5))
    return 65, [str(echo(bids, 3)), "affine differs", "by up to 0.5 mm"]


def _four_d(bids):
    save(echo(bids, 3), np.stack([read(echo(bids, 3))] * 3, axis=-1))
    return 65, [str(echo(bids, 3)), "4-D image of 3 volumes", "one 3-D file per echo"]


def _all_echoes_in_one_4d_file(bids):
    # The whole run as one 4-D file with the list of echo times in its sidecar: said so, not read
    # as an echo whose EchoTime is not a number.
    stack = np.stack([read(echo(bids, i)) for i in range(1, 7)], axis=-1)
    for i in range(1, 7):
        echo(bids, i).unlink()
        sidecar(bids, i).unlink()
    whole = bids / "sub-01" / "anat" / "sub-01_part-mag_MEGRE.nii.gz"
    save(whole, stack)
    (bids / "sub-01" / "anat" / "sub-01_part-mag_MEGRE.json").write_text(json.dumps({"EchoTime": list(ECHO_TIMES_S)}))
    return 65, [str(whole), "4-D image of 6 volumes", "one 3-D file per echo"]


def _field_strength(value, fragment):
    def prepare(bids):
        for i in range(1, 7):  # sub-01's own sidecars override the dataset's 3 T
            edit_sidecar(sidecar(bids, i), MagneticFieldStrength=value)
        return 65, [str(bids / "sub-01" / "anat" / "sub-01_echo-"), "MagneticFieldStrength", fragment]
    return prepare


def _negative(bids):
    data = read(echo(bids, 2))
    data[8, 8, 0] = -5
    save(echo(bids, 2), data)
    return 65, [str(echo(bids, 2)), "1 negative value", "magnitude"]


def _all_zero(bids):
    save(echo(bids, 2), np.zeros(SHAPE))
    return 65, [str(echo(bids, 2)), "all zeros"]


def _all_nan(bids):
    save(echo(bids, 2), np.full(SHAPE, np.nan))
    return 65, [str(echo(bids, 2)), "no positive finite value"]


def _constant_images(bids):
    for i in range(1, 7):  # every voxel and echo alike: no residual to estimate the noise from
        save(echo(bids, i), np.full(SHAPE, 100.0))
    return 65, [str(bids / "sub-01" / "anat"), "run sub-01", "noise estimate failed", "constant"]


def _no_field_strength(bids):
    (bids / "MEGRE.json").unlink()  # the top-level sidecar; sub-02 gets its own
    (bids / "sub-02" / "sub-02_MEGRE.json").write_text(json.dumps({"MagneticFieldStrength": 3}))
    return 66, [str(echo(bids, 1)), "no MagneticFieldStrength", "--field-strength"]


def _not_a_nifti(bids):
    echo(bids, 2).write_bytes(b"not a NIfTI file")
    return 65, [str(echo(bids, 2)), "cannot read the NIfTI image"]


def _truncated(bids):
    content = echo(bids, 2).read_bytes()
    echo(bids, 2).write_bytes(content[: len(content) // 2])
    return 65, [str(echo(bids, 2)), "cannot read the NIfTI image"]


def _gzip_of_garbage(bids):
    echo(bids, 2).write_bytes(gzip.compress(b"\0" * 400))  # a valid gzip holding no NIfTI header
    return 65, [str(echo(bids, 2)), "cannot read the NIfTI image"]


@pytest.mark.parametrize("prepare", [
    pytest.param(_no_echo_time, id="echo-time-missing"),
    pytest.param(_echo_time("abc"), id="echo-time-text"),
    pytest.param(_echo_time([0.001, 0.002]), id="echo-time-list"),
    pytest.param(_echo_times_in_ms, id="echo-time-in-ms"),
    pytest.param(_echo_time(True), id="echo-time-boolean"),
    pytest.param(_echo_times_in_microseconds_as_seconds, id="echo-time-too-short"),
    pytest.param(_nii_and_nii_gz_copies, id="echo-as-nii-and-nii-gz"),
    pytest.param(_duplicate_echo_time, id="echo-time-duplicate"),
    pytest.param(_unsorted_duplicate_echo_times, id="echo-time-unsorted-duplicate"),
    pytest.param(_magnitude_with_and_without_part, id="echo-time-duplicate-part-and-no-part"),
    pytest.param(_three_echoes, id="fewer-than-4-echoes"),
    pytest.param(_other_shape, id="echo-of-other-shape"),
    pytest.param(_other_affine, id="echo-of-other-affine"),
    pytest.param(_four_d, id="echo-4d"),
    pytest.param(_all_echoes_in_one_4d_file, id="run-in-one-4d-file"),
    pytest.param(_field_strength(0, "positive number of tesla"), id="field-strength-zero"),
    pytest.param(_field_strength(-3, "positive number of tesla"), id="field-strength-negative"),
    pytest.param(_field_strength(float("nan"), "positive number of tesla"), id="field-strength-nan"),
    pytest.param(_field_strength(3000, "millitesla"), id="field-strength-in-millitesla"),
    pytest.param(_negative, id="negative-value"),
    pytest.param(_all_zero, id="all-zero-image"),
    pytest.param(_all_nan, id="all-nan-image"),
    pytest.param(_no_field_strength, id="field-strength-missing"),
    pytest.param(_constant_images, id="constant-images"),
    pytest.param(_not_a_nifti, id="corrupt-nifti-garbage"),
    pytest.param(_truncated, id="corrupt-nifti-truncated"),
    pytest.param(_gzip_of_garbage, id="corrupt-nifti-no-header"),
])
def test_bad_run_is_refused_and_the_others_processed(capsys, bids, out, prepare):
    expected, fragments = prepare(bids)
    before = snapshot(bids)
    code, err = run_cli(capsys, [bids, out, P, *FAST])
    assert_run_refused(code, err, out, expected=expected, fragments=fragments)
    assert snapshot(bids) == before


@pytest.mark.parametrize("variant", ["shape", "affine"])
def test_mask_on_another_grid_is_refused(capsys, bids, out, tmp_path, variant):
    mask = write_mask(tmp_path / "mask.nii.gz")  # on sub-01's grid
    for i in range(1, 7):  # sub-02 on another grid
        path = echo(bids, i, "02")
        if variant == "shape":
            save(path, read(path)[:, :14])
        else:
            save(path, read(path), shifted(2.0))
    fragments = {"shape": ["mask shape (16, 16, 2)", "image shape (16, 14, 2)"],
                 "affine": ["mask affine differs", "by up to 2 mm"]}[variant]
    before = snapshot(bids)
    code, err = run_cli(capsys, [bids, out, P, "--mask", mask, *FAST])
    assert_run_refused(code, err, out, expected=65, fragments=[str(mask), echo(bids, 1, "02").name, *fragments],
                       failed="sub-02", processed="01")
    assert provenance(out)["Mask"]["Source"] == f"user: {mask}"
    assert snapshot(bids) == before


# ---------------------------------------------------------------- odd but usable input

def test_unsorted_echo_files_are_ordered_by_echo_time(capsys, bids, out, tmp_path):
    """Echo indices in another order than the echo times: the same maps as the sorted dataset."""
    code, err = run_cli(capsys, [bids, tmp_path / "sorted", P, "--participant-label", "01", *FAST])
    assert code == 0, err
    order = (4, 1, 6, 2, 5, 3)  # file echo-<order[k]> holds the k-th echo
    for ext in (".nii.gz", ".json"):
        aside = [echo(bids, k + 1, ext=ext).rename(bids / f"echo{k}{ext}") for k in range(6)]
        for path, index in zip(aside, order):
            path.rename(echo(bids, index, ext=ext))
    before = snapshot(bids)
    code, err = run_cli(capsys, [bids, out, P, *FAST])
    assert_accepted(code, err, out)
    assert snapshot(bids) == before
    recorded = provenance(out)
    assert recorded["EchoTime"] == list(ECHO_TIMES_S)
    assert recorded["Inputs"] == [f"bids:raw:sub-01/anat/sub-01_echo-{i}_part-mag_MEGRE.nii.gz" for i in order]
    for name in (*MAPS, "desc-foreground_mask"):
        np.testing.assert_array_equal(read(out / "sub-01" / "anat" / f"sub-01_{name}.nii.gz"),
                                      read(tmp_path / "sorted" / "sub-01" / "anat" / f"sub-01_{name}.nii.gz"), name)


def _singleton_fourth_axis(bids):
    for i in (1, 3):  # echo 1's image is also the reference of the outputs' geometry
        save(echo(bids, i), read(echo(bids, i))[..., None])
    return []


def _affine_within_tolerance(bids):
    save(echo(bids, 3), read(echo(bids, 3)), shifted(1e-5))
    return []


def _field_strength_option(bids):
    (bids / "MEGRE.json").unlink()
    return ["--field-strength", "2.89"]


def _phase_beside_magnitude(bids):
    for i in range(1, 7):  # phase in radians: negative values, which load_run would refuse
        save(echo(bids, i, part="phase"), np.full(SHAPE, -np.pi / i))
        shutil.copy(sidecar(bids, i), echo(bids, i, ext=".json", part="phase"))
    return []


@pytest.mark.parametrize("prepare", [
    pytest.param(_singleton_fourth_axis, id="4d-singleton"),
    pytest.param(_affine_within_tolerance, id="affine-within-1e-3-mm"),
    pytest.param(_field_strength_option, id="field-strength-missing-but-given"),
    pytest.param(_phase_beside_magnitude, id="magnitude-and-phase"),
])
def test_usable_variants_are_accepted(capsys, bids, out, prepare):
    options = prepare(bids)
    before = snapshot(bids)
    code, err = run_cli(capsys, [bids, out, P, *options, "--participant-label", "01", *FAST])
    assert_accepted(code, err, out, subjects=("01",))
    assert snapshot(bids) == before
    recorded = provenance(out)
    assert recorded["Inputs"] == [f"bids:raw:sub-01/anat/sub-01_echo-{i}_part-mag_MEGRE.nii.gz" for i in range(1, 7)]
    assert recorded["MagneticFieldStrength"] == (2.89 if options else 3.0)
    assert nib.load(out / "sub-01" / "anat" / "sub-01_PDFFmap.nii.gz").shape == SHAPE


@pytest.mark.parametrize("user_mask", [False, True], ids=["automatic-mask", "user-mask"])
def test_non_finite_voxels_are_masked_not_fitted(capsys, bids, out, tmp_path, request, user_mask):
    """NaN and +-Inf: left out of the mask with a warning naming the file and the count, 0 in the
    maps, never fitted (as zeros would be) nor propagated."""
    if not user_mask:
        request.getfixturevalue("with_reports")  # the report draws echo 1, which holds a NaN
    bad = {1: ((8, 8, 0), np.nan), 4: ((6, 8, 1), np.inf), 5: ((8, 6, 0), -np.inf)}
    for i, (voxel, value) in bad.items():
        data = read(echo(bids, i))
        data[voxel] = value
        save(echo(bids, i), data)
    options = ["--mask", write_mask(tmp_path / "mask.nii.gz")] if user_mask else []
    before = snapshot(bids)
    code, err = run_cli(capsys, [bids, out, P, *options, "--participant-label", "01", *FAST])
    assert_accepted(code, err, out, subjects=("01",))
    assert snapshot(bids) == before
    warnings = [line for line in err.splitlines() if "[WARNING]" in line]
    assert len(warnings) == 3, err
    for line, i in zip(warnings, bad):
        assert str(echo(bids, i)) in line and "1 voxel(s) with NaN or Inf" in line and "left out of the mask" in line
    anat = out / "sub-01" / "anat"
    mask = read(anat / "sub-01_desc-foreground_mask.nii.gz") > 0
    assert mask.sum() > (30 if user_mask else 100)
    for voxel, _ in bad.values():
        assert not mask[voxel]
    for name in MAPS:
        values = read(anat / f"sub-01_{name}.nii.gz")
        assert np.isfinite(values).all(), name
        assert all(values[voxel] == 0 for voxel, _ in bad.values()), name
    assert provenance(out)["Mask"]["Voxels"] == int(mask.sum())
    if not user_mask:
        assert (out / "sub-01.html").is_file()


def test_output_under_bids_derivatives_works(capsys, bids, with_reports):
    out = bids / "derivatives" / "raider-bids"
    before = snapshot(bids)
    code, err = run_cli(capsys, [bids, out, P, *FAST])
    assert_accepted(code, err, out)
    assert (out / "sub-01.html").is_file() and (out / "sub-02.html").is_file()
    after = snapshot(bids)
    assert {k: v for k, v in after.items() if not k.startswith("derivatives")} == before


# ---------------------------------------------------------------- labels refused before reading

@pytest.mark.parametrize("option, label", [
    ("--participant-label", "../x"),
    ("--participant-label", "sub-01/../02"),
    ("--participant-label", "/etc"),
    ("--participant-label", "0/1"),
    ("--participant-label", "*"),
    ("--participant-label", "0?"),
    ("--participant-label", "01 "),
    ("--participant-label", "0 1"),
    ("--participant-label", "0\t1"),
    ("--participant-label", ""),
    ("--participant-label", "sub-"),
    ("--participant-label", "sub-01_ses-1"),
    ("--session-label", "../1"),
    ("--session-label", "ses-*"),
])
def test_labels_that_are_not_bids_labels_are_refused_before_reading(capsys, monkeypatch, bids, tmp_path, option,
                                                                    label):
    def read_dataset(*args):
        raise AssertionError("the dataset was read")

    monkeypatch.setattr(bids_io, "_layout", read_dataset)
    before = snapshot(tmp_path)
    code, err = run_cli(capsys, [bids, tmp_path / "out", P, f"{option}={label}", *FAST])
    assert code == 64, err
    assert_one_error(err, f"{option} {label!r}", "not a BIDS label")
    assert snapshot(tmp_path) == before  # nothing written, inside the output or outside it


def test_label_with_dots_also_refused_at_the_group_level(capsys, bids, tmp_path):
    """The group level reads only the outputs, but a label must not become a path there either."""
    out = tmp_path / "out"
    code, err = run_cli(capsys, [bids, out, P, "--participant-label", "02", *FAST])
    assert code == 0, err
    before = snapshot(tmp_path)
    code, err = run_cli(capsys, [bids, out, "group", "--participant-label=../x"])
    assert code == 64, err
    assert_one_error(err, "--participant-label '../x'", "not a BIDS label")
    assert snapshot(tmp_path) == before


def test_a_run_whose_output_folder_cannot_be_written_fails_alone(capsys, bids, out):
    """OUT is writable but sub-01's folder is not (a file is in the way): sub-01 fails with 73 and
    one line, sub-02 is processed."""
    (out / "sub-01").mkdir(parents=True)
    (out / "sub-01" / "anat").write_text("in the way")
    code, err = run_cli(capsys, [bids, out, P, *FAST])
    assert code == 73, err
    assert_one_error(err, str(out / "sub-01" / "anat"), "cannot write")
    assert "1 run(s) processed" in err and "1 failed (sub-01)" in err
    assert_processed(out, "02")
    assert_no_partial_files(out)
