"""Synthetic phantoms with known truth, for benchmarking the water/fat choice, and a writer that
turns one into a raw BIDS dataset for any protocol and SNR.

A phantom is a set of 3-D truth maps (PDFF fraction 0-1, R2* in 1/s, S0 in image units, integer
tissue labels with 0 = air) and a voxel size in mm:

- `abdomen(shape)`: the demo's phantom (muscle in a subcutaneous fat ring, liver, steatosis,
  marrow; `demo.make_phantom` and `demo.truth_maps`), at any size.
- `anatomy(shape, seed)`: realistic structure without data or networks: skin, a subcutaneous fat
  layer 1-3 voxels thick, the muscle wall with ribs, thin fat planes, liver with smoothly varying
  PDFF and a focal steatosis, iron-loaded (dark) spleen, kidneys in perirenal fat rims, bowel with
  mesenteric fat and gas, stomach fluid, aorta, IVC, small vessels, a spine (marrow in dark
  cortical bone, spinal canal) and paraspinal muscles. Partial volume comes from 4 x 4
  supersampling in-plane, so every border's PDFF ramps over one voxel.
- `liver_derived(cache_dir)`: truth from the conventional fit's maps of the real sub-liver slice
  (/work/shared/data/real-bids, absent from a user's clone), cleaned of isolated water/fat swaps.
- `liver_iron(r2star_liver_s, shape, seed)`: graded liver iron overload: the abdomen's layout
  with a liver of the given R2* (1/s; `IRON_GRADES_S` per protocol of `IRON_PROTOCOLS`: liver
  R2* 50-1000 1/s at 1.5 T, 50-2000 1/s at 3 T), liver PDFF 0.05 with a steatotic region at 0.20,
  and a spleen at half the liver's R2*. Not in `PHANTOMS`: it needs a grade.

SNR is S0 of muscle / sigma, as in the demo: every phantom's `reference_s0` (muscle, or the
median water-dominant tissue of the liver slice) is 100, so sigma = 100 / SNR.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage as ndi

from ..bids_io.derivatives import DerivativesDataset
from ..physics.fat_spectrum import PRESETS
from ..physics.parameters import PDFF_BOUNDARY, RELIABLE_LLR_NATS
from ..physics.signal_model import Acquisition
from ..physics.simulation import simulate_magnitude
from .demo import AFFINE as DEMO_AFFINE
from .demo import TISSUES, Tissue, make_phantom, truth_maps, write_echoes

# Beside the repository, on the team's machines only (a user's clone has none).
REAL_BIDS = Path(__file__).resolve().parents[3] / "shared" / "data" / "real-bids"
PHANTOMS = ("abdomen", "anatomy", "liver-derived")
REFERENCE_S0 = TISSUES["muscle"].s0  # SNR = REFERENCE_S0 / sigma
SUPERSAMPLING = 4  # sub-voxels per voxel edge in-plane, for partial volume


@dataclass(frozen=True)
class Protocol:
    echo_times_s: tuple[float, ...]
    field_strength_t: float
    snr: float


PROTOCOLS = {
    # The paper's in vivo protocol: 3 T, six echoes, TE1 = dTE = 1.15 ms.
    "paper": Protocol(tuple(1.15e-3 * (i + 1) for i in range(6)), 3.0, 60.0),
    # A common 1.5 T protocol whose echoes sample the fat phase poorly: far more ambiguous voxels.
    "hard": Protocol(tuple(1.2e-3 + 2.0e-3 * i for i in range(6)), 1.5, 40.0),
}


@dataclass(frozen=True, eq=False)
class Phantom:
    """Truth maps of shape (X, Y, Z); 0 everywhere in air (labels 0, S0 0)."""

    name: str
    pdff: np.ndarray  # fraction 0-1
    r2star_s: np.ndarray  # 1/s
    s0: np.ndarray  # image units
    labels: np.ndarray  # int16, 0 = air
    voxel_size_mm: tuple[float, float, float]
    tissues: dict[int, str]  # label -> name
    reference_s0: float = REFERENCE_S0  # the S0 that SNR refers to
    notes: dict[str, float] = field(default_factory=dict)  # how it was made (e.g. voxels cleaned)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.labels.shape

    @property
    def affine(self) -> np.ndarray:
        return np.diag([*self.voxel_size_mm, 1.0])

    @property
    def tissue(self) -> np.ndarray:
        return self.labels > 0

    def maps(self) -> dict[str, np.ndarray]:
        """The truth under the app's map suffixes (PDFFmap, R2starmap, S0map) and labels."""
        return {"PDFFmap": self.pdff, "R2starmap": self.r2star_s, "S0map": self.s0, "labels": self.labels}


