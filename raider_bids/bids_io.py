"""Finding and loading magnitude MEGRE runs in a raw BIDS dataset (pybids)."""

from __future__ import annotations

import json
import logging
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .errors import InputDataError, MissingInputError, NoFilesSelectedError, UsageError

log = logging.getLogger(__name__)

MIN_ECHOES = 4  # three unknowns plus at least one degree of freedom
FILTER_QUERY = "megre"  # the query name in --bids-filter-file
_BASE_QUERY: dict[str, Any] = {"suffix": "MEGRE", "datatype": "anat", "extension": [".nii", ".nii.gz"]}
_DROPPED_ENTITIES = ("echo", "part")  # a run = files sharing every other entity


class RunEntities:
    """What a run's BIDS entities (`self.entities`: key/value pairs in filename order, no echo or
    part) tell: its subject, session and filename prefix. Shared by raw runs and their outputs."""

    entities: tuple[tuple[str, str], ...]

    @property
    def subject(self) -> str:
        return dict(self.entities)["sub"]

    @property
    def session(self) -> str | None:
        return dict(self.entities).get("ses")

    @property
    def name(self) -> str:
        return run_name(self.entities)


def run_name(entities: tuple[tuple[str, str], ...]) -> str:
    """Filename prefix of a run, e.g. sub-01_ses-1_run-1."""
    return "_".join(f"{k}-{v}" for k, v in entities)


@dataclass(frozen=True)
class MegreRun(RunEntities):
    """One multi-echo acquisition: its echo files sorted by echo time."""

    entities: tuple[tuple[str, str], ...]
    echo_files: tuple[Path, ...]
    echo_times_s: tuple[float, ...]
    field_strength_t: float
    bids_dir: Path

    def relative_files(self) -> list[str]:
        return [f.relative_to(self.bids_dir).as_posix() for f in self.echo_files]


def parse_entities(path: Path) -> list[tuple[str, str]]:
    """Key-value entities of a BIDS filename, as written (zero padding kept)."""
    stem = path.name.split(".")[0]
    return [tuple(part.split("-", 1)) for part in stem.split("_")[:-1] if "-" in part]  # type: ignore[misc]


def strip_sub(label: str) -> str:
    return label[4:] if label.startswith("sub-") else label


def strip_ses(label: str) -> str:
    return label[4:] if label.startswith("ses-") else label


def load_filters(path: Path | None) -> dict[str, Any]:
    """The 'megre' query of a --bids-filter-file (null -> entity absent, "*" -> any value)."""
    if path is None:
        return {}
    from bids.layout import Query

    try:
        spec = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: cannot read the BIDS filter file ({exc})") from None
    if not isinstance(spec, dict) or any(not isinstance(v, dict) for v in spec.values()):
        raise UsageError(f'{path}: a BIDS filter file is a JSON object {{"{FILTER_QUERY}": {{"<entity>": value}}}}')
    unknown = sorted(set(spec) - {FILTER_QUERY})
    if unknown:
        raise UsageError(f"{path}: unknown query name(s) {', '.join(unknown)}; this app reads '{FILTER_QUERY}'")
    def convert(entity: str, value: Any) -> Any:
        if isinstance(value, list):
            return [convert(entity, v) for v in value]
        if value is None:
            return Query.NONE
        if value == "*":
            return Query.REQUIRED
        if not isinstance(value, (str, int, float)):
            raise UsageError(f"{path}: the value of {entity!r} must be a string, number, null, \"*\" or a list of them")
        return value

    return {k: convert(k, v) for k, v in spec.get(FILTER_QUERY, {}).items()}


def _layout(bids_dir: Path):
    from bids import BIDSLayout
    from bids.exceptions import BIDSValidationError

    if not bids_dir.exists():
        raise MissingInputError(f"{bids_dir}: the BIDS directory does not exist")
    if not bids_dir.is_dir():
        raise MissingInputError(f"{bids_dir}: the BIDS directory is not a directory")
    if not (bids_dir / "dataset_description.json").is_file():
        raise MissingInputError(f"{bids_dir}: no dataset_description.json; is this the root of a BIDS dataset?")
    try:
        # validate=False: pybids' validation silently drops files; the database stays in memory.
        return BIDSLayout(bids_dir, validate=False, derivatives=False)
    except (BIDSValidationError, ValueError, OSError) as exc:
        raise InputDataError(f"{bids_dir}: pybids cannot index the dataset ({exc})") from None


def find_runs(bids_dir: Path, participant_labels: list[str] | None = None,
              session_labels: list[str] | None = None, filters: dict[str, Any] | None = None,
              field_strength_t: float | None = None) -> list[MegreRun]:
    """Every magnitude MEGRE run selected by the labels and filters, sorted by name."""
    bids_dir = Path(bids_dir).resolve()
    layout, groups = _select_runs(bids_dir, participant_labels, session_labels, filters)
    runs = [_make_run(layout, bids_dir, key, paths, field_strength_t) for key, paths in groups.items()]
    return sorted(runs, key=lambda r: r.name)


def list_run_names(bids_dir: Path, participant_labels: list[str] | None = None,
                   session_labels: list[str] | None = None,
                   filters: dict[str, Any] | None = None) -> list[str]:
    """Names (file prefixes) of the selected runs, from file names alone: no sidecar is read."""
    _, groups = _select_runs(Path(bids_dir).resolve(), participant_labels, session_labels, filters)
    return sorted(run_name(key) for key in groups)


