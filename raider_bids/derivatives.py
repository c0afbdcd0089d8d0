"""Names, sidecars and atomic writes of the BIDS-Derivatives dataset. The only module that writes files."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import nibabel as nib
import numpy as np

from . import CODE_URL, NAME, __version__
from .bids_io import MegreRun, RunEntities, parse_entities
from .errors import OutputError

log = logging.getLogger(__name__)

BIDS_VERSION = "1.10.0"
# The validator flags the figures directories themselves: a pattern with a trailing slash misses them.
BIDSIGNORE = ("*_PDFFmap.*", "*_LLRmap.*", "*_provenance.json", "*_weights.pt", "*.html", "figures",
              "group_roistats.*")
# What a finished run has; the provenance is written last, so it marks a run as finished.
RUN_OUTPUTS = ("PDFFmap", "R2starmap", "S0map", "mask", "provenance")
CANDIDATES = {
    "water": "the water-dominant candidate, PDFF constrained to [0, 0.58] (water network, or water-side fit)",
    "fat": "the fat-dominant candidate, PDFF constrained to [0.58, 1] (fat network, or fat-side fit)",
    "full": "the single network with PDFF unconstrained in [0, 1] (--method single)",
}


def _descriptions() -> dict[str, str]:
    """Every desc label this app writes: the mask, the candidates, and with several --method, each
    method's maps (desc-<method>) and networks (desc-<method><network>)."""
    from .estimators import ESTIMATORS

    rows = {"foreground": "voxels holding signal (automatic or user-given mask); the maps are estimated here only"}
    rows |= CANDIDATES
    for name, estimator in sorted(ESTIMATORS.items()):
        rows[name] = f"maps of --method {name}: {estimator.description}"
        for network in getattr(estimator, "networks", ()):
            rows[f"{name}{network}"] = f"the {network} network of --method {name} (when it is not the first method)"
    return rows


DESCRIPTIONS = _descriptions()
README_TEXT = """raider-bids derivatives

Per MEGRE run, in sub-<label>/[ses-<label>/]anat/:
  *_PDFFmap.nii.gz    proton density fat fraction (0-1)
  *_R2starmap.nii.gz  R2* (1/s)
  *_S0map.nii.gz      signal at echo time 0 (image units)
  *_LLRmap.nii.gz     log-likelihood of the chosen (water or fat) solution minus the other (nats)
  *_desc-water_*map, *_desc-fat_*map  the two candidates (with --write-candidates)
  *_desc-<method>_*map  each method's maps, when several were run (--method ssl fit supervised);
                      the first method's maps are also under the plain names
  *_desc-foreground_mask.nii.gz  voxels where the maps were estimated
  *_provenance.json   how the maps were made (versions, options, seed, noise level, training)
  *_desc-<water|fat|full>_weights.pt  trained networks (torch.load(..., weights_only=True))
Each map has a JSON sidecar with units, sources and the estimation method.

Reports (open in any browser, offline):
  sub-<label>.html    per participant: maps, training curves, histograms, provenance
                      (figures in sub-<label>/figures/)
  group.html          ROI statistics across participants (figures in figures/)
  group_roistats.tsv  ROI statistics, one row per run x ROI x map (data dictionary in .json)
"""
# suffix -> (Description, Units)
MAPS = {
    "PDFFmap": ("Proton density fat fraction, rho_F / (rho_W + rho_F); 0 outside the mask", "fraction (0-1)"),
    "R2starmap": ("Transverse relaxation rate R2*; 0 outside the mask", "1/s"),
    "S0map": ("Signal at echo time 0 given by the fitted model; 0 outside the mask", "arbitrary"),
    "LLRmap": ("How strongly the data prefer the chosen solution: Rician log-likelihood of the chosen "
               "candidate minus that of the other (water vs fat); near 0 = ambiguous; 0 outside the mask",
               "nats"),
}


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """A temporary path beside `target` that replaces it only if the block succeeds. Failing
    writes (a file where a directory should be, no permission, a full disk) raise OutputError."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix="".join(target.suffixes) or ".tmp",
                                   dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise OutputError(f"{exc.filename or target}: cannot write {target.name} ({exc.strerror or exc})") from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, target)
    except OSError as exc:
        raise OutputError(f"{target}: cannot write ({exc.strerror or exc})") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(target: Path, content: Any) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(content, indent=2, default=str) + "\n")


def write_text(target: Path, content: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(content)


def write_nifti(target: Path, data: np.ndarray, reference: nib.Nifti1Image, dtype: type = np.float32) -> None:
    """`data` in the reference image's grid, with its affine and orientation codes."""
    header = reference.header.copy()
    header.set_data_dtype(dtype)
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), reference.affine, header)
    img.header.set_slope_inter(1.0, 0.0)
    with atomic_path(target) as tmp:
        nib.save(img, tmp)