# ---------------------------------------------------------------------------------------------
# Phantoms.

def abdomen(shape: tuple[int, int, int] = (96, 96, 8), seed: int = 0) -> Phantom:
    """The demo's phantom (its tissues and spread) at `shape`, 1.8 x 1.8 x 3 mm voxels."""
    labels = make_phantom(tuple(shape))
    truth = truth_maps(labels, np.random.default_rng(seed))
    return Phantom("abdomen", truth["PDFFmap"], truth["R2starmap"], truth["S0map"], labels,
                   tuple(float(v) for v in np.abs(np.diag(DEMO_AFFINE))[:3]),
                   {t.label: name for name, t in TISSUES.items()})


# Labels 1-5 are the demo's tissues (same values); the rest are the anatomy phantom's own.
ANATOMY_TISSUES: dict[str, Tissue] = dict(TISSUES) | {
    "visceral-fat": Tissue(6, 0.90, 45.0, 135.0),
    "bowel": Tissue(7, 0.02, 30.0, 85.0),
    "spleen": Tissue(8, 0.02, 160.0, 70.0),  # iron-loaded: dark
    "kidney": Tissue(9, 0.01, 30.0, 95.0),
    "perirenal-fat": Tissue(10, 0.92, 45.0, 140.0),
    "blood": Tissue(11, 0.0, 25.0, 90.0),
    "fluid": Tissue(12, 0.0, 8.0, 120.0),  # stomach content, CSF
    "cortical-bone": Tissue(13, 0.10, 450.0, 15.0),  # almost no signal
    "skin": Tissue(14, 0.05, 45.0, 75.0),
}
_LABEL = {name: t.label for name, t in ANATOMY_TISSUES.items()}
# Standard deviation of each tissue's smooth PDFF variation (fraction); the liver has its own.
_PDFF_SPREAD = {"muscle": 0.01, "marrow": 0.03, "subcutaneous-fat": 0.015, "visceral-fat": 0.02,
                "perirenal-fat": 0.015, "bowel": 0.01}


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: Sequence[float]) -> np.ndarray:
    """A Gaussian random field of unit standard deviation, correlated over `sigma_vox` voxels."""
    field = ndi.gaussian_filter(rng.standard_normal(shape), sigma_vox, mode="wrap")
    return field / field.std()


