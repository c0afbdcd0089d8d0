"""Finding and loading magnitude MEGRE runs in a raw BIDS dataset (pybids)."""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
from collections import defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ..errors import InputDataError, MissingInputError, NoFilesSelectedError, RaiderError, UsageError
from ..physics.parameters import MAX_FIELD_STRENGTH_T

log = logging.getLogger(__name__)

MIN_ECHOES = 4  # three unknowns plus at least one degree of freedom
MIN_ECHO_TIME_S = 1e-5  # s: shorter than even ultrashort-TE sequences; smaller is a unit mistake
FILTER_QUERY = "megre"  # the query name in --bids-filter-file
_BASE_QUERY: dict[str, Any] = {"suffix": "MEGRE", "datatype": "anat", "extension": [".nii", ".nii.gz"]}
_DROPPED_ENTITIES = ("echo", "part")  # a run = files sharing every other entity
_LABEL = re.compile(r"[0-9A-Za-z]+")  # a BIDS label: no path separator, dot, wildcard or space
AFFINE_TOLERANCE_MM = 1e-3  # larger than float32 rounding of a header's affine, far below a voxel


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

    def input_state(self) -> dict[str, dict[str, int]]:
        """Size and modification time of each echo image, as recorded in the provenance: a rerun
        redoes a finished run whose images changed since (a cheap check; hashing would read them)."""
        stats = (f.stat() for f in self.echo_files)
        return {name: {"Bytes": st.st_size, "ModifiedNs": st.st_mtime_ns}
                for name, st in zip(self.relative_files(), stats)}


def parse_entities(path: Path) -> list[tuple[str, str]]:
    """Key-value entities of a BIDS filename, as written (zero padding kept)."""
    stem = path.name.split(".")[0]
    return [tuple(part.split("-", 1)) for part in stem.split("_")[:-1] if "-" in part]  # type: ignore[misc]


def strip_sub(label: str) -> str:
    return label[4:] if label.startswith("sub-") else label


def strip_ses(label: str) -> str:
    return label[4:] if label.startswith("ses-") else label


def check_labels(option: str, labels: Iterable[str], prefix: str) -> list[str]:
    """The labels without their prefix. Anything but letters and digits (`../x`, `01/../02`, `*`,
    a space) is refused before the dataset is read: a label must never become a path or a pattern."""
    labels = list(labels)
    stripped = [label.removeprefix(prefix) for label in labels]
    for label, value in zip(labels, stripped):
        if not _LABEL.fullmatch(value):
            parts = [part.strip() for part in label.split(",") if part.strip()]
            if "," in label and parts and all(_LABEL.fullmatch(part.removeprefix(prefix)) for part in parts):
                given = [part.strip() for text in labels for part in text.split(",") if part.strip()]
                raise UsageError(f"{option} {label!r}: separate labels with spaces ({option} {' '.join(given)})")
            raise UsageError(f"{option} {label!r}: not a BIDS label (letters and digits only, e.g. 01)")
    return stripped


def grid_mismatch_mm(affine: np.ndarray, reference: np.ndarray, shape: tuple[int, ...]) -> float | None:
    """None if the two affines place every voxel of a grid of `shape` within AFFINE_TOLERANCE_MM of
    each other, else the largest distance (mm); being linear, it is largest at a corner."""
    corners = np.array([[*c, 1] for c in itertools.product(*((0, n - 1) for n in shape[:3]))], dtype=float)
    moved = corners @ (np.asarray(affine, dtype=float) - np.asarray(reference, dtype=float)).T
    distance = float(np.linalg.norm(moved[:, :3], axis=1).max())
    return None if distance <= AFFINE_TOLERANCE_MM else distance


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
    from bids.layout.models import Config

    entities = set(Config.load("bids").entities)  # those pybids' layout indexes
    unknown = sorted(set(spec.get(FILTER_QUERY, {})) - entities)
    if unknown:
        verb = "is not a BIDS entity" if len(unknown) == 1 else "are not BIDS entities"
        raise UsageError(f"{path}: {', '.join(map(repr, unknown))} {verb} (a MEGRE file's are subject, session, "
                         "acquisition, run, echo and part)")
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
              field_strength_t: float | None = None) -> tuple[list[MegreRun], dict[str, RaiderError]]:
    """Every magnitude MEGRE run selected by the labels and filters, sorted by name, and the
    selected runs whose sidecars make them unusable (run name -> why), so that one bad run does
    not stop the others. Problems of the whole dataset or selection are raised."""
    bids_dir = Path(bids_dir).resolve()
    layout, groups = _select_runs(bids_dir, participant_labels, session_labels, filters)
    runs, problems = [], {}
    for key, paths in groups.items():
        try:
            runs.append(_make_run(layout, bids_dir, key, paths, field_strength_t))
        except RaiderError as exc:
            problems[run_name(key)] = exc
    return sorted(runs, key=lambda r: r.name), dict(sorted(problems.items()))


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

    participant_labels = check_labels("--participant-label", participant_labels or [], "sub-")
    session_labels = check_labels("--session-label", session_labels or [], "ses-")
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
        # No MEGRE file at all is missing input (66), not a selection that came out empty (18).
        if not layout.get(return_type="filename", **_BASE_QUERY):
            raise MissingInputError(f"{bids_dir}: the dataset holds no MEGRE images "
                                    "(sub-<label>/[ses-<label>/]anat/*_MEGRE.nii[.gz]); nothing to process")
        other_parts = sorted({dict(parse_entities(Path(f))).get("part", "") for f in layout.get(
            return_type="filename", **{k: v for k, v in query.items() if k != "part"})} - {"", "mag"})
        hint = (f"; only part-{'/'.join(other_parts)} files match, and this app needs magnitude images"
                if other_parts else "")
        show = lambda v: [show(x) for x in v] if isinstance(v, list) else (v.name if isinstance(v, Query) else v)  # noqa: E731
        shown = {k: show(v) for k, v in query.items()}
        raise NoFilesSelectedError(f"{bids_dir}: no magnitude MEGRE files match "
                                   f"{json.dumps(shown, default=str)}{hint}")
    groups: dict[tuple, list[Path]] = defaultdict(list)
    for f in map(Path, files):
        key = tuple((k, v) for k, v in parse_entities(f) if k not in _DROPPED_ENTITIES)
        groups[key].append(f)
    return layout, groups