def _select_runs(bids_dir: Path, participant_labels: list[str] | None, session_labels: list[str] | None,
                 filters: dict[str, Any] | None):
    """The pybids layout and the selected MEGRE files grouped by run (entities -> paths)."""
    from bids.layout import Query

    layout = _layout(bids_dir)
    subjects = sorted(layout.get_subjects())
    query = dict(_BASE_QUERY, part=[Query.NONE, "mag"])
    query.update(filters or {})
    if participant_labels:
        labels = sorted({strip_sub(p) for p in participant_labels})
        missing = [p for p in labels if p not in subjects]
        if missing:
            raise UsageError(f"participant label(s) {', '.join(missing)} not found in {bids_dir}; "
                             f"it has: {', '.join(subjects) or 'none'}")
        query["subject"] = labels
    if session_labels:
        labels = sorted({strip_ses(s) for s in session_labels})
        sessions = sorted(layout.get_sessions(subject=query.get("subject", subjects)))
        missing = [s for s in labels if s not in sessions]
        if missing:
            raise UsageError(f"session label(s) {', '.join(missing)} not found in {bids_dir}; "
                             f"the selected participants have: {', '.join(sessions) or 'no sessions'}")
        query["session"] = labels
    try:
        files = layout.get(return_type="filename", invalid_filters="error", **query)
    except ValueError as exc:
        raise UsageError(f"invalid BIDS filter: {exc}") from None
    if not files:
        show = lambda v: [show(x) for x in v] if isinstance(v, list) else (v.name if isinstance(v, Query) else v)  # noqa: E731
        shown = {k: show(v) for k, v in query.items()}
        raise NoFilesSelectedError(f"no magnitude MEGRE files in {bids_dir} match {json.dumps(shown, default=str)}")
    groups: dict[tuple, list[Path]] = defaultdict(list)
    for f in map(Path, files):
        key = tuple((k, v) for k, v in parse_entities(f) if k not in _DROPPED_ENTITIES)
        groups[key].append(f)
    return layout, groups


def _make_run(layout, bids_dir: Path, entities: tuple, paths: list[Path],
              field_strength_t: float | None) -> MegreRun:
    echo_times, fields = [], set()
    for path in paths:
        meta = layout.get_metadata(str(path))
        if "EchoTime" not in meta:
            raise MissingInputError(f"{path}: no EchoTime in its JSON sidecar(s)")
        try:
            te = float(meta["EchoTime"])
        except (TypeError, ValueError):
            raise InputDataError(f"{path}: EchoTime {meta['EchoTime']!r} is not a number") from None
        if not math.isfinite(te) or te <= 0:
            raise InputDataError(f"{path}: EchoTime {te} must be a positive number of seconds")
        if te > 0.5:
            raise InputDataError(f"{path}: EchoTime {te} looks like milliseconds; BIDS wants seconds")
        echo_times.append(te)
        if "MagneticFieldStrength" in meta:
            try:
                fields.add(float(meta["MagneticFieldStrength"]))
            except (TypeError, ValueError):
                raise InputDataError(f"{path}: MagneticFieldStrength {meta['MagneticFieldStrength']!r} "
                                     "is not a number") from None
    name = run_name(entities)
    if len(set(echo_times)) != len(echo_times):
        raise InputDataError(f"{paths[0].parent}: run {name} has files with the same EchoTime "
                             f"({sorted(echo_times)}); mixed part-mag and part-less files?")
    if len(paths) < MIN_ECHOES:
        raise InputDataError(f"{paths[0].parent}: run {name} has {len(paths)} echoes; at least "
                             f"{MIN_ECHOES} are needed for PDFF, R2* and S0")
    if field_strength_t is None:
        if not fields:
            raise MissingInputError(f"{paths[0]}: no MagneticFieldStrength in the sidecars; give "
                                    "--field-strength (tesla)")
        if len(fields) > 1:
            raise InputDataError(f"{paths[0].parent}: run {name} has echoes with different "
                                 f"MagneticFieldStrength values {sorted(fields)}")
        field_strength_t = fields.pop()
    order = np.argsort(echo_times)
    return MegreRun(entities=entities, echo_files=tuple(paths[i] for i in order),
                    echo_times_s=tuple(echo_times[i] for i in order),
                    field_strength_t=float(field_strength_t), bids_dir=bids_dir)


def read_volume(path: Path, what: str, dtype: type | None = None) -> tuple[nib.Nifti1Image, np.ndarray]:
    """An image and its data, a singleton 4th axis dropped and a 2-D slice made 3-D."""
    try:
        img = nib.load(path)
        data = np.asarray(img.dataobj, dtype=dtype)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise InputDataError(f"{path}: cannot read {what} ({exc.__class__.__name__}: {exc})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., None]
    return img, data


def load_run(run: MegreRun) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Magnitudes of shape (X, Y, Z, n_echoes), float64, and the first echo's image (for geometry)."""
    volumes, reference = [], None
    for path in run.echo_files:
        img, data = read_volume(path, "the NIfTI image", np.float64)
        if data.ndim != 3:
            raise InputDataError(f"{path}: expected a 3-D image per echo, got shape {data.shape}")
        if reference is None:
            reference = img
        elif data.shape != volumes[0].shape:
            raise InputDataError(f"{path}: shape {data.shape} differs from echo 1 {volumes[0].shape}")
        if not np.all(np.isfinite(data)):
            log.warning("%s: %d non-finite values set to 0", path, int((~np.isfinite(data)).sum()))
            data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
        if (data < 0).any():
            raise InputDataError(f"{path}: negative values; this app needs magnitude images (part-mag)")
        volumes.append(data)
    return np.stack(volumes, axis=-1), reference


def load_mask(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A user's mask (nonzero = in) as a boolean array that must have the image's `shape`."""
    _, data = read_volume(path, "the mask")
    if data.shape != shape:
        raise InputDataError(f"{path}: mask shape {data.shape} differs from the image shape {shape}")
    return data > 0