def anatomy(shape: tuple[int, int, int] = (112, 96, 8), seed: int = 0) -> Phantom:
    """An axial abdomen with realistic structure (see the module docstring); 3.2 x 3.2 x 5 mm
    voxels. Sizes scale with `shape` except the thin layers (skin 1 voxel, subcutaneous fat 1-3
    voxels, fat planes ~1 voxel, small vessels 1-2 voxels across), which are set in voxels."""
    nx, ny, nz = (int(n) for n in shape)
    rng = np.random.default_rng(seed)
    f = SUPERSAMPLING
    phases = rng.uniform(0, 2 * np.pi, 8)
    # Fields on the voxel grid: the tissues' smooth variations, the mesentery's fat/bowel pattern
    # and the bowel gas; correlated across slices so that slices differ slowly.
    spread = [_smooth_field(rng, (nx, ny, nz), (5, 5, 1.5)) for _ in range(3)]
    mesentery = _smooth_field(rng, (nx, ny, nz), (3, 3, 1))
    gas = _smooth_field(rng, (nx, ny, nz), (1.2, 1.2, 0.7))
    n_labels = max(_LABEL.values()) + 1
    coverage = np.zeros((nx, ny, nz, n_labels))
    cx, cy = (nx - 1) / 2, (ny - 1) / 2
    ax0, ay0 = 0.45 * nx, 0.38 * ny
    # Small structures placed once (same in every slice: vessels and ribs run through-plane).
    liver_vessels = rng.uniform(-1, 1, (6, 2)) * 0.35, rng.uniform(0.6, 1.2, 6)
    perforators = rng.uniform(0, 2 * np.pi, 5)
    ribs = np.linspace(-2.6, -0.5, 7) + rng.uniform(-0.1, 0.1, 7)
    xs = (np.arange(nx * f) + 0.5) / f - 0.5
    ys = (np.arange(ny * f) + 0.5) / f - 0.5
    X, Y = np.meshgrid(xs, ys, indexing="ij")
    for z in range(nz):
        t = z / (nz - 1) - 0.5 if nz > 1 else 0.0  # -0.5 (cranial) .. 0.5 (caudal)
        ax, ay = ax0 * (1 + 0.02 * t), ay0 * (1 + 0.02 * t)
        lab = np.zeros(X.shape, dtype=np.int16)
        dx, dy = X - cx, Y - cy
        theta = np.arctan2(dy, dx)
        r = np.hypot(dx, dy)
        outline = (1 + 0.03 * np.cos(3 * theta + phases[0]) + 0.02 * np.cos(5 * theta + phases[1]))
        depth = outline / np.hypot(np.cos(theta) / ax, np.sin(theta) / ay) - r  # voxels in from the skin
        fat_thickness = 2.0 + 0.7 * np.cos(2 * theta + phases[2]) + 0.2 * np.cos(7 * theta + phases[3])
        fat_end = 1.0 + fat_thickness
        wall_end = fat_end + 4.0 + 1.5 * np.cos(theta + phases[4])
        plane_end = wall_end + 1.1 + 0.5 * np.cos(3 * theta + phases[5])  # properitoneal fat plane
        up = lambda a: np.repeat(np.repeat(a[:, :, z], f, 0), f, 1)  # noqa: E731
        lab[depth >= 0] = _LABEL["skin"]
        lab[depth >= 1.0] = _LABEL["subcutaneous-fat"]
        lab[depth >= fat_end] = _LABEL["muscle"]
        lab[depth >= wall_end] = _LABEL["visceral-fat"]
        cavity = depth >= plane_end
        lab[cavity] = _LABEL["bowel"]
        lab[cavity & (up(mesentery) > 0.4)] = _LABEL["visceral-fat"]
        lab[cavity & (up(gas) > 2.3)] = 0

        def ellipse(u, v, a, b):  # in units of the body's semi-axes
            return ((X - cx - u * ax) / (a * ax)) ** 2 + ((Y - cy - v * ay) / (b * ay)) ** 2 < 1

        def disc(x0, y0, radius):  # in voxels
            return np.hypot(X - x0, Y - y0) < radius

        # Organs: each paints over what came before it.
        liver = ellipse(-0.38 + 0.03 * t, -0.08, 0.5 * (1 - 0.15 * t), 0.62 * (1 - 0.15 * t)) & cavity
        lab[liver] = _LABEL["liver"]
        lab[ellipse(0.30, -0.35, 0.22 * (1 - 0.3 * t), 0.2) & cavity] = _LABEL["fluid"]  # stomach
        lab[ellipse(0.58, 0.25, 0.18, 0.3 * (1 - 0.2 * t)) & cavity] = _LABEL["spleen"]
        for side in (-1, 1):
            ka, kb = 0.10 * (1 + 0.3 * t), 0.17 * (1 + 0.3 * t)
            rim_a, rim_b = ka + 1.5 / ax, kb + 1.5 / ay  # a perirenal fat rim 1.5 voxels thick
            lab[ellipse(side * 0.32, 0.42, rim_a, rim_b) & cavity] = _LABEL["perirenal-fat"]
            lab[ellipse(side * 0.32, 0.42, ka, kb) & cavity] = _LABEL["kidney"]
            lab[ellipse(side * 0.17, 0.74, 0.15, 0.17) & (depth >= fat_end)] = _LABEL["muscle"]  # paraspinal
        r_vb = 0.14 * ay
        vb_x, vb_y = cx, cy + 0.45 * ay
        lab[disc(vb_x, vb_y, r_vb + 1.5)] = _LABEL["cortical-bone"]
        lab[disc(vb_x, vb_y, r_vb)] = _LABEL["marrow"]
        r_canal = 0.055 * ay
        canal_y = vb_y + r_vb + 1.5 + r_canal + 0.8
        # Posterior elements (spinous process) behind the canal: bone dark enough to fill voxels.
        lab[((X - vb_x) / 1.6) ** 2 + ((Y - canal_y - r_canal - 2.5) / 3.0) ** 2 < 1] = _LABEL["cortical-bone"]
        lab[disc(vb_x, canal_y, r_canal + 1.5)] = _LABEL["cortical-bone"]
        lab[disc(vb_x, canal_y, r_canal)] = _LABEL["fluid"]  # CSF
        lab[disc(cx + 0.1 * ax, cy + 0.22 * ay, 0.06 * ay)] = _LABEL["blood"]  # aorta
        lab[ellipse(-0.12, 0.2, 0.07, 0.045) & cavity] = _LABEL["blood"]  # IVC
        (offsets, radii) = liver_vessels
        for (u, v), radius in zip(offsets, radii):
            lab[disc(cx + (-0.38 + u) * ax, cy + (-0.08 + v) * ay, radius) & liver] = _LABEL["blood"]
        # Ribs in the muscle wall: marrow in a thin cortex (both sub-voxel to 1.5 voxels).
        mid = (depth >= fat_end) & (depth < wall_end)
        for angle in ribs:
            rx = cx + np.cos(angle) * ax * 0.86
            ry = cy + np.sin(angle) * ay * 0.86
            lab[disc(rx, ry, 1.6) & mid] = _LABEL["cortical-bone"]
            lab[disc(rx, ry, 1.0) & mid] = _LABEL["marrow"]
        # Perforating vessels crossing the subcutaneous fat: water in a thin fat layer.
        for angle in perforators:
            rad = 1 / np.hypot(np.cos(angle) / ax, np.sin(angle) / ay)
            px, py = cx + np.cos(angle) * (rad - 2.0), cy + np.sin(angle) * (rad - 2.0)
            lab[disc(px, py, 0.7) & (depth >= 0.5)] = _LABEL["blood"]
        blocks = lab.reshape(nx, f, ny, f).transpose(0, 2, 1, 3).reshape(nx, ny, f * f)
        coverage[:, :, z] = (blocks[..., None] == np.arange(n_labels)).mean(axis=2)

    # Tissue parameters per voxel, then mixed by coverage (proton-density weighted: a voxel's PDFF
    # is its fat protons over all its protons).
    xv, yv = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    liver_pdff = 0.06 + 0.08 * np.clip((yv - (cy - 0.7 * ay0)) / (1.3 * ay0), 0, 1)
    lesion = 0.32 * np.exp(-(np.hypot(xv - (cx - 0.5 * ax0), yv - (cy - 0.2 * ay0)) / (0.13 * ax0)) ** 2 / 2)
    liver_pdff = (liver_pdff + lesion)[..., None] + 0.02 * spread[0]
    s0_sum = np.zeros((nx, ny, nz))
    fat_sum, r2_sum = np.zeros_like(s0_sum), np.zeros_like(s0_sum)
    for name, tissue in ANATOMY_TISSUES.items():
        c = coverage[..., tissue.label]
        if name == "liver":  # the steatosis is painted as liver: its PDFF comes from the lesion
            pdff = liver_pdff
        else:
            pdff = tissue.pdff + _PDFF_SPREAD.get(name, 0.005) * spread[0]
        s0 = tissue.s0 * (1 + 0.04 * spread[2]) * c
        s0_sum += s0
        fat_sum += s0 * np.clip(pdff, 0, 1)
        r2_sum += s0 * tissue.r2star_s * (1 + 0.08 * spread[1])
    # The steatosis label marks where the lesion is substantial; its PDFF ramps smoothly.
    labels = coverage.argmax(axis=-1).astype(np.int16)  # the tissue covering most of the voxel
    labels[(labels == _LABEL["liver"]) & (lesion[..., None] > 0.1)] = _LABEL["steatosis"]
    has_signal = s0_sum > 0
    safe = np.where(has_signal, s0_sum, 1.0)
    pdff, r2, s0 = fat_sum / safe, r2_sum / safe, s0_sum
    # A little voxel-scale biological spread, as in the demo.
    pdff = np.where(has_signal, np.clip(pdff + rng.normal(0, 0.005, pdff.shape), 0, 1), 0.0)
    r2 = np.where(has_signal, np.clip(r2 * (1 + rng.normal(0, 0.03, r2.shape)), 2, None), 0.0)
    s0 = np.where(has_signal, s0 * (1 + rng.normal(0, 0.02, s0.shape)), 0.0)
    return Phantom("anatomy", pdff, r2, s0, labels, (3.2, 3.2, 5.0),
                   {t.label: name for name, t in ANATOMY_TISSUES.items()})


