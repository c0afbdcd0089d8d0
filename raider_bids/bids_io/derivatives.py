"""The BIDS-Derivatives dataset this app writes (DerivativesDataset): its top-level files, the
names of every output and their desc- variants, the sidecars, writing a run's outputs, finding
them again and removing them."""

from __future__ import annotations

import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from .. import CODE_URL, NAME, __version__
from ..config import METHODS, Method
from ..errors import OutputError
from ..physics.parameters import PARAMETERS
from ..provenance import Provenance
from .files import copy_file, write_json, write_nifti, write_text, write_torch
from .raw import MegreRun, RunEntities, parse_entities, read_volume

log = logging.getLogger(__name__)

BIDS_VERSION = "1.10.0"
# The validator flags the figures directories themselves: a pattern with a trailing slash misses them.
BIDSIGNORE = ("*_PDFFmap.*", "*_LLRmap.*", "*_SideProbmap.*", "*_PDFFsdmap.*", "*_R2starsdmap.*",
              "*_provenance.json", "*_weights.pt", "*.html", "figures",
              "group_roistats.*", "group_qc.*")
# What a finished run has; the provenance is written last, so it marks a run as finished.
RUN_OUTPUTS = ("PDFFmap", "R2starmap", "S0map", "mask", "provenance")
CANDIDATES = {
    "water": "the water-dominant candidate, PDFF constrained to [0, 0.58] (water network, or water-side fit)",
    "fat": "the fat-dominant candidate, PDFF constrained to [0.58, 1] (fat network, or fat-side fit)",
    "full": "the single network with PDFF unconstrained in [0, 1] (--method single)",
}
# suffix -> (Description, Units)
MAPS = {p.suffix: (f"{p.description}; 0 outside the mask", p.units) for p in PARAMETERS} | {
    "LLRmap": ("How strongly the data prefer the chosen solution: Rician log-likelihood of the chosen "
               "candidate minus that of the other (water vs fat); near 0 = ambiguous; negative where the "
               "spatial choice followed the neighbours against the voxel's own data; 0 outside the mask",
               "nats"),
    "SideProbmap": ("Probability that the chosen side (water- or fat-dominant) is right, from the two "
                    "candidates' Rician likelihoods (equal prior odds) and, with the spatial choice, the "
                    "neighbourhood term: the chosen side's marginal probability under the choice's energy "
                    "(loopy belief propagation), below 0.5 where the energy's minimum and the marginal "
                    "disagree; 0 outside the mask",
                    "probability (0-1)"),
    "PDFFsdmap": ("Cramer-Rao lower bound on the standard deviation of PDFF at the estimate, from the "
                  "Rician Fisher information of the magnitude model (S0, PDFF, R2* unknown); 0 outside "
                  "the mask", "fraction (0-1)"),
    "R2starsdmap": ("Cramer-Rao lower bound on the standard deviation of R2* at the estimate, from the "
                    "Rician Fisher information of the magnitude model (S0, PDFF, R2* unknown); 0 outside "
                    "the mask", "1/s"),
}


def _descriptions() -> dict[str, str]:
    """Every desc label this app writes: the mask, the candidates, and with several --method, each
    method's maps (desc-<method>) and networks (desc-<method><network>)."""
    rows = {"foreground": "voxels holding signal (automatic or user-given mask); the maps are estimated here only"}
    rows |= CANDIDATES
    for name, method in sorted(METHODS.items()):
        rows[name] = f"maps of --method {name}: {method.description}"
        for network in method.networks:
            rows[f"{name}{network}"] = f"the {network} network of --method {name} (when it is not the first method)"
    return rows


DESCRIPTIONS = _descriptions()
README_TEXT = """raider-bids derivatives

Per MEGRE run, in sub-<label>/[ses-<label>/]anat/:
  *_PDFFmap.nii.gz    proton density fat fraction (0-1)
  *_R2starmap.nii.gz  R2* (1/s)
  *_S0map.nii.gz      signal at echo time 0 (image units)
  *_LLRmap.nii.gz     log-likelihood of the chosen (water or fat) solution minus the other (nats)
  *_SideProbmap.nii.gz  probability that the chosen side (water or fat) is right
  *_PDFFsdmap.nii.gz, *_R2starsdmap.nii.gz  Cramer-Rao standard deviations of PDFF and R2*
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
  group_qc.tsv        quality control, one row per run: identifiability, water/fat choice (dictionary in .json)
"""