def write_figure(target: Path, figure) -> None:
    """A matplotlib figure as PNG (fast zlib level: encoding at the default took longer than drawing)."""
    with atomic_path(target) as tmp:
        figure.savefig(tmp, format="png", dpi=100, pil_kwargs={"compress_level": 1})


def write_torch(target: Path, obj: Any) -> None:
    import torch

    with atomic_path(target) as tmp:
        torch.save(obj, tmp)


def container_info() -> dict[str, str] | None:
    """How we are containerised, from variables Apptainer/Singularity and our image set."""
    for var in ("APPTAINER_CONTAINER", "SINGULARITY_CONTAINER"):
        if os.environ.get(var):
            return {"Type": "singularity", "Tag": os.environ[var]}
    if os.environ.get("RAIDER_BIDS_CONTAINER"):
        return {"Type": "docker", "Tag": os.environ["RAIDER_BIDS_CONTAINER"]}
    return None


def dataset_description(bids_dir: Path) -> dict[str, Any]:
    generated_by: dict[str, Any] = {"Name": NAME, "Version": __version__, "CodeURL": CODE_URL,
                                    "Description": "PDFF, R2* and S0 maps from magnitude multi-echo gradient echo"}
    container = container_info()
    if container:
        generated_by["Container"] = container
    return {"Name": "raider-bids derivatives: PDFF, R2* and S0 maps", "BIDSVersion": BIDS_VERSION,
            "DatasetType": "derivative", "GeneratedBy": [generated_by],
            "SourceDatasets": [{"URL": "bids:raw:"}],
            "DatasetLinks": {"raw": Path(bids_dir).resolve().as_uri()}}