# ---------------------------------------------------------------------------------------------
# The liver-derived phantom.

LIVER_TISSUES = {1: "water-dominant", 2: "fat-dominant"}


def fit_liver_maps(cache_dir: Path, real_bids: Path = REAL_BIDS, nprocs: int | None = None) -> dict[str, np.ndarray]:
    """The conventional fit's maps of sub-liver (--method fit --choice voxel --write-candidates),
    computed once into `cache_dir` (a derivatives dataset) and read from there afterwards.

    Returns arrays on the run's grid (232 x 256 x 1): PDFFmap, R2starmap, S0map, LLRmap, mask,
    and the candidates as water-PDFFmap, fat-PDFFmap, ... ."""
    cache_dir = Path(cache_dir)
    outputs = DerivativesDataset(cache_dir).subject_outputs("liver")
    wanted = [f"{s}-{kind}" for kind in ("water", "fat") for s in ("PDFFmap", "R2starmap", "S0map")]
    if not (outputs.finished and all(k in outputs.listed for k in wanted)):
        if not (real_bids / "sub-liver").is_dir():
            raise FileNotFoundError(f"{real_bids}/sub-liver: the real data are not here (not part of a clone)")
        command = [sys.executable, "-m", "raider_bids", str(real_bids), str(cache_dir), "participant",
                   "--participant-label", "liver", "--method", "fit", "--choice", "voxel", "--write-candidates"]
        if nprocs:
            command += ["--nprocs", str(nprocs)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        outputs = DerivativesDataset(cache_dir).subject_outputs("liver")
    load = lambda p: np.asarray(nib.load(p).dataobj, dtype=np.float64)  # noqa: E731
    maps = {s: load(outputs.files[s]) for s in ("PDFFmap", "R2starmap", "S0map", "LLRmap")}
    maps["mask"] = load(outputs.files["mask"]) > 0
    maps |= {f"{kind}-{s}": load(outputs.listed[f"{s}-{kind}"])
             for kind in ("water", "fat") for s in ("PDFFmap", "R2starmap", "S0map")}
    return maps


_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)  # 8-connectivity within a slice
_IN_PLANE[:, :, 1] = True


