"""Defaults live in raider_bids.config alone: the command line, the library and README agree with it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from raider_bids.cli.parser import build_parser, config_from_args
from raider_bids.config import (DEFAULT_METHOD, DEFAULT_SPECTRUM, DEFAULT_TRAINING, METHODS, TRAINING_PRESETS, Config,
                                TrainingSettings)
from raider_bids.estimators import ESTIMATORS, get_estimator
from raider_bids.physics.fat_spectrum import PRESETS

README = Path(__file__).resolve().parent.parent / "README.md"


def _cli_config(*options: str) -> Config:
    argv = ["bids", "out", "participant", *options]
    return config_from_args(build_parser().parse_args(argv), argv)


def test_the_command_line_defaults_are_the_configuration_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parsed = _cli_config()
    library = Config(Path("bids").resolve(), Path("out").resolve(), command_line=parsed.command_line)
    assert parsed == library
    assert parsed.training == TRAINING_PRESETS[DEFAULT_TRAINING]
    assert parsed.methods == (DEFAULT_METHOD,) and parsed.fat_spectrum == DEFAULT_SPECTRUM in PRESETS


def test_help_shows_the_configuration_defaults():
    text = "".join(build_parser().format_help().split())  # argparse wraps lines, also at hyphens
    assert f"(default:{DEFAULT_TRAINING})" in text and f"(default:{DEFAULT_SPECTRUM})" in text
    assert f"(default:{DEFAULT_METHOD})" in text
    for name, method in METHODS.items():
        assert "".join(f"{name} = {method.summary}".split()) in text


def test_options_override_the_preset_and_nothing_else(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parsed = _cli_config("--training", "paper", "--patience", "3")
    assert parsed.training == dataclasses.replace(TRAINING_PRESETS["paper"], patience=3)


def test_training_settings_have_no_defaults_of_their_own():
    """A second set of defaults (TrainingSettings() once meant the paper preset while the CLI
    meant fast) cannot come back: every field must be given."""
    with pytest.raises(TypeError):
        TrainingSettings()  # type: ignore[call-arg]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_has_one_estimator_built_with_explicit_settings(name):
    settings = dataclasses.replace(TRAINING_PRESETS["fast"], max_epochs=3)
    estimator = get_estimator(name, settings)
    assert type(estimator) is ESTIMATORS[name] and estimator.method is METHODS[name]
    if METHODS[name].networks:
        assert estimator.training is settings
        with pytest.raises(TypeError):
            ESTIMATORS[name]()  # type: ignore[call-arg]
    assert set(ESTIMATORS) == set(METHODS)


def _readme_row(option: str) -> str:
    """The row of README's options table (in its Usage section) that explains `option`."""
    usage = README.read_text().split("## Usage", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in usage.splitlines() if line.startswith(f"| `{option} ") or line.startswith(f"| `{option}`")]
    assert len(rows) == 1, option
    return rows[0]


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def test_readme_states_the_presets():
    row = _readme_row("--training")
    fast_text, paper_text = row.split("`paper`")
    fast, paper = TRAINING_PRESETS["fast"], TRAINING_PRESETS["paper"]
    assert "`fast` (default)" in fast_text and DEFAULT_TRAINING == "fast"
    found = {key: _number(re.search(pattern, fast_text).group(1)) for key, pattern in {
        "batch_size": r"batch ([\d,]+)", "learning_rate": r"learning rate ([\d.e-]+)",
        "steps_per_epoch": r"an epoch = ([\d,]+) random mini-batches", "max_epochs": r"at most ([\d,]+) epochs",
        "max_validation_voxels": r"validation on at most ([\d,]+) voxels",
        "final_lr_fraction": r"to ([\d.]+) %", "budget_passes": r"draw each training voxel ([\d.]+) times",
        "min_epochs": r"at least ([\d,]+) epochs",
        "budget_lr_power": r"the learning rate times \(80 / the run's epochs\)\^([\d.]+)"}.items()}
    found["final_lr_fraction"] /= 100
    assert found == {k: getattr(fast, k) for k in found}
    assert _number(re.search(r"batch ([\d,]+)", paper_text).group(1)) == paper.batch_size
    assert _number(re.search(r"learning rate ([\d.e-]+)", paper_text).group(1)) == paper.learning_rate
    assert _number(re.search(r"up to ([\d,]+) epochs", paper_text).group(1)) == paper.max_epochs
    assert paper.steps_per_epoch is None and "one pass over the voxels" in paper_text
    assert _number(re.search(r"NLL weighted by SNR\^-([\d.]+)", fast_text).group(1)) == fast.nll_snr_power
    assert paper.nll_snr_power is None and "every voxel's NLL alike" in paper_text
    overrides = _readme_row("--learning-rate")
    for key in ("validation_fraction", "patience"):
        option = "--" + key.replace("_", "-")
        stated = _number(re.search(rf"`{option} ([\d.]+)`", overrides).group(1))
        assert stated == getattr(fast, key) == getattr(paper, key), key


def test_readme_names_every_method_and_the_default():
    row = _readme_row("--method")
    assert f"`{DEFAULT_METHOD}` (default)" in row
    for name in METHODS:
        assert f"`{name}`" in row
