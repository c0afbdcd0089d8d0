"""--help as in the NiPreps tools (fMRIPrep, MRIQC): every option explained with its real default
(read from raider_bids.config, never "None" or a Python list), grouped, with examples; answered
without importing the heavy libraries; and the usage messages for comma-separated labels and for an
output or work directory that is a file."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli_checks import assert_one_error, run_cli, snapshot
from raider_bids.cli.parser import build_parser
from raider_bids.config import (CHOICES, DEFAULT_CHOICE, DEFAULT_METHOD, DEFAULT_SPECTRUM, DEFAULT_TRAINING,
                                DEVICES, TRAINING_PRESETS, Config)

ROOT = Path(__file__).resolve().parents[1]
# What made --help slow (pybids, nibabel and numpy through the label check's module; torch): none of
# it may be imported to parse the command line.
HEAVY = ("torch", "bids", "nibabel", "numpy", "scipy", "matplotlib")


def _subprocess(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "80"})


@pytest.fixture(scope="module")
def help_text() -> str:
    """`python -m raider_bids --help`, as a user sees it."""
    proc = _subprocess("-m", "raider_bids", "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return proc.stdout


def _flat(text: str) -> str:
    return " ".join(text.split())


def _helps() -> dict[str, str]:
    """Each option's help, by its first long name (or its dest for the positionals)."""
    helps = {}
    for action in build_parser()._actions:
        names = [o for o in action.option_strings if o.startswith("--")] or [action.dest]
        helps[names[0]] = action.help
    return helps


# ---------------------------------------------------------------- the help text

def test_help_shows_no_none_and_no_python_lists(help_text):
    assert "usage: raider-bids" in help_text
    assert "None" not in help_text
    assert "['" not in help_text and "[]" not in help_text


def test_every_option_is_explained_and_states_its_default(help_text):
    flat = _flat(help_text)
    for action in build_parser()._actions:
        name = action.option_strings[-1] if action.option_strings else action.dest
        assert action.help and action.help.strip() and action.help != argparse.SUPPRESS, name
        assert _flat(action.help).replace("%%", "%") in flat, name  # shown, not hidden
        if action.option_strings and not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            assert "(default: " in action.help, name


def test_help_shows_the_configuration_defaults():
    helps, defaults = _helps(), Config(Path("."), Path("."))
    assert helps["--method"].endswith(f"(default: {DEFAULT_METHOD})")
    assert helps["--training"].endswith(f"(default: {DEFAULT_TRAINING})")
    assert helps["--fat-spectrum"].endswith(f"(default: {DEFAULT_SPECTRUM})")
    assert helps["--choice"].endswith(f"(default: {DEFAULT_CHOICE})") and DEFAULT_CHOICE in CHOICES
    assert helps["--device"].endswith(f"(default: {DEVICES[0]})")
    assert helps["--random-seed"].endswith(f"(default: {defaults.random_seed})")


@pytest.mark.parametrize("option, field, show", [
    ("--patience", "patience", str),
    ("--batch-size", "batch_size", str),
    ("--learning-rate", "learning_rate", lambda v: f"{v:g}"),
    ("--max-epochs", "max_epochs", str),
    ("--validation-fraction", "validation_fraction", str),
])
def test_help_shows_each_presets_training_value(help_text, option, field, show):
    """A preset-dependent default names each preset's value; one all presets share is said once."""
    text = _helps()[option]
    default = text[text.rindex("(default: "):]
    values = {name: show(getattr(preset, field)) for name, preset in TRAINING_PRESETS.items()}
    if len(set(values.values())) == 1:
        assert default == f"(default: {next(iter(values.values()))} in both presets)", default
    else:
        for name, value in values.items():
            assert f"{name}: {value}" in default, (name, default)
    assert _flat(text) in _flat(help_text)


def test_the_patience_default_is_the_presets_patience():
    patience = {preset.patience for preset in TRAINING_PRESETS.values()}
    assert len(patience) == 1  # if this changes, the test above checks each preset's value instead
    assert f"(default: {patience.pop()} in both presets)" in _helps()["--patience"]


def test_help_has_examples(help_text):
    examples = help_text.split("\nexamples:\n", 1)[1]
    calls = _flat(examples.replace("\\\n", " "))
    assert "raider-bids /data/bids /data/derivatives/raider-bids participant " in calls
    assert "--participant-label 01 02 --method ssl fit" in calls
    assert "group --roi-dataset /data/derivatives/rois" in calls
    assert all(option in calls for option in ("--nprocs", "--mem 8GB", "-w "))
    assert "exit codes" in examples and "64 usage error" in _flat(examples)


def test_help_lines_fit_the_terminal(help_text):
    too_long = [line for line in help_text.splitlines() if len(line) > 80]
    assert not too_long, too_long


def test_help_and_version_exit_0_in_a_subprocess():
    proc = _subprocess("-m", "raider_bids", "--version")
    assert proc.returncode == 0 and proc.stdout.startswith("raider-bids "), proc.stderr


# ---------------------------------------------------------------- what parsing imports

@pytest.mark.parametrize("code", [
    "import raider_bids.cli.parser",
    # the whole --help path, the entry point included
    "import contextlib, io\nfrom raider_bids.cli import main\n"
    "with contextlib.redirect_stdout(io.StringIO()):\n"
    "    try:\n        main(['--help'])\n    except SystemExit:\n        pass",
], ids=["import-parser", "help"])
def test_parsing_imports_no_heavy_library(code):
    proc = _subprocess("-c", f"{code}\nimport json, sys\n"
                             f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == []


# ---------------------------------------------------------------- two usage messages

@pytest.mark.parametrize("option, labels, message", [
    ("--participant-label", ["01,02"],
     "--participant-label '01,02': separate labels with spaces (--participant-label 01 02)"),
    ("--participant-label", ["sub-01,sub-02"],
     "--participant-label 'sub-01,sub-02': separate labels with spaces (--participant-label sub-01 sub-02)"),
    ("--participant-label", ["01,", "02"],  # typed as "01, 02"
     "--participant-label '01,': separate labels with spaces (--participant-label 01 02)"),
    ("--session-label", ["1,2"], "--session-label '1,2': separate labels with spaces (--session-label 1 2)"),
    ("--participant-label", ["01,../x"], "--participant-label '01,../x': not a BIDS label"),
])
def test_comma_separated_labels(capsys, tmp_path, option, labels, message):
    (tmp_path / "bids").mkdir()
    before = snapshot(tmp_path)
    code, err = run_cli(capsys, [tmp_path / "bids", tmp_path / "out", "participant", option, *labels])
    assert code == 64, err
    assert_one_error(err, message)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("where", ["output_dir", "--work-dir"])
def test_an_output_or_work_dir_that_is_a_file(capsys, tmp_path, monkeypatch, where):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bids").mkdir()
    (tmp_path / "out.txt").write_text("a file")
    argv = ["bids", "out.txt", "participant"] if where == "output_dir" else ["bids", "out", "participant",
                                                                             "-w", "out.txt"]
    before = snapshot(tmp_path)
    code, err = run_cli(capsys, argv)
    assert code == 64, err
    assert_one_error(err, f"{where} out.txt is a file, not a directory")
    assert "File exists" not in err
    assert snapshot(tmp_path) == before