def small_islands(fat: np.ndarray, mask: np.ndarray, max_voxels: int) -> np.ndarray:
    """Voxels of `mask` in connected groups (in-plane 8-connectivity, slice by slice) of one side
    (`fat`, boolean) with at most `max_voxels` voxels: islands inside the other side."""
    islands = np.zeros(mask.shape, dtype=bool)
    for side in (fat & mask, ~fat & mask):
        groups, _ = ndi.label(side, _IN_PLANE)
        sizes = np.bincount(groups.ravel())
        small = sizes <= max_voxels
        small[0] = False
        islands |= small[groups]
    return islands


def clean_fit_maps(maps: dict[str, np.ndarray], max_island: int = 3,
                   reliable_llr: float = RELIABLE_LLR_NATS) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Undo the fit's salt-and-pepper water/fat swaps (3-D arrays, in-plane neighbourhoods):
    islands of one side (PDFF >= 0.58 or not) of at most `max_island` voxels inside the other,
    where no voxel's data decide reliably (|LLR| < `reliable_llr` nats), take the other
    candidate's PDFF, R2* and S0. Islands, not a majority vote: a layer one voxel thick is one
    long group and survives, however thin. Returns the cleaned PDFFmap, R2starmap, S0map and
    the boolean map of voxels switched."""
    mask = maps["mask"]
    fat = maps["PDFFmap"] >= PDFF_BOUNDARY
    islands = small_islands(fat, mask, max_island)
    groups, n = ndi.label(islands & fat, _IN_PLANE)
    water_groups, n_water = ndi.label(islands & ~fat, _IN_PLANE)
    groups = np.where(water_groups > 0, water_groups + n, groups)
    decided = np.zeros(n + n_water + 1, dtype=bool)
    np.logical_or.at(decided, groups.ravel(), (np.abs(maps["LLRmap"]) >= reliable_llr).ravel())
    decided[0] = True
    switched = ~decided[groups]
    out = {}
    for s in ("PDFFmap", "R2starmap", "S0map"):
        other = np.where(fat, maps[f"water-{s}"], maps[f"fat-{s}"])
        out[s] = np.where(switched, other, maps[s])
    return out, switched


def liver_derived(cache_dir: Path, real_bids: Path = REAL_BIDS, nprocs: int | None = None) -> Phantom:
    """Truth from the fit of the real sub-liver slice (232 x 256 x 1, placeholder 1.5 x 1.5 x 5 mm),
    isolated swaps switched (clean_fit_maps); S0 scaled so that the median water-dominant tissue
    has S0 100 (the SNR reference); labels 1 water-dominant, 2 fat-dominant, 0 outside the fit's
    mask. `notes` has the mask's voxel count and how many voxels the cleaning switched."""
    maps = fit_liver_maps(cache_dir, real_bids, nprocs)
    cleaned, switched = clean_fit_maps(maps)
    mask = maps["mask"]
    pdff = np.where(mask, np.clip(cleaned["PDFFmap"], 0, 1), 0.0)
    r2 = np.where(mask, np.clip(cleaned["R2starmap"], 2, 1000), 0.0)
    s0 = np.where(mask, np.maximum(cleaned["S0map"], 0), 0.0)
    labels = np.where(mask, np.where(pdff >= PDFF_BOUNDARY, 2, 1), 0).astype(np.int16)
    s0 *= REFERENCE_S0 / np.median(s0[labels == 1])
    return Phantom("liver-derived", pdff, r2, s0, labels, (1.5, 1.5, 5.0), dict(LIVER_TISSUES),
                   notes={"mask_voxels": int(mask.sum()), "switched_voxels": int(switched.sum())})


