"""Command-line error branches of raider-bids: every one must end, before any training, with its
BIDS-Apps exit code, one clear message on stderr (no traceback), the raw dataset untouched and no
half-written files in the output directory."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from cli_checks import assert_no_partial_files, assert_one_error, run_cli, snapshot
from raider_bids.cli import main
from raider_bids.cli.parser import build_parser, config_from_args
from raider_bids.experiments.demo import write_dataset

ROOT = Path(__file__).resolve().parents[1]
VERSION = (ROOT / "version").read_text().strip()
# Options that keep a run short should a check ever let it reach training.
FAST = ["--participant-label", "01", "--max-epochs", "1", "--patience", "1", "--sigma", "1"]
SHORT = FAST[2:]  # the same for calls that choose their participants themselves


# ---------------------------------------------------------------- fixtures and helpers

@pytest.fixture(scope="session")
def template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("template") / "bids"
    write_dataset(root, shape=(16, 16, 2), subjects=("01", "02"))
    return root


@pytest.fixture
def bids(template, tmp_path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "bids"))


# ---------------------------------------------------------------- --version, -v

def test_version_is_read_from_the_version_file(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"raider-bids {VERSION}"


def test_v_is_verbosity_not_version(capsys):
    args = build_parser().parse_args(["b", "o", "participant", "-vv"])
    assert args.verbose == 2
    code, err = run_cli(capsys, ["-v"])  # no positionals: a usage error, not the version
    assert code == 64 and VERSION not in capsys.readouterr().out
    assert_one_error(err, "required")


# ---------------------------------------------------------------- the command-line errors, one table

def _write(path: Path, content) -> None:
    path.write_text(content if isinstance(content, str) else json.dumps(content))


def _no_description(bids, tmp):
    (bids / "dataset_description.json").unlink()


def _symlink_to_bids(bids, tmp):
    (tmp / "link").symlink_to(bids, target_is_directory=True)


def _filter(spec):
    return lambda bids, tmp: _write(tmp / "filter.json", spec)


def _no_field_strength(bids, tmp):
    (bids / "MEGRE.json").unlink()


def _echo_time_ms(bids, tmp):
    _write(bids / "sub-01" / "anat" / "sub-01_echo-1_part-mag_MEGRE.json", {"EchoTime": 1.15})


def _bad_spectrum(bids, tmp):
    _write(tmp / "spectrum.json", {"ppm": [1.0, 2.0]})


def _phase_only(bids, tmp):
    for path in sorted(bids.rglob("*_part-mag_MEGRE.*")):
        path.rename(str(path).replace("_part-mag", "_part-phase"))


def _phase_only_sub01(bids, tmp):
    for path in sorted((bids / "sub-01").rglob("*_part-mag_MEGRE.*")):
        path.rename(str(path).replace("_part-mag", "_part-phase"))


def _empty_dataset(bids, tmp):
    for path in bids.iterdir():
        if path.name != "dataset_description.json":
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def _not_bids(bids, tmp):
    (tmp / "notbids").mkdir()
    (tmp / "notbids" / "scan.nii.gz").write_bytes(b"")


def _a_file(bids, tmp):
    (tmp / "afile").write_text("not a directory")


def _read_only_parent(bids, tmp):
    (tmp / "readonly").mkdir()
    (tmp / "readonly").chmod(0o555)


ROOT_WRITES_ANYWAY = pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="running as root, whom a read-only directory does not stop; out-under-a-file covers exit 73")


def error(name, argv, code, fragments, prepare=None, marks=()):
    """A call refused after parsing: argv and fragments with {bids}, {out} and {tmp} to fill in,
    prepare(bids, tmp) run first."""
    return pytest.param(argv, code, fragments, prepare, False, id=name, marks=marks)


def usage(name, argv, fragment):
    """A call argparse refuses: exit 64, with the usage."""
    return pytest.param(argv, 64, [fragment], None, True, id=name)


P = "participant"
# Every command-line error case, the whole call refused before anything is written. Runs where
# only some are refused (the others processed): tests/test_bad_input.py.
ERRORS = [
    # argparse usage errors
    usage("no-positionals", [], "required"),
    usage("no-level", ["{bids}", "{out}"], "required"),
    usage("sigma-negative", ["{bids}", "{out}", P, "--sigma", "-1"], "--sigma"),
    usage("sigma-text", ["{bids}", "{out}", P, "--sigma", "abc"], "--sigma"),
    usage("sigma-infinite", ["{bids}", "{out}", P, "--sigma", "inf"], "positive finite"),
    usage("field-strength-infinite", ["{bids}", "{out}", P, "--field-strength", "inf"], "positive finite"),
    usage("field-strength-millitesla", ["{bids}", "{out}", P, "--field-strength", "3000"], "give tesla"),
    usage("nprocs-0", ["{bids}", "{out}", P, "--nprocs", "0"], "--nprocs"),
    usage("fraction-1", ["{bids}", "{out}", P, "--validation-fraction", "1"], "--validation-fraction"),
    usage("method", ["{bids}", "{out}", P, "--method", "nope"], "--method"),
    usage("device-choice", ["{bids}", "{out}", P, "--device", "tpu"], "--device"),
    usage("unknown-option", ["{bids}", "{out}", P, "--bogus"], "--bogus"),
    usage("filter-file-missing", ["{bids}", "{out}", P, "--bids-filter-file", "{tmp}/none.json"], "none.json"),
    usage("mask-missing", ["{bids}", "{out}", P, "--mask", "{tmp}/none.nii.gz"], "none.nii.gz"),
    # analysis level
    error("unknown-level", ["{bids}", "{out}", "banana"], 17, ["analysis level 'banana' is unknown",
                                                               "participant, group"]),
    error("group-before-participant", ["{bids}", "{out}", "group"], 66,
          ["no participant-level outputs", "participant level first"]),
    # raw dataset
    error("bids-missing", ["{tmp}/nope", "{out}", P], 66, ["{tmp}/nope: the BIDS directory does not exist"]),
    error("bids-is-a-file", ["{tmp}/afile", "{out}", P], 66, ["{tmp}/afile: the BIDS directory is not a directory"],
          _a_file),
    error("not-bids", ["{tmp}/notbids", "{out}", P], 66, ["{tmp}/notbids: no dataset_description.json",
                                                          "root of a BIDS dataset"], _not_bids),
    error("no-description", ["{bids}", "{out}", P], 66, ["dataset_description.json"], _no_description),
    error("empty-dataset", ["{bids}", "{out}", P], 66, ["{bids}: the dataset holds no MEGRE images"], _empty_dataset),
    # output and work directories
    error("out-is-bids", ["{bids}", "{bids}", P], 64, ["output_dir", "is the BIDS directory"]),
    error("out-is-bids-dotdot", ["{bids}", "{bids}/../bids", P], 64, ["is the BIDS directory"]),
    error("out-symlink", ["{bids}", "{tmp}/link", P], 64, ["is the BIDS directory"], _symlink_to_bids),
    error("out-inside-bids", ["{bids}", "{bids}/out", P], 64, ["output_dir", "inside the BIDS dataset",
                                                              "derivatives"]),
    error("out-is-a-subject", ["{bids}", "{bids}/sub-01", P], 64, ["inside the BIDS dataset"]),
    error("out-in-subject", ["{bids}", "{bids}/sub-01/x", P], 64, ["inside the BIDS dataset"]),
    error("out-derivatives-lookalike", ["{bids}", "{bids}/derivatives-x", P], 64, ["inside the BIDS dataset"]),
    error("work-inside", ["{bids}", "{out}", P, "-w", "{bids}/work"], 64, ["--work-dir", "inside the BIDS dataset"]),
    error("work-is-bids", ["{bids}", "{out}", P, "--work-dir", "{bids}"], 64, ["--work-dir", "is the BIDS directory"]),
    error("out-is-a-file", ["{bids}", "{tmp}/afile", P], 64, ["output_dir {tmp}/afile is a file, not a directory"],
          _a_file),
    error("out-under-a-file", ["{bids}", "{tmp}/afile/out", P], 73, ["{tmp}/afile", "cannot write the output dataset"],
          _a_file),
    error("work-is-a-file", ["{bids}", "{out}", P, "-w", "{tmp}/afile"], 64,
          ["--work-dir {tmp}/afile is a file, not a directory"], _a_file),
    error("out-parent-read-only", ["{bids}", "{tmp}/readonly/out", P], 73, ["{tmp}/readonly/out", "Permission denied"],
          _read_only_parent, marks=ROOT_WRITES_ANYWAY),
    # output under bids_dir/derivatives passes the path check and fails later
    error("out-derivatives-ok", ["{bids}", "{bids}/derivatives/x", P, "--bids-filter-file", "{tmp}/filter.json"], 18,
          ["no magnitude MEGRE files"], _filter({"megre": {"acquisition": "nope"}})),
    error("out-derivatives-ok-label", ["{bids}", "{bids}/derivatives/x", P, "--participant-label", "03"], 64,
          ["03", "01, 02"]),
    # participant and session selection
    error("unknown-participant", ["{bids}", "{out}", P, "--participant-label", "03"], 64,
          ["participant label(s) 03", "it has: 01, 02"]),
    error("label-underscore-sub", ["{bids}", "{out}", P, "--participant_label", "sub-03"], 64, ["03", "01, 02"]),
    error("label-one-missing", ["{bids}", "{out}", P, "--participant-label", "01", "sub-04"], 64, ["04", "01, 02"]),
    error("unknown-session", ["{bids}", "{out}", P, "--session-label", "ses-1"], 64,
          ["session label(s) 1", "no sessions"]),
    # which files: --bids-filter-file, magnitude images
    error("filter-selects-nothing", ["{bids}", "{out}", P, "--bids-filter-file", "{tmp}/filter.json"], 18,
          ["no magnitude MEGRE files", "nope"], _filter({"megre": {"acquisition": "nope"}})),
    error("filter-not-json", ["{bids}", "{out}", P, "--bids-filter-file", "{tmp}/filter.json"], 64, ["filter.json"],
          _filter("{not json")),
    error("filter-unknown-query", ["{bids}", "{out}", P, "--bids-filter-file", "{tmp}/filter.json"], 64,
          ["filter.json", "t1w"], _filter({"t1w": {"acquisition": "x"}})),
    # pybids' own message named no file and advised a pybids argument
    error("filter-unknown-entity", ["{bids}", "{out}", P, "--bids-filter-file", "{tmp}/filter.json"], 64,
          ["filter.json", "'acq' is not a BIDS entity", "acquisition"], _filter({"megre": {"acq": "x"}})),
    error("phase-only", ["{bids}", "{out}", P], 18, ["no magnitude MEGRE files", "only part-phase files match",
                                                     "magnitude images"], _phase_only),
    error("phase-only-participant", ["{bids}", "{out}", P, "--participant-label", "01"], 18,
          ["no magnitude MEGRE files", "part-phase"], _phase_only_sub01),
    # sidecars (one participant: each unusable run gets its own error line)
    error("no-field-strength", ["{bids}", "{out}", P, "--participant-label", "01"], 66,
          ["MagneticFieldStrength", "--field-strength"], _no_field_strength),
    error("field-strength-given", ["{bids}", "{out}", P, "--field-strength", "3", "--fat-spectrum", "nonsense"], 64,
          ["--fat-spectrum nonsense"], _no_field_strength),
    error("echo-time-ms", ["{bids}", "{out}", P, "--participant-label", "01"], 65,
          ["sub-01_echo-1_part-mag_MEGRE", "milliseconds"], _echo_time_ms),
    # options checked by the workflow
    error("fat-spectrum-name", ["{bids}", "{out}", P, "--fat-spectrum", "nonsense"], 64,
          ["--fat-spectrum nonsense", "hernando"]),
    error("fat-spectrum-file", ["{bids}", "{out}", P, "--fat-spectrum", "{tmp}/spectrum.json"], 65, ["spectrum.json"],
          _bad_spectrum),
    error("no-cuda", ["{bids}", "{out}", P, "--device", "cuda"], 64, ["--device cuda"],
          marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible")),
]


@pytest.mark.parametrize("argv, code, fragments, prepare, shows_usage", ERRORS)
def test_errors(capsys, bids, tmp_path, argv, code, fragments, prepare, shows_usage):
    """The exit code, one error line holding every fragment, no traceback, and nothing written:
    neither the output nor anything else (the raw dataset included)."""
    tmp, bids = tmp_path.resolve(), bids.resolve()

    def fill(text: str) -> str:
        return text.format(bids=bids, tmp=tmp, out=tmp / "out")

    if prepare:
        prepare(bids, tmp)
    before = snapshot(tmp)
    try:
        got, err = run_cli(capsys, [fill(a) for a in argv] + SHORT)
        assert got == code, err
        if shows_usage:
            assert "usage:" in err, err
        assert_one_error(err, *map(fill, fragments))
        assert snapshot(tmp) == before
    finally:
        if (tmp / "readonly").exists():
            (tmp / "readonly").chmod(0o755)


def test_output_holding_another_dataset_exits_73(capsys, bids, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    desc = out / "dataset_description.json"
    _write(desc, {"Name": "fMRIPrep outputs", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
                  "GeneratedBy": [{"Name": "fmriprep", "Version": "24.1.0"}]})
    before_raw, before_out = snapshot(bids), snapshot(out)
    code, err = run_cli(capsys, [bids, out, P, *FAST])
    assert code == 73
    assert_one_error(err, str(desc), "fmriprep")
    assert snapshot(bids) == before_raw
    assert snapshot(out) == before_out  # nothing added, dataset_description.json unchanged


def test_mask_of_wrong_shape_exits_65(capsys, bids, tmp_path):
    mask = tmp_path / "mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 2), dtype=np.uint8), np.eye(4)), mask)
    before = snapshot(bids)
    code, err = run_cli(capsys, [bids, tmp_path / "out", P, "--mask", mask, *FAST])
    assert code == 65
    assert_one_error(err, str(mask), "(8, 8, 2)", "(16, 16, 2)")
    assert snapshot(bids) == before
    assert not list((tmp_path / "out").rglob("*.nii.gz"))
    assert_no_partial_files(tmp_path / "out")


def test_second_call_does_not_log_into_previous_work_dir(capsys, bids, tmp_path):
    _write(tmp_path / "filter.json", {"megre": {"acquisition": "nope"}})
    work = tmp_path / "work"
    code, _ = run_cli(capsys, [bids, tmp_path / "out", P, "-w", work, "--bids-filter-file", tmp_path / "filter.json"])
    assert code == 18 and "no magnitude MEGRE files" in (work / "raider-bids.log").read_text()
    code, err = run_cli(capsys, [bids, tmp_path / "out", "banana"])
    assert code == 17 and "banana" in err
    assert "banana" not in (work / "raider-bids.log").read_text()


# ---------------------------------------------------------------- the real entry point

def test_run_py_subprocess_exit_code(bids, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), str(bids), str(bids), P],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MPLCONFIGDIR": str(tmp_path / "mpl")})
    assert proc.returncode == 64, proc.stderr
    assert "Traceback" not in proc.stderr
    assert_one_error(proc.stderr, "is the BIDS directory")


@pytest.mark.parametrize("argv, expected", [
    ([], {"batch_size": 1024, "learning_rate": 1e-2, "steps_per_epoch": 100, "max_epochs": 80,
          "budget_passes": 6.0, "min_epochs": 25, "budget_lr_power": 0.5}),
    # an explicit --learning-rate is used as given, whatever the budget
    (["--learning-rate", "3e-3"], {"learning_rate": 3e-3, "budget_passes": 6.0, "budget_lr_power": None}),
    (["--training", "paper"], {"batch_size": 128, "learning_rate": 1e-3, "steps_per_epoch": None,
                               "max_epochs": 1000, "final_lr_fraction": None}),
    (["--training", "paper", "--batch-size", "256"], {"batch_size": 256, "learning_rate": 1e-3}),
    # an explicit --max-epochs is the budget, whatever the number of voxels
    (["--max-epochs", "7", "--patience", "3"], {"batch_size": 1024, "max_epochs": 7, "patience": 3,
                                                "budget_passes": None}),
])
def test_training_presets_and_overrides(tmp_path, argv, expected):
    full = [str(tmp_path / "bids"), str(tmp_path / "out"), "participant", *argv]
    config = config_from_args(build_parser().parse_args(full), full)
    for key, value in expected.items():
        assert getattr(config.training, key) == value, key


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_raised_inside_a_finaliser_still_stops_with_its_code(capsys, bids, tmp_path, monkeypatch,
                                                                      signum, code):
    """Python prints and ignores an exception raised while it runs a finaliser (Ctrl-C landing in
    a weakref callback as the reports start), and the work goes on; the call must still exit with
    the signal's code, not 0."""
    import raider_bids.workflows.participant as workflow

    class Finalised:
        def __del__(self):
            signal.raise_signal(signum)  # its handler runs here, inside the finaliser
            sum(range(100))

    def participant(config, reporter):
        Finalised()  # collected at once
        return None  # not read: the signal stops the call first

    swallowed = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: swallowed.append(unraisable.exc_type))
    monkeypatch.setattr(workflow, "participant", participant)
    got, err = run_cli(capsys, [bids, tmp_path / "out", P, "--method", "fit"])
    assert len(swallowed) == 1  # the case itself: the signal's exception was ignored in the finaliser
    assert got == code, err
    assert ("interrupted" if signum == signal.SIGINT else "terminated") in err