def _make_run(layout, bids_dir: Path, entities: tuple, paths: list[Path],
              field_strength_t: float | None) -> MegreRun:
    echo_times, fields = [], set()
    for path in paths:
        _check_one_echo_per_file(path)
        meta = layout.get_metadata(str(path))
        if "EchoTime" not in meta:
            raise MissingInputError(f"{path}: no EchoTime in its JSON sidecar(s)")
        try:
            if isinstance(meta["EchoTime"], bool):  # JSON true would read as 1.0
                raise TypeError
            te = float(meta["EchoTime"])
        except (TypeError, ValueError):
            raise InputDataError(f"{path}: EchoTime {meta['EchoTime']!r} is not a number") from None
        if not math.isfinite(te) or te <= 0:
            raise InputDataError(f"{path}: EchoTime {te} must be a positive number of seconds")
        if te > 0.5:
            raise InputDataError(f"{path}: EchoTime {te} looks like milliseconds; BIDS wants seconds")
        if te < MIN_ECHO_TIME_S:
            raise InputDataError(f"{path}: EchoTime {te:g} s is shorter than any MRI echo time "
                                 f"({MIN_ECHO_TIME_S:g} s); BIDS wants seconds (microseconds given?)")
        echo_times.append(te)
        if "MagneticFieldStrength" in meta:
            try:
                field = float(meta["MagneticFieldStrength"])
            except (TypeError, ValueError):
                raise InputDataError(f"{path}: MagneticFieldStrength {meta['MagneticFieldStrength']!r} "
                                     "is not a number") from None
            if not math.isfinite(field) or field <= 0:
                raise InputDataError(f"{path}: MagneticFieldStrength {field} must be a positive number of tesla")
            if field > MAX_FIELD_STRENGTH_T:
                raise InputDataError(f"{path}: MagneticFieldStrength {field:g} T is above any MRI scanner's "
                                     f"({MAX_FIELD_STRENGTH_T:g} T); BIDS wants tesla (millitesla given?)")
            fields.add(field)
    name = run_name(entities)
    seen: dict[int, Path] = {}
    for path, te in sorted(zip(paths, echo_times)):
        key = round(te * 1e6)  # to the microsecond: closer echoes cannot be told apart
        if key in seen:
            other = seen[key]
            hint = (".nii and .nii.gz copies of one echo?" if _stem(path) == _stem(other)
                    else "mixed part-mag and part-less files?")
            raise InputDataError(f"{path}: same EchoTime ({te} s) as {other.name}; each echo needs its own "
                                 f"echo time ({hint})")
        seen[key] = path
    if len(paths) < MIN_ECHOES:
        raise InputDataError(f"{paths[0].parent}: run {name} has {len(paths)} echoes "
                             f"({', '.join(sorted(p.name for p in paths))}); at least {MIN_ECHOES} are needed "
                             "for PDFF, R2* and S0 (three unknowns)")
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


def _stem(path: Path) -> str:
    return path.name.removesuffix(".gz").removesuffix(".nii")


