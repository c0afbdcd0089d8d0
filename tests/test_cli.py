"""Command-line error branches of raider-bids: every one must end, before any training, with its
BIDS-Apps exit code, one clear message on stderr (no traceback), the raw dataset untouched and no
half-written files in the output directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from cli_checks import assert_no_partial_files, assert_one_error, reset_logger, run_cli, snapshot
from raider_bids.cli import main
from raider_bids.cli.parser import build_parser, config_from_args
from raider_bids.experiments.demo import write_dataset

ROOT = Path(__file__).resolve().parents[1]
VERSION = (ROOT / "version").read_text().strip()
# Options that keep a run short should a check ever let it reach training.
FAST = ["--participant-label", "01", "--max-epochs", "1", "--patience", "1", "--sigma", "1"]


# ---------------------------------------------------------------- fixtures and helpers

@pytest.fixture(autouse=True)
def _isolate(monkeypatch, tmp_path):
    # main() does os.environ.setdefault("MPLCONFIGDIR", ...): keep it from leaking between tests.
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path / "mpl"))
    reset_logger()
    yield
    reset_logger()


@pytest.fixture(scope="session")
def template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("template") / "bids"
    write_dataset(root, shape=(16, 16, 2), subjects=("01", "02"))
    return root


@pytest.fixture
def bids(template, tmp_path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "bids"))


def fill(argv, bids: Path, tmp_path: Path) -> list[str]:
    return [a.format(bids=bids, tmp=tmp_path, out=tmp_path / "out") for a in argv]


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


# ---------------------------------------------------------------- argparse usage errors -> 64

@pytest.mark.parametrize("argv, fragment", [
    pytest.param([], "required", id="no-positionals"),
    pytest.param(["{bids}", "{out}"], "required", id="no-level"),
    pytest.param(["{bids}", "{out}", "participant", "--sigma", "-1"], "--sigma", id="sigma-negative"),
    pytest.param(["{bids}", "{out}", "participant", "--sigma", "abc"], "--sigma", id="sigma-text"),
    pytest.param(["{bids}", "{out}", "participant", "--nprocs", "0"], "--nprocs", id="nprocs-0"),
    pytest.param(["{bids}", "{out}", "participant", "--validation-fraction", "1"], "--validation-fraction",
                 id="fraction-1"),
    pytest.param(["{bids}", "{out}", "participant", "--method", "nope"], "--method", id="method"),
    pytest.param(["{bids}", "{out}", "participant", "--device", "tpu"], "--device", id="device-choice"),
    pytest.param(["{bids}", "{out}", "participant", "--bogus"], "--bogus", id="unknown-option"),
    pytest.param(["{bids}", "{out}", "participant", "--bids-filter-file", "{tmp}/none.json"], "none.json",
                 id="filter-file-missing"),
    pytest.param(["{bids}", "{out}", "participant", "--mask", "{tmp}/none.nii.gz"], "none.nii.gz",
                 id="mask-missing"),
])
def test_usage_errors_exit_64(capsys, bids, tmp_path, argv, fragment):
    before = snapshot(bids)
    code, err = run_cli(capsys, fill(argv, bids, tmp_path))
    assert code == 64
    assert "usage:" in err
    assert_one_error(err, fragment)
    assert snapshot(bids) == before
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- errors after parsing

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


P = "participant"
ERRORS = [
    # analysis level
    pytest.param(["{bids}", "{out}", "banana"], 17, ["'banana'", "participant"], None, id="level-banana"),
    pytest.param(["{bids}", "{out}", "group"], 66, ["no participant-level outputs", "participant level first"],
                 None, id="group-before-participant"),
    # output and work directories
    pytest.param(["{bids}", "{bids}", P], 64, ["output_dir", "is the BIDS directory"], None, id="out-is-bids"),
    pytest.param(["{bids}", "{bids}/../bids", P], 64, ["is the BIDS directory"], None, id="out-is-bids-dotdot"),
    pytest.param(["{bids}", "{tmp}/link", P], 64, ["is the BIDS directory"], _symlink_to_bids, id="out-symlink"),
    pytest.param(["{bids}", "{bids}/out", P], 64, ["output_dir", "inside the BIDS dataset"], None, id="out-inside"),
    pytest.param(["{bids}", "{bids}/sub-01/x", P], 64, ["inside the BIDS dataset"], None, id="out-in-subject"),
    pytest.param(["{bids}", "{bids}/derivatives-x", P], 64, ["inside the BIDS dataset"], None,
                 id="out-derivatives-lookalike"),
    pytest.param(["{bids}", "{out}", P, "-w", "{bids}/work"], 64, ["--work-dir", "inside the BIDS dataset"], None,
                 id="work-inside"),
    pytest.param(["{bids}", "{out}", P, "--work-dir", "{bids}"], 64, ["--work-dir", "is the BIDS directory"],
                 None, id="work-is-bids"),
    # output under bids_dir/derivatives passes the path check and fails later
    pytest.param(["{bids}", "{bids}/derivatives/x", P, "--bids-filter-file", "{tmp}/filter.json"], 18,
                 ["no magnitude MEGRE files"], _filter({"megre": {"acquisition": "nope"}}), id="out-derivatives-ok"),
    pytest.param(["{bids}", "{bids}/derivatives/x", P, "--participant-label", "03"], 64, ["03", "01, 02"], None,
                 id="out-derivatives-ok-label"),
    # raw dataset
    pytest.param(["{tmp}/nope", "{out}", P], 66, ["nope", "does not exist"], None, id="bids-missing"),
    pytest.param(["{bids}", "{out}", P], 66, ["dataset_description.json"], _no_description, id="no-description"),
    # participant and session selection
    pytest.param(["{bids}", "{out}", P, "--participant-label", "03"], 64, ["03", "01, 02"], None, id="label"),
    pytest.param(["{bids}", "{out}", P, "--participant_label", "sub-03"], 64, ["03", "01, 02"], None,
                 id="label-underscore-sub"),
    pytest.param(["{bids}", "{out}", P, "--participant-label", "01", "sub-04"], 64, ["04", "01, 02"], None,
                 id="label-one-missing"),
    pytest.param(["{bids}", "{out}", P, "--session-label", "ses-9"], 64, ["9", "no sessions"], None,
                 id="session-unknown"),
    # --bids-filter-file
    pytest.param(["{bids}", "{out}", P, "--bids-filter-file", "{tmp}/filter.json"], 18,
                 ["no magnitude MEGRE files", "nope"], _filter({"megre": {"acquisition": "nope"}}),
                 id="filter-selects-nothing"),
    pytest.param(["{bids}", "{out}", P, "--bids-filter-file", "{tmp}/filter.json"], 64, ["filter.json"],
                 _filter("{not json"), id="filter-not-json"),
    pytest.param(["{bids}", "{out}", P, "--bids-filter-file", "{tmp}/filter.json"], 64, ["filter.json", "t1w"],
                 _filter({"t1w": {"acquisition": "x"}}), id="filter-unknown-query"),
    # sidecars
    # (one participant: each unusable run gets its own error line)
    pytest.param(["{bids}", "{out}", P, "--participant-label", "01"], 66, ["MagneticFieldStrength", "--field-strength"],
                 _no_field_strength, id="no-field-strength"),
    pytest.param(["{bids}", "{out}", P, "--field-strength", "3", "--fat-spectrum", "nonsense"], 64,
                 ["--fat-spectrum nonsense"], _no_field_strength, id="field-strength-given"),
    pytest.param(["{bids}", "{out}", P, "--participant-label", "01"], 65, ["sub-01_echo-1_part-mag_MEGRE", "milliseconds"],
                 _echo_time_ms, id="echo-time-ms"),
    # options checked by the workflow
    pytest.param(["{bids}", "{out}", P, "--fat-spectrum", "nonsense"], 64, ["--fat-spectrum nonsense", "hernando"],
                 None, id="fat-spectrum-name"),
    pytest.param(["{bids}", "{out}", P, "--fat-spectrum", "{tmp}/spectrum.json"], 65, ["spectrum.json"],
                 _bad_spectrum, id="fat-spectrum-file"),
    pytest.param(["{bids}", "{out}", P, "--device", "cuda"], 64, ["--device cuda"], None, id="no-cuda",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible")),
]


@pytest.mark.parametrize("argv, code, fragments, prepare", ERRORS)
def test_errors(capsys, bids, tmp_path, argv, code, fragments, prepare):
    if prepare:
        prepare(bids, tmp_path)
    before = snapshot(bids)
    got, err = run_cli(capsys, fill(argv, bids, tmp_path) + FAST[2:])
    assert got == code, err
    assert_one_error(err, *fragments)
    assert snapshot(bids) == before
    assert not (tmp_path / "out").exists()  # every one of these fails before the output is prepared


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


@pytest.mark.parametrize("argv", [
    pytest.param(["{bids}", "{tmp}/afile", P], id="out-is-file"),
    pytest.param(["{bids}", "{tmp}/afile/sub", P], id="out-under-file"),
    pytest.param(["{bids}", "{out}", P, "-w", "{tmp}/afile"], id="work-is-file"),
])
def test_output_path_that_is_a_file_exits_73(capsys, bids, tmp_path, argv):
    (tmp_path / "afile").write_text("not a directory")
    code, err = run_cli(capsys, fill(argv, bids, tmp_path) + FAST)
    assert code == 73
    assert_one_error(err, "afile")


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
    ([], {"batch_size": 1024, "learning_rate": 5e-3, "steps_per_epoch": 100, "max_epochs": 80}),
    (["--training", "paper"], {"batch_size": 128, "learning_rate": 1e-3, "steps_per_epoch": None,
                               "max_epochs": 1000, "final_lr_fraction": None}),
    (["--training", "paper", "--batch-size", "256"], {"batch_size": 256, "learning_rate": 1e-3}),
    (["--max-epochs", "7", "--patience", "3"], {"batch_size": 1024, "max_epochs": 7, "patience": 3}),
])
def test_training_presets_and_overrides(tmp_path, argv, expected):
    full = [str(tmp_path / "bids"), str(tmp_path / "out"), "participant", *argv]
    config = config_from_args(build_parser().parse_args(full), full)
    for key, value in expected.items():
        assert getattr(config.training, key) == value, key