@dataclass
class MethodOutputs:
    """What one method gives a run's files: its maps over the mask, its candidates' and its
    networks' weights."""

    method: Method
    maps: dict[str, np.ndarray]  # suffix (PDFFmap, R2starmap, S0map[, LLRmap]) -> values (N,)
    candidates: dict[str, dict[str, np.ndarray]]  # kind (water, fat) -> suffix -> values (N,)
    weights: dict[str, Any]  # network -> what torch.save writes


@dataclass
class RunOutputs(RunEntities):
    """What the participant level left for one run."""

    entities: tuple[tuple[str, str], ...]
    files: dict[str, Path]  # suffix (PDFFmap, ..., mask, provenance) -> existing file
    provenance: Provenance | None = None

    @property
    def listed(self) -> dict[str, Path]:
        """Every output the provenance lists (key such as PDFFmap-fit or weights-water -> path
        beside the provenance), whether or not it exists."""
        if "provenance" not in self.files or self.provenance is None:
            return {}
        return {k: self.files["provenance"].parent / str(name) for k, name in self.provenance.outputs.items()}

    @property
    def missing(self) -> list[str]:
        """Outputs a finished run has that this one lacks: the basic ones, and every file its
        provenance lists (an interrupted rewrite can leave a provenance without its maps)."""
        return [s for s in RUN_OUTPUTS if s not in self.files] + [
            k for k, path in self.listed.items() if k not in RUN_OUTPUTS and not path.is_file()]

    @property
    def finished(self) -> bool:
        return not self.missing

    def method_maps(self) -> dict[str, dict[str, Path]]:
        """Per method the run was processed with, the files of its parameter maps (parameter name,
        as in the group table: PDFF, R2star, S0 -> path): the plain maps for one method, the
        desc-<method> variants for several."""
        if self.provenance is None:
            return {}
        if len(self.provenance.methods) < 2:
            return {self.provenance.estimation.method: {p.name: self.files[p.suffix] for p in PARAMETERS}}
        return {m: {p.name: self.listed[f"{p.suffix}-{m}"] for p in PARAMETERS} for m in self.provenance.methods}

    def read_mask(self) -> np.ndarray:
        """The finished run's foreground mask (bool, on the images' grid)."""
        return read_volume(self.files["mask"], "the finished run's mask")[1] > 0

    def read_parameters(self, mask: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
        """Per method of the run, its parameter maps over `mask` by key (pdff, r2star_s, s0), float64."""
        return {method: {p.key: read_volume(files[p.name], f"the finished {method} {p.name} map",
                                            np.float64)[1][mask] for p in PARAMETERS}
                for method, files in self.method_maps().items()}


class DerivativesDataset:
    """The output directory as a BIDS-Derivatives dataset."""

    def __init__(self, root: Path):
        self.root = Path(root)

    # Top level.
    def exists(self) -> bool:
        return (self.root / "dataset_description.json").is_file()

    def prepare(self, bids_dir: Path) -> None:
        """Create the dataset's top-level files; safe when many runs start at once (each file is
        written atomically with the same content by every process)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            desc_file = self.root / "dataset_description.json"
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
            ignore = self.root / ".bidsignore"
            lines = ignore.read_text().splitlines() if ignore.is_file() else []
            missing = [p for p in BIDSIGNORE if p not in lines]
            if missing:
                write_text(ignore, "\n".join(lines + missing) + "\n")
            readme = self.root / "README"
            if not readme.is_file():
                write_text(readme, README_TEXT)
            rows = ["desc_id\tdescription"] + [f"desc-{k}\t{v}" for k, v in DESCRIPTIONS.items()]
            write_text(self.root / "descriptions.tsv", "\n".join(rows) + "\n")
        except OSError as exc:
            raise OutputError(f"{exc.filename or self.root}: cannot write the output dataset "
                              f"({exc.strerror or exc})") from None

    # Names.
    def run_directory(self, run: RunEntities) -> Path:
        parts = [f"sub-{run.subject}"] + ([f"ses-{run.session}"] if run.session else []) + ["anat"]
        return self.root.joinpath(*parts)

    def path(self, run: RunEntities, suffix: str, desc: str | None = None, ext: str = ".nii.gz") -> Path:
        """An output of `run`: <run name>[_desc-<desc>]_<suffix><ext> in its folder."""
        return self.run_directory(run) / (run.name + (f"_desc-{desc}" if desc else "") + f"_{suffix}{ext}")

    def report_path(self, subject: str) -> Path:
        return self.root / f"sub-{subject}.html"

    def figure_directory(self, subject: str | None) -> Path:
        """Where a participant's (or, for None, the group's) report figures go."""
        return self.root / f"sub-{subject}" / "figures" if subject else self.root / "figures"

    # Writing a run.
    def write_run(self, run: MegreRun, reference: nib.Nifti1Image, mask: np.ndarray, mask_source: str,
                  methods: list[MethodOutputs], write_candidates: bool, threads: int) -> dict[str, Path]:
        """The maps of the first (primary) method under the plain names; with several methods,
        every method's maps also as desc-<method> variants; the first's candidates (desc-water,
        desc-fat) if asked; the mask; the weights (desc-<network> for the first method,
        desc-<method><network> for the others). Returns output key -> path; the provenance,
        which marks the run as finished, is written after (write_provenance)."""
        primary = methods[0]
        volumes = {(suffix, None): (values, primary.method) for suffix, values in primary.maps.items()}
        if write_candidates:
            volumes |= {(suffix, kind): (values, primary.method)
                        for kind, candidate in primary.candidates.items() for suffix, values in candidate.items()}
        if len(methods) > 1:
            volumes |= {(suffix, m.method.name): (values, m.method)
                        for m in methods for suffix, values in m.maps.items()}
        mask_path = self.path(run, "mask", desc="foreground")
        outputs = self._write_volumes(run, reference, mask, volumes, threads, mask_path)
        write_json(_sidecar_path(mask_path), {"Description": f"Foreground mask, {mask_source}",
                                              "Sources": _sources(run), "SkullStripped": False})
        outputs["mask"] = mask_path
        return outputs | self._write_weights(run, methods, primary)

    def add_methods(self, previous: RunOutputs, run: MegreRun, reference: nib.Nifti1Image, mask: np.ndarray,
                    methods: list[MethodOutputs], threads: int) -> dict[str, Path]:
        """Other methods' outputs beside a finished run's (`previous`), which are left as they
        are: each new method's maps as desc-<method> variants and its weights as
        desc-<method><network>; where the run had one method, its maps are also copied to
        desc-<method> variants, as a run with several methods has them. Returns the new output
        keys -> paths; the provenance listing them all is written after (write_provenance)."""
        assert previous.provenance is not None
        primary = previous.provenance.estimation.method
        outputs: dict[str, Path] = {}
        if len(previous.provenance.methods) < 2:
            for key, path in previous.listed.items():
                if key in MAPS:
                    copy = self.path(run, key, desc=primary)
                    copy_file(path, copy)
                    write_json(_sidecar_path(copy), map_sidecar(run, key, METHODS[primary], primary))
                    outputs[f"{key}-{primary}"] = copy
        volumes = {(suffix, m.method.name): (values, m.method) for m in methods for suffix, values in m.maps.items()}
        outputs |= self._write_volumes(run, reference, mask, volumes, threads)
        return outputs | self._write_weights(run, methods, None)

    def _write_volumes(self, run: MegreRun, reference: nib.Nifti1Image, mask: np.ndarray,
                       volumes: dict[tuple[str, str | None], tuple[np.ndarray, Method]], threads: int,
                       mask_path: Path | None = None) -> dict[str, Path]:
        """Each (suffix, desc) -> (values over the mask, method) as a map with its sidecar, and
        the mask itself at `mask_path` if given."""
        outputs: dict[str, Path] = {}
        # Several files at once: their gzip compression runs outside the GIL. The block waits for
        # every write, so no file appears after an interruption's cleanup.
        with ThreadPoolExecutor(max_workers=threads) as pool:
            jobs = []
            for (suffix, desc), (values, method) in volumes.items():
                path = self.path(run, suffix, desc=desc)
                jobs.append(pool.submit(_write_map, path, values, mask, reference))
                write_json(_sidecar_path(path), map_sidecar(run, suffix, method, desc))
                outputs[suffix if desc is None else f"{suffix}-{desc}"] = path
            if mask_path is not None:
                jobs.append(pool.submit(write_nifti, mask_path, mask, reference, dtype=np.uint8))
            for job in jobs:
                job.result()
        return outputs

    def _write_weights(self, run: MegreRun, methods: list[MethodOutputs],
                       primary: MethodOutputs | None) -> dict[str, Path]:
        """The networks' weights: desc-<network> for the primary method, desc-<method><network>
        for the others."""
        outputs: dict[str, Path] = {}
        for m in methods:
            for network, weights in m.weights.items():
                desc = network if m is primary else f"{m.method.name}{network}"
                path = self.path(run, "weights", desc=desc, ext=".pt")
                write_torch(path, weights)
                outputs[f"weights-{desc}"] = path
        return outputs

    def write_provenance(self, run: RunEntities, provenance: Provenance) -> Path:
        path = self.path(run, "provenance", ext=".json")
        write_json(path, provenance.to_json())
        return path

    # Reading.
    def run_outputs(self, run: RunEntities) -> RunOutputs:
        """What the dataset holds for one run (finished or not)."""
        candidates = {s: self.path(run, s) for s in MAPS} | {
            "mask": self.path(run, "mask", desc="foreground"),
            "provenance": self.path(run, "provenance", ext=".json")}
        files = {s: p for s, p in candidates.items() if p.is_file()}
        provenance = None
        if "provenance" in files:
            try:
                provenance = Provenance.from_json(json.loads(files["provenance"].read_text()))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                log.warning("%s: unreadable provenance (%s: %s)", files.pop("provenance"), exc.__class__.__name__, exc)
        return RunOutputs(run.entities, files, provenance)

    def subject_outputs(self, subject: str) -> RunOutputs:
        """The outputs of a subject's one run without session or other entities (as the demo and
        the in silico experiment write them)."""
        return self.run_outputs(RunOutputs((("sub", subject),), {}))

    def find_run_outputs(self) -> list[RunOutputs]:
        """Every run the participant level wrote (finished or not), sorted by name."""
        found: set[tuple[tuple[str, str], ...]] = set()
        for pattern in ("*_PDFFmap.nii.gz", "*_provenance.json"):
            for path in self.root.glob(f"sub-*/**/anat/{pattern}"):
                entities = tuple(parse_entities(path))
                if "desc" not in dict(entities) and not path.name.startswith("."):
                    found.add(entities)
        return sorted((self.run_outputs(RunOutputs(e, {})) for e in found), key=lambda r: r.name)

    # Removal.
    def run_files(self, run: RunEntities) -> list[Path]:
        """Every file of one run: maps, sidecars, weights, provenance, report figures and the
        temporary files of writes that were killed."""
        own = dict(run.entities)

        def belongs(path: Path) -> bool:
            # Temporary files are '.<target name>.<random><suffixes>'; desc-<label> marks variants.
            entities = dict(parse_entities(Path(path.name.lstrip("."))))
            entities.pop("desc", None)
            return path.is_file() and entities == own

        directories = (self.run_directory(run), self.figure_directory(run.subject))
        return [p for d in directories if d.is_dir() for p in d.iterdir() if belongs(p)]

    def stray_files(self, outputs: RunOutputs) -> list[Path]:
        """The files of a finished run that its provenance does not account for: what a call
        killed while adding methods to it left (temporary files, maps not yet listed)."""
        listed = set(outputs.listed.values()) | {outputs.files["provenance"]}
        listed |= {_sidecar_path(p) for p in listed if p.name.endswith(".nii.gz")}
        return [p for p in self.run_files(outputs) if p.parent == self.run_directory(outputs) and p not in listed]

    def remove_run(self, run: RunEntities, keep: frozenset[Path] = frozenset()) -> list[Path]:
        """Delete every file of one run but those in `keep` (run_files). Returns what was deleted."""
        return self.remove([p for p in self.run_files(run) if p not in keep])

    def remove(self, files: list[Path]) -> list[Path]:
        """Delete `files`, a provenance first, so that an interruption here never leaves a run that
        looks finished. Returns them, in the order deleted."""
        files = sorted(files, key=lambda p: not p.name.endswith("_provenance.json"))
        try:
            for path in files:
                path.unlink(missing_ok=True)
        except OSError as exc:
            raise OutputError(f"{exc.filename}: cannot remove an earlier output ({exc.strerror or exc})") from None
        return files


def _write_map(path: Path, values: np.ndarray, mask: np.ndarray, reference: nib.Nifti1Image) -> None:
    volume = np.zeros(mask.shape, dtype=np.float32)
    volume[mask] = values
    write_nifti(path, volume, reference)


def _sidecar_path(image: Path) -> Path:
    return image.with_name(image.name.replace(".nii.gz", ".json"))


def _sources(run: MegreRun) -> list[str]:
    return [f"bids:raw:{f}" for f in run.relative_files()]


def map_sidecar(run: MegreRun, suffix: str, method: Method, desc: str | None = None) -> dict[str, Any]:
    description, units = MAPS[suffix]
    if desc in CANDIDATES:
        description = f"Candidate: {DESCRIPTIONS[desc]}. {description}"
    elif desc is not None:
        description = f"{DESCRIPTIONS[desc][0].upper()}{DESCRIPTIONS[desc][1:]}. {description}"
    return {"Description": description, "Units": units, "Sources": _sources(run),
            "EstimationAlgorithm": method.description, "EstimationReference": method.reference,
            "EchoTime": list(run.echo_times_s), "MagneticFieldStrength": run.field_strength_t,
            "SkullStripped": False}


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