def _check_one_echo_per_file(path: Path) -> None:
    """From the header alone: a 4-D image of several volumes (all echoes in one file) is refused
    before its sidecar's list of echo times is read as one echo's."""
    try:
        shape = nib.load(path).shape
    except Exception:  # unreadable: _read_echo says so when the run is loaded
        return
    if len(shape) == 4 and shape[3] > 1:
        raise InputDataError(f"{path}: a 4-D image of {shape[3]} volumes; BIDS MEGRE wants one 3-D file per "
                             "echo (echo-<index>), each with its EchoTime in its sidecar")


def read_volume(path: Path, what: str, dtype: type | None = None) -> tuple[nib.Nifti1Image, np.ndarray]:
    """An image and its data, a singleton 4th axis dropped and a 2-D slice made 3-D."""
    try:
        img = nib.load(path)
        data = np.asarray(img.dataobj, dtype=dtype)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise _unreadable(path, what, exc) from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 2:
        data = data[..., None]
    return img, data


def load_run(run: MegreRun, threads: int = 1) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Magnitudes of shape (X, Y, Z, n_echoes), float32 (what scanners store; half the memory of
    float64), and the first echo's image (for geometry). Echoes are read `threads` at a time
    (decompression and checks run outside the GIL).

    NaN and Inf come back as NaN (with a warning): mask.usable_voxels leaves such voxels out of
    every mask, so they get 0 in the maps instead of being fitted as if they were zeros."""
    data, reference = None, None
    first = run.echo_files[0].name
    threads = max(1, threads)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        # A batch at a time: at most `threads` float64 volumes held besides `data`.
        for start in range(0, len(run.echo_files), threads):
            paths = run.echo_files[start:start + threads]
            for e, (path, (img, volume)) in enumerate(zip(paths, pool.map(_read_echo, paths)), start):
                if data is None or reference is None:
                    reference = img
                    data = np.empty(volume.shape + (len(run.echo_files),), dtype=np.float32)
                elif volume.shape != data.shape[:3]:
                    raise InputDataError(f"{path}: shape {volume.shape} differs from {first}'s {data.shape[:3]}; "
                                         "all echoes must share one grid")
                elif (distance := grid_mismatch_mm(img.affine, reference.affine, volume.shape)) is not None:
                    raise InputDataError(f"{path}: affine differs from {first}'s, moving voxels by up to "
                                         f"{distance:.3g} mm; all echoes must share one grid")
                data[..., e] = volume
    assert data is not None and reference is not None  # a run has at least MIN_ECHOES files
    return data, reference


def _read_echo(path: Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    """One echo's image and its magnitudes, checked, non-finite values as NaN."""
    img, volume = read_volume(path, "the NIfTI image", np.float64)
    if volume.ndim != 3:
        raise InputDataError(f"{path}: expected a 3-D image per echo (one file per echo), got shape "
                             f"{volume.shape}")
    finite = np.isfinite(volume)
    if (negative := int((finite & (volume < 0)).sum())):  # -Inf is non-finite, masked below
        raise InputDataError(f"{path}: {negative} negative value(s); this app needs magnitude images "
                             "(part-mag)")
    if not (finite & (volume > 0)).any():
        raise InputDataError(f"{path}: the image is all zeros" if finite.all() else
                             f"{path}: the image has no positive finite value (only zeros, NaN or Inf)")
    if not finite.all():
        log.warning("%s: %d voxel(s) with NaN or Inf values; left out of the mask (0 in the maps)",
                    path, int((~finite).sum()))
        volume = np.where(finite, volume, np.nan)
    return img, volume


def load_mask(path: Path, shape: tuple[int, ...], affine: np.ndarray, image: str) -> np.ndarray:
    """A user's mask (nonzero = in) as a boolean array; it must be on the grid (`shape`, `affine`)
    of `image` (named in the error): a mask in another space would select the wrong voxels."""
    img, data = read_volume(path, "the mask")
    if data.shape != shape:
        raise InputDataError(f"{path}: mask shape {data.shape} differs from the image shape {shape} of {image}; "
                             "resample the mask to the MEGRE grid")
    if (distance := grid_mismatch_mm(img.affine, affine, shape)) is not None:
        raise InputDataError(f"{path}: mask affine differs from that of {image}, moving voxels by up to "
                             f"{distance:.3g} mm; resample the mask to the MEGRE grid")
    return data > 0


def run_size(run: MegreRun) -> int:
    """Number of values (voxels x echoes) of a run, from the image headers alone."""
    size = 0
    for path in run.echo_files:
        try:
            size += int(np.prod(nib.load(path).shape))
        except Exception as exc:  # nibabel raises many types for corrupt files
            raise _unreadable(path, "the NIfTI header", exc) from None
    return size


def _unreadable(path: Path, what: str, exc: Exception) -> InputDataError:
    why = " ".join(str(exc).split())  # one line, whatever the library's message
    return InputDataError(f"{path}: cannot read {what} ({exc.__class__.__name__}: {why})")
