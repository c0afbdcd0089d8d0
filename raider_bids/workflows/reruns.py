"""What a call does with a run the output already holds (RunPlan): a finished run is kept. Its
outputs hold while the options that change the maps, the app's version and the content of every
input are as recorded in its provenance; then a call asking for other methods adds theirs, and one
asking for nothing new skips the run. Finished outputs made otherwise are replaced only with
--overwrite; unfinished ones (a killed or failed call) are always removed and redone."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..bids_io.derivatives import RunOutputs
from ..bids_io.raw import MegreRun
from ..config import Config
from ..physics.fat_spectrum import PRESETS
from ..provenance import Provenance

# How the result options (config.RESULT_OPTIONS) are spelt on the command line, for the messages.
_FLAGS = {"field_strength_t": "--field-strength", "fat_spectrum": "--fat-spectrum", "sigma": "--sigma",
          "mask_file": "--mask", "choice": "--choice", "refine": "--refine",
          "write_candidates": "--write-candidates",
          "random_seed": "--random-seed", "training": "training"}
NEW, SKIP, ADD, REDO, REFUSE = "new", "skip", "add", "redo", "refuse"


@dataclass(frozen=True)
class RunPlan:
    """What to do with one run: NEW (nothing there), SKIP (finished, nothing asked that it lacks),
    ADD `methods` to its finished outputs, REDO it from scratch (its outputs removed first), or
    REFUSE (finished outputs that --overwrite alone may replace). `reason` says why."""

    action: str
    methods: tuple[str, ...] = ()  # the methods to compute (ADD, NEW, REDO)
    reason: str = ""


def plan_run(previous: RunOutputs, config: Config, files: dict[str, dict[str, Any]], run: MegreRun) -> RunPlan:
    """The plan for `run`, given what the output holds for it; `files` is option_files(config)."""
    if not previous.files:
        return RunPlan(NEW, config.methods)
    if not previous.finished or previous.provenance is None:
        return RunPlan(REDO, config.methods, "left by an interrupted or failed run")
    reason = why_redo(previous.provenance, config, files, run)
    if reason is not None:
        return RunPlan(REDO, config.methods, reason) if config.overwrite else RunPlan(REFUSE, (), reason)
    missing = tuple(m for m in config.methods if m not in previous.provenance.methods)
    return RunPlan(ADD, missing) if missing else RunPlan(SKIP)


def option_files(config: Config) -> dict[str, dict[str, Any]]:
    """The files options name (the --mask, a --fat-spectrum file): path, size and SHA-256 of the
    content, so that a file edited in place, whatever its modification time, redoes the run (they
    are small: hashing takes milliseconds)."""
    named = {"mask_file": config.mask_file,
             "fat_spectrum": None if config.fat_spectrum in PRESETS else Path(config.fat_spectrum)}
    return {option: {"Path": str(path), "Bytes": path.stat().st_size,
                     "SHA256": hashlib.sha256(path.read_bytes()).hexdigest()}
            for option, path in named.items() if path is not None}


def why_redo(provenance: Provenance, config: Config, files: dict[str, dict[str, Any]], run: MegreRun) -> str | None:
    """Why a finished run's outputs no longer hold for this call (made with other options or
    another version, or from inputs that changed since), or None. The methods do not count: a call
    may add methods to a run. A file an option names counts by its content: the same mask at
    another path (moved, or mounted elsewhere in a container) is the same input."""
    version = provenance.software.get("raider-bids")
    if version != __version__:
        return f"made with raider-bids {version} (this is {__version__})"
    keys = [k for k in config.result_options() if k != "methods"]
    current = json.loads(json.dumps(config.result_options(), default=str))
    recorded = _by_content(provenance.configuration, provenance.option_files, keys)
    wanted = _by_content(current, files, keys)
    # Candidates written where none were asked for are more than the call needs, not other maps.
    wanted["write_candidates"] = bool(wanted.get("write_candidates") or recorded.get("write_candidates"))
    if recorded != wanted:
        return "made with other options (" + "; ".join(_difference(k, recorded.get(k), wanted.get(k))
                                                       for k in keys if recorded.get(k) != wanted.get(k)) + ")"
    if (provenance.echo_times_s != list(run.echo_times_s) or provenance.field_strength_t != run.field_strength_t
            or provenance.input_files != run.input_state()):
        return "made from inputs that have changed since (images or sidecars)"
    if _hashes(provenance.option_files) != _hashes(files):
        return "made from a mask or fat spectrum file whose content has changed since"
    return None


def _difference(key: str, recorded: Any, wanted: Any) -> str:
    """One option's change, as 'FLAG recorded -> wanted' (the training settings one by one)."""
    if isinstance(recorded, dict) and isinstance(wanted, dict):
        return ", ".join(f"training {k} {_shown(recorded.get(k))} -> {_shown(wanted.get(k))}"
                         for k in sorted(set(recorded) | set(wanted)) if recorded.get(k) != wanted.get(k))
    return f"{_FLAGS.get(key, key)} {_shown(recorded)} -> {_shown(wanted)}"


def _shown(value: Any) -> str:
    return "not given" if value is None else "a file" if value == "<a file>" else str(value)


def _by_content(options: dict[str, Any], files: dict[str, dict[str, Any]], keys) -> dict[str, Any]:
    """The result options `keys` of `options`, those that name a file reduced to saying so (their
    content is compared on its own)."""
    return {k: "<a file>" if k in files else options.get(k) for k in keys}


def _hashes(files: dict[str, dict[str, Any]]) -> dict[str, str | None]:
    return {option: state.get("SHA256") for option, state in files.items()}
