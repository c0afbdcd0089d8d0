"""When a finished run is skipped, and why it is otherwise redone: its outputs hold only while
the options that change the maps, the app's version and the content of every input are as
recorded in its provenance."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .. import __version__
from ..config import Config
from ..physics.fat_spectrum import PRESETS
from ..provenance import Provenance
from ..bids_io.raw import MegreRun


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
    """Why a finished run's outputs no longer hold (made with other options or another version, or
    from inputs that changed since), or None; `files` is option_files(config). A file an option
    names counts by its content: the same mask at another path (moved, or mounted elsewhere in a
    container) is the same input."""
    current = json.loads(json.dumps(config.result_options(), default=str))
    if (provenance.software.get("raider-bids") != __version__
            or _by_content(provenance.configuration, provenance.option_files, current) != _by_content(
                current, files, current)):
        return "made with other options"
    if (provenance.echo_times_s != list(run.echo_times_s) or provenance.field_strength_t != run.field_strength_t
            or provenance.input_files != run.input_state()):
        return "made from inputs that have changed since (images or sidecars)"
    if _hashes(provenance.option_files) != _hashes(files):
        return "made from a mask or fat spectrum file whose content has changed since"
    return None


def _by_content(options: dict[str, Any], files: dict[str, dict[str, Any]], keys) -> dict[str, Any]:
    """The result options `keys` of `options`, those that name a file reduced to saying so (their
    content is compared on its own)."""
    return {k: "<a file>" if k in files else options.get(k) for k in keys}


def _hashes(files: dict[str, dict[str, Any]]) -> dict[str, str | None]:
    return {option: state.get("SHA256") for option, state in files.items()}
