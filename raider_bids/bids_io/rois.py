"""Regions of interest from BIDS derivative datasets: `*_label-<name>_mask` images and `*_dseg`
segmentations with their `index`/`name` lookup table, matched to runs by entities."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from ..errors import InputDataError, MissingInputError
from .raw import AFFINE_TOLERANCE_MM, parse_entities, read_volume

# Entities that describe the ROI itself rather than which acquisition it belongs to.
DESCRIPTIVE_ENTITIES = frozenset({"label", "desc", "space", "atlas", "res", "den", "seg", "hemi"})
# Index entities are numbers (run-1 = run-01); labels (sub, ses, acq, ...) compare as written.
INDEX_ENTITIES = frozenset({"run", "echo", "flip", "inv", "chunk", "split"})


@dataclass(frozen=True)
class RoiFile:
    """One ROI image: a binary mask (one region) or a segmentation (one region per lookup index)."""

    path: Path
    dataset: Path
    entities: tuple[tuple[str, str], ...]
    regions: tuple[tuple[int, str], ...]  # (index, name); a mask has ((1, label),) meaning "nonzero"
    is_segmentation: bool

    @property
    def source(self) -> str:
        """`<dataset folder>:<path inside it>`, stable across machines and containers."""
        return f"{self.dataset.name}:{self.path.relative_to(self.dataset).as_posix()}"


@dataclass
class Roi:
    name: str
    source: str
    voxels: np.ndarray  # bool, the run's grid


def _same_value(key: str, a: str, b: str) -> bool:
    if key in INDEX_ENTITIES and a.isdigit() and b.isdigit():
        return int(a) == int(b)
    return a == b


def applies_to(roi: RoiFile, run_entities: tuple[tuple[str, str], ...]) -> bool:
    """An ROI belongs to a run when every non-descriptive entity it has, the run has with the same value."""
    run = dict(run_entities)
    return all(k in DESCRIPTIVE_ENTITIES or (k in run and _same_value(k, v, run[k])) for k, v in roi.entities)


def _is_subset(small: list[tuple[str, str]], large: list[tuple[str, str]]) -> bool:
    have = dict(large)
    return all(k in have and _same_value(k, v, have[k]) for k, v in small)


def _lookup_table(image: Path, dataset: Path, tables: list[Path]) -> tuple[tuple[int, str], ...]:
    """The dseg TSV that applies to `image` by BIDS inheritance: in its folder or a parent, with a
    subset of its entities; the nearest folder, then the most entities, wins."""
    entities = parse_entities(image)
    candidates = [t for t in tables if t.parent in (image.parent, *image.parent.parents)
                  and dataset in (t.parent, *t.parent.parents) and _is_subset(parse_entities(t), entities)]
    if not candidates:
        raise InputDataError(f"{image}: segmentation without a lookup table (a *_dseg.tsv with columns "
                             "'index' and 'name' beside it or in a parent folder)")
    best = max(candidates, key=lambda t: (len(t.parent.parts), len(parse_entities(t))))
    try:
        with open(best, newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        regions = tuple((int(row["index"]), row["name"].strip()) for row in rows)
    except (OSError, KeyError, ValueError, TypeError, AttributeError) as exc:
        raise InputDataError(f"{best}: not a segmentation lookup table with integer 'index' and a "
                             f"'name' column ({exc.__class__.__name__}: {exc})") from None
    return tuple((i, name) for i, name in regions if i != 0)  # 0 is the background


def find_roi_files(datasets: list[Path]) -> list[RoiFile]:
    """Every label mask and segmentation in the given derivative datasets."""
    from bids import BIDSLayout

    found = []
    for dataset in datasets:
        dataset = Path(dataset).resolve()
        if not dataset.is_dir():
            raise MissingInputError(f"{dataset}: the ROI dataset is not a directory")
        layout = BIDSLayout(dataset, validate=False, derivatives=False, config=["bids", "derivatives"])
        images = layout.get(return_type="filename", suffix=["mask", "dseg"], extension=[".nii", ".nii.gz"])
        tables = [Path(p) for p in layout.get(return_type="filename", suffix="dseg", extension=".tsv")]
        for path in map(Path, sorted(images)):
            entities = tuple(parse_entities(path))
            if path.name.split(".")[0].endswith("_dseg"):
                found.append(RoiFile(path, dataset, entities, _lookup_table(path, dataset, tables), True))
            elif "label" in dict(entities):
                found.append(RoiFile(path, dataset, entities, ((1, dict(entities)["label"]),), False))
        if not any(r.dataset == dataset for r in found):
            raise MissingInputError(f"{dataset}: no *_label-<name>_mask or *_dseg images in the ROI dataset")
    return found


def load_rois(roi_files: list[RoiFile], reference: nib.Nifti1Image, target: Path) -> list[Roi]:
    """The regions of `roi_files` as boolean arrays on the grid of `reference` (the image `target`);
    a file on another grid is an error."""
    shape = reference.shape[:3]
    rois = []
    for roi_file in roi_files:
        image, data = read_volume(roi_file.path, "the ROI image")
        if data.shape != shape or not np.allclose(image.affine, reference.affine, atol=AFFINE_TOLERANCE_MM):
            raise InputDataError(f"{roi_file.path}: ROI on another grid than {target.name} (shape "
                                 f"{data.shape} vs {shape}, or a different affine); resample it to the "
                                 "MEGRE grid")
        if roi_file.is_segmentation:
            labels = np.rint(np.nan_to_num(data)).astype(np.int64)
            rois += [Roi(name, roi_file.source, labels == index) for index, name in roi_file.regions]
        else:
            rois.append(Roi(roi_file.regions[0][1], roi_file.source, np.nan_to_num(data) != 0))
    return rois