def prepare_output_dataset(output_dir: Path, bids_dir: Path) -> None:
    """Create the derivative dataset's top-level files; safe when many runs start at once."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        desc_file = output_dir / "dataset_description.json"
        if desc_file.is_file():
            try:
                existing = json.loads(desc_file.read_text())
                owner = existing.get("GeneratedBy", [{}])[0].get("Name")
            except (ValueError, AttributeError, IndexError, TypeError):
                owner = None
            if owner != NAME:
                raise OutputError(f"{desc_file}: the output directory holds another dataset "
                                  f"(GeneratedBy {owner!r}); choose an empty or raider-bids directory")
        else:
            write_json(desc_file, dataset_description(bids_dir))
        ignore = output_dir / ".bidsignore"
        lines = ignore.read_text().splitlines() if ignore.is_file() else []
        missing = [p for p in BIDSIGNORE if p not in lines]
        if missing:
            write_text(ignore, "\n".join(lines + missing) + "\n")
        readme = output_dir / "README"
        if not readme.is_file():
            write_text(readme, README_TEXT)
        rows = ["desc_id\tdescription"] + [f"desc-{k}\t{v}" for k, v in DESCRIPTIONS.items()]
        write_text(output_dir / "descriptions.tsv", "\n".join(rows) + "\n")
    except OSError as exc:
        raise OutputError(f"{exc.filename or output_dir}: cannot write the output dataset "
                          f"({exc.strerror or exc})") from None


def run_directory(output_dir: Path, run: RunEntities) -> Path:
    parts = [f"sub-{run.subject}"] + ([f"ses-{run.session}"] if run.session else []) + ["anat"]
    return output_dir.joinpath(*parts)


def output_path(output_dir: Path, run: RunEntities, suffix: str, desc: str | None = None, ext: str = ".nii.gz") -> Path:
    name = run.name + (f"_desc-{desc}" if desc else "") + f"_{suffix}{ext}"
    return run_directory(output_dir, run) / name


def map_sidecar(run: MegreRun, suffix: str, algorithm: str, reference: str, desc: str | None = None) -> dict[str, Any]:
    description, units = MAPS[suffix]
    if desc in CANDIDATES:
        description = f"Candidate: {DESCRIPTIONS[desc]}. {description}"
    elif desc is not None:
        description = f"{DESCRIPTIONS[desc][0].upper()}{DESCRIPTIONS[desc][1:]}. {description}"
    return {"Description": description, "Units": units,
            "Sources": [f"bids:raw:{f}" for f in run.relative_files()],
            "EstimationAlgorithm": algorithm, "EstimationReference": reference,
            "EchoTime": list(run.echo_times_s), "MagneticFieldStrength": run.field_strength_t,
            "SkullStripped": False}


def report_path(output_dir: Path, subject: str) -> Path:
    return output_dir / f"sub-{subject}.html"


def figure_directory(output_dir: Path, subject: str | None) -> Path:
    """Where a participant's (or, for None, the group's) report figures go."""
    return output_dir / f"sub-{subject}" / "figures" if subject else output_dir / "figures"


@dataclass
class RunOutputs(RunEntities):
    """What the participant level left for one run."""

    entities: tuple[tuple[str, str], ...]
    files: dict[str, Path]  # suffix (PDFFmap, ..., mask, provenance) -> existing file
    provenance: dict = field(default_factory=dict)

    @property
    def listed(self) -> dict[str, Path]:
        """Every output the provenance lists (key such as PDFFmap-fit or weights-water -> path
        beside the provenance), whether or not it exists."""
        outputs = self.provenance.get("Outputs") if isinstance(self.provenance, dict) else None
        if "provenance" not in self.files or not isinstance(outputs, dict):
            return {}
        return {k: self.files["provenance"].parent / str(name) for k, name in outputs.items()}

    @property
    def missing(self) -> list[str]:
        """Outputs a finished run has that this one lacks: the basic ones, and every file its
        provenance lists (an interrupted rewrite can leave a provenance without its maps)."""
        return [s for s in RUN_OUTPUTS if s not in self.files] + [
            k for k, path in self.listed.items() if k not in RUN_OUTPUTS and not path.is_file()]

    @property
    def finished(self) -> bool:
        return not self.missing


def _run_files(output_dir: Path, run: RunEntities) -> dict[str, Path]:
    candidates = {s: output_path(output_dir, run, s) for s in MAPS} | {
        "mask": output_path(output_dir, run, "mask", desc="foreground"),
        "provenance": output_path(output_dir, run, "provenance", ext=".json")}
    return {s: p for s, p in candidates.items() if p.is_file()}


def run_outputs(output_dir: Path, run: RunEntities) -> RunOutputs:
    """What `output_dir` holds for one run (finished or not)."""
    files = _run_files(output_dir, run)
    provenance: dict = {}
    if "provenance" in files:
        try:
            provenance = json.loads(files["provenance"].read_text())
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable provenance (%s)", files.pop("provenance"), exc)
    return RunOutputs(run.entities, files, provenance)


def find_run_outputs(output_dir: Path) -> list[RunOutputs]:
    """Every run the participant level wrote (finished or not) in `output_dir`, sorted by name."""
    found: set[tuple[tuple[str, str], ...]] = set()
    for pattern in ("*_PDFFmap.nii.gz", "*_provenance.json"):
        for path in output_dir.glob(f"sub-*/**/anat/{pattern}"):
            entities = tuple(parse_entities(path))
            if "desc" not in dict(entities) and not path.name.startswith("."):
                found.add(entities)
    return sorted((run_outputs(output_dir, RunOutputs(e, {})) for e in found), key=lambda r: r.name)


def remove_run_outputs(output_dir: Path, run: RunEntities) -> list[Path]:
    """Delete every file of one run: maps, sidecars, weights, report figures and the temporary
    files of writes that were killed. The provenance goes first, so that an interruption here
    never leaves a run that looks finished. Returns what was deleted."""
    own = dict(run.entities)

    def belongs(path: Path) -> bool:
        # Temporary files are '.<target name>.<random><suffixes>'; desc-<label> marks variants.
        entities = dict(parse_entities(Path(path.name.lstrip("."))))
        entities.pop("desc", None)
        return path.is_file() and entities == own

    directories = (run_directory(output_dir, run), figure_directory(output_dir, run.subject))
    files = [p for d in directories if d.is_dir() for p in d.iterdir() if belongs(p)]
    files.sort(key=lambda p: not p.name.endswith("_provenance.json"))
    try:
        for path in files:
            path.unlink(missing_ok=True)
    except OSError as exc:
        raise OutputError(f"{exc.filename}: cannot remove an earlier output ({exc.strerror or exc})") from None
    return files


def write_tsv(target: Path, columns: list[str], rows: list[dict[str, Any]]) -> None:
    """A BIDS TSV: tab-separated, header row, missing values as n/a."""
    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and not np.isfinite(value)):
            return "n/a"
        return format(value, ".8g") if isinstance(value, float) else str(value)

    lines = ["\t".join(columns)] + ["\t".join(cell(row.get(c)) for c in columns) for row in rows]
    write_text(target, "\n".join(lines) + "\n")