def build(name: str, shape: tuple[int, int, int] | None = None, seed: int = 0,
          cache_dir: Path | None = None, nprocs: int | None = None) -> Phantom:
    """A phantom by name (PHANTOMS); `shape` for abdomen and anatomy, `cache_dir` for liver-derived."""
    if name == "abdomen":
        return abdomen(shape or (96, 96, 8), seed)
    if name == "anatomy":
        return anatomy(shape or (112, 96, 8), seed)
    if name == "liver-derived":
        if cache_dir is None:
            raise ValueError("liver-derived needs a cache directory for the fit's maps")
        return liver_derived(cache_dir, nprocs=nprocs)
    raise ValueError(f"unknown phantom {name!r}; expected one of {', '.join(PHANTOMS)}")


# ---------------------------------------------------------------------------------------------
# Borders and datasets.

def border_voxels(pdff: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """Real fat/water borders: tissue voxels (labels > 0; every voxel when `labels` is None) with
    a tissue neighbour on the other side of PDFF 0.58. Neighbours: 6-connectivity in 3-D, 4 in-plane
    for a single slice (shape (X, Y) or (X, Y, 1)). Returns a boolean array of pdff's shape."""
    pdff = np.asarray(pdff)
    tissue = np.ones(pdff.shape, dtype=bool) if labels is None else np.asarray(labels) > 0
    fat = pdff >= PDFF_BOUNDARY
    axes = [a for a in range(pdff.ndim) if pdff.shape[a] > 1]
    border = np.zeros(pdff.shape, dtype=bool)
    for axis in axes:
        n = pdff.shape[axis]
        # Each pair of neighbours along `axis`: a border pair marks both its voxels.
        a = [slice(None)] * pdff.ndim
        b = [slice(None)] * pdff.ndim
        a[axis], b[axis] = slice(0, n - 1), slice(1, n)
        a, b = tuple(a), tuple(b)
        pair = tissue[a] & tissue[b] & (fat[a] != fat[b])
        border[a] |= pair
        border[b] |= pair
    return border


def write_phantom_dataset(root: Path, phantom: Phantom, echo_times_s: Sequence[float], field_strength_t: float,
                          snr: float, seed: int = 0, subject: str = "01") -> dict[str, np.ndarray]:
    """Write `phantom` as a raw BIDS dataset of magnitude MEGRE echoes (one NIfTI and sidecar per
    echo, part-mag) at `root`: echo times in s, field in T, complex Gaussian noise of std
    sigma = reference_s0 / snr in each channel (air too, as the demo). Returns the truth maps
    (PDFFmap, R2starmap, S0map, labels) and sigma."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    sigma = phantom.reference_s0 / snr
    acquisition = Acquisition(tuple(float(t) for t in echo_times_s), float(field_strength_t), PRESETS["hernando"])
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": f"raider-bids synthetic phantom {phantom.name}", "BIDSVersion": "1.10.0", "DatasetType": "raw",
         "Authors": ["raider-bids"]}, indent=2))
    (root / "README").write_text(f"Synthetic magnitude multi-echo gradient echo data of the '{phantom.name}' "
                                 f"phantom with known PDFF, R2* and S0; SNR {snr:g} (S0 of muscle / sigma).\n")
    (root / "participants.tsv").write_text(f"participant_id\nsub-{subject}\n")
    signals = simulate_magnitude(acquisition, phantom.s0.ravel(), phantom.pdff.ravel(), phantom.r2star_s.ravel(),
                                 sigma, rng).reshape(phantom.shape + (len(echo_times_s),))
    write_echoes(root, subject, signals, acquisition.echo_times_s, phantom.affine,
                 {"MagneticFieldStrength": float(field_strength_t),
                  "MRAcquisitionType": "3D" if phantom.shape[2] > 1 else "2D"})
    return dict(phantom.maps(), sigma=np.array(sigma))


def write_truth(directory: Path, phantom: Phantom, subject: str = "01") -> None:
    """The truth maps as NIfTI (sub-<subject>_desc-truth_<map>.nii.gz) and the labels' names (TSV)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for key, values in phantom.maps().items():
        dtype = np.int16 if key == "labels" else np.float32
        nib.save(nib.Nifti1Image(values.astype(dtype), phantom.affine),
                 directory / f"sub-{subject}_desc-truth_{'dseg' if key == 'labels' else key}.nii.gz")
    (directory / "sub-{}_desc-truth_dseg.tsv".format(subject)).write_text(
        "index\tname\n" + "".join(f"{k}\t{v}\n" for k, v in sorted(phantom.tissues.items())))


# ---------------------------------------------------------------------------------------------
# Liver iron overload (issue 16): R2* across the clinical range, per protocol.

IRON_PROTOCOLS = {
    # Short first echo and spacing, so that the signal of a heavily iron-loaded liver is sampled
    # before it decays into the noise floor; SNR 50 (muscle S0 / sigma) for both.
    "1.5T": Protocol(tuple(1.0e-3 * (i + 1) for i in range(6)), 1.5, 50.0),
    "3T": Protocol(tuple(0.8e-3 * (i + 1) for i in range(8)), 3.0, 50.0),
}
# Liver R2* grades (1/s) per protocol: normal (50) to severe overload (1000 at 1.5 T, 2000 at 3 T).
IRON_GRADES_S = {
    "1.5T": (50.0, 250.0, 500.0, 750.0, 1000.0),
    "3T": (50.0, 250.0, 500.0, 1000.0, 1500.0, 2000.0),
}
# Tissues of the iron phantom: (PDFF fraction, R2* 1/s, S0 image units). The liver's and the
# spleen's R2* are placeholders, set from the grade by liver_iron; names starting with "liver" are
# liver (IRON_LIVER_PREFIX).
IRON_TISSUES: dict[str, Tissue] = {
    "muscle": TISSUES["muscle"],
    "liver": Tissue(2, 0.05, 50.0, 100.0),
    "liver-steatosis": Tissue(3, 0.20, 50.0, 100.0),
    "marrow": TISSUES["marrow"],
    "subcutaneous-fat": TISSUES["subcutaneous-fat"],
    "spleen": Tissue(6, 0.01, 25.0, 90.0),
}
IRON_LIVER_PREFIX = "liver"
IRON_R2STAR_VARIATION = 0.01  # std of the liver's smooth R2* variation (fraction), clipped to +-3 %
_IRON_R2STAR_VARIATION_MAX = 0.03


def liver_labels(phantom: Phantom) -> list[int]:
    """The labels of `phantom` that are liver (their names start with "liver")."""
    return sorted(k for k, name in phantom.tissues.items() if name.startswith(IRON_LIVER_PREFIX))


def liver_iron(r2star_liver_s: float, shape: tuple[int, int, int] = (96, 96, 8), seed: int = 0,
               r2star_variation: float = IRON_R2STAR_VARIATION) -> Phantom:
    """An abdomen with an iron-loaded liver, 1.8 x 1.8 x 3 mm voxels (the demo's).

    The demo's layout (`make_phantom`: muscle in a subcutaneous fat ring, marrow-filled bone) with
    a liver (label 2, "liver") of R2* `r2star_liver_s` (1/s), times a smooth spatial variation of
    standard deviation `r2star_variation` (fraction; clipped to +-3 %; 0 for uniform), and PDFF
    0.05; a steatotic region inside it (label 3, "liver-steatosis") of PDFF 0.20 and the same R2*;
    and a spleen (label 6) at half the liver's R2* (iron loads both). Liver S0 100 image units,
    as muscle (the SNR reference): a heavily loaded liver is dark because of its R2*, not its
    proton density. Other tissues as the demo's (PDFF fraction, R2* 1/s, S0 with its spread);
    air (label 0) has S0 = 0, PDFF 0, R2* 0, so that a written dataset holds noise alone there.
    """
    nx, ny, nz = (int(n) for n in shape)
    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.linspace(-1, 1, nx), np.linspace(-1, 1, ny), indexing="ij")
    labels = make_phantom((nx, ny, nz))  # 1 muscle, 2 liver, 3 steatosis, 4 marrow, 5 fat; 0 air
    liver_disc = labels == TISSUES["liver"].label
    labels[labels == TISSUES["steatosis"].label] = IRON_TISSUES["liver"].label
    liver_disc |= labels == IRON_TISSUES["liver"].label
    steatosis = np.hypot(x + 0.35, y - 0.1) < 0.14
    labels[liver_disc & steatosis[..., None]] = IRON_TISSUES["liver-steatosis"].label
    spleen = np.hypot(x - 0.45, y + 0.33) < 0.11
    labels[spleen[..., None] & (labels == TISSUES["muscle"].label)] = IRON_TISSUES["spleen"].label
    variation = np.clip(r2star_variation * _smooth_field(rng, (nx, ny, nz), (8, 8, 2)),
                        -_IRON_R2STAR_VARIATION_MAX, _IRON_R2STAR_VARIATION_MAX)
    pdff, r2, s0 = (np.zeros((nx, ny, nz)) for _ in range(3))
    for name, tissue in IRON_TISSUES.items():
        sel = labels == tissue.label
        n = int(sel.sum())
        if name.startswith(IRON_LIVER_PREFIX):
            pdff[sel] = np.clip(tissue.pdff + rng.normal(0, 0.005, n), 0, 1)
            r2[sel] = float(r2star_liver_s) * (1 + variation[sel])
            s0[sel] = tissue.s0 * (1 + rng.normal(0, 0.02, n))
            continue
        r2star = float(r2star_liver_s) / 2 if name == "spleen" else tissue.r2star_s
        pdff[sel] = np.clip(tissue.pdff + rng.normal(0, 0.02, n), 0, 1)
        r2[sel] = np.clip(r2star * (1 + rng.normal(0, 0.1, n)), 5, None)
        s0[sel] = tissue.s0 * (1 + rng.normal(0, 0.05, n))
    return Phantom(f"liver-iron-{float(r2star_liver_s):g}", pdff, r2, s0, labels,
                   tuple(float(v) for v in np.abs(np.diag(DEMO_AFFINE))[:3]),
                   {t.label: name for name, t in IRON_TISSUES.items()},
                   notes={"r2star_liver_s": float(r2star_liver_s)})
