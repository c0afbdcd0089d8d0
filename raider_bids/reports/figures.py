"""The reports' figures, drawn with matplotlib's object API (no pyplot, no global backend)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import matplotlib
import nibabel as nib
import numpy as np
from matplotlib import patheffects
from matplotlib.figure import Figure

from ..bids_io.derivatives import MAPS
from ..physics.parameters import AMBIGUOUS_LLR_NATS, PDFF_BOUNDARY, R2STAR_MAX_S, UNCERTAIN_PDFF_SD
from ..provenance import NetworkRecord
from .roistats import STATISTIC_MAPS

# Display of each mosaic: title, colour map, colour bar label (the maps' units, as in their
# sidecars); colour_limits sets the range.
PANELS = {
    "echo1": ("First echo (magnitude)", "gray", "image units"),
    "PDFFmap": ("PDFF (fraction)", "magma", MAPS["PDFFmap"][1]),
    "R2starmap": ("R2* (1/s)", "inferno", MAPS["R2starmap"][1]),
    "S0map": ("S0 (image units)", "gray", MAPS["S0map"][1]),
    "confidence": ("Water/fat confidence: signed LLR (nats; + fat chosen, - water chosen)", "RdBu_r",
                   MAPS["LLRmap"][1]),
    "SideProbmap": ("Probability that the chosen side (water or fat) is right", "viridis", MAPS["SideProbmap"][1]),
    "PDFFsdmap": ("PDFF standard deviation (Cramer-Rao bound)", "plasma", MAPS["PDFFsdmap"][1]),
    "R2starsdmap": ("R2* standard deviation (Cramer-Rao bound, 1/s)", "plasma", MAPS["R2starsdmap"][1]),
}
# The uncertainty panels, in the order the participant page shows them (absent maps are skipped).
UNCERTAINTY_PANELS = ("SideProbmap", "PDFFsdmap", "R2starsdmap")

# ---------------------------------------------------------------- colour ranges
# Every page draws a map on the same range, so that two pages compare by eye: bounded quantities
# on fixed ranges, the others from one stated rule whose steps most runs share (identical data
# always give identical ranges). RANGE_RULES states each rule; the pages print it under the figure.
PDFF_RANGE = (0.0, 1.0)
SIDE_PROBABILITY_RANGE = (0.5, 1.0)  # 0.5: a coin toss; the few voxels below it (spatial choice) show as 0.5
PDFF_SD_RANGE = (0.0, 2 * UNCERTAIN_PDFF_SD)  # the participant level's warning level mid-scale
# R2* ends at the first of these (1/s) at or above the DISPLAY_PERCENTILE-th percentile in the mask:
# ordinary tissue shares 0-250; an iron-loaded liver (500-2000 1/s) is not clipped; the last is the
# fit's bound.
R2STAR_DISPLAY_MAXIMA_S = (250.0, 500.0, 1000.0, 2000.0, R2STAR_MAX_S)
# Of the values in the mask; a few outliers (1 %) do not wash a map out.
DISPLAY_PERCENTILE = 99.0
# Maps in arbitrary or unbounded units (S0, the first echo, the R2* SD, |LLR|, R2* differences)
# end at that percentile rounded up to one of these times a power of ten.
NICE_MANTISSAS = (1, 2, 5)

_NICE = f"rounded up to {', '.join(map(str, NICE_MANTISSAS[:-1]))} or {NICE_MANTISSAS[-1]} x 10^k"
_PERCENTILE = f"{DISPLAY_PERCENTILE:g}th percentile in the mask"
RANGE_RULES = {
    "echo1": f"0 to the first echo's {_PERCENTILE}, {_NICE} (image units vary by scanner; runs of one "
             "scanner usually share it)",
    "PDFFmap": f"fixed {PDFF_RANGE[0]:g} to {PDFF_RANGE[1]:g}",
    "R2starmap": f"0 to {R2STAR_DISPLAY_MAXIMA_S[0]:g} 1/s, or to the first of "
                 f"{', '.join(f'{m:g}' for m in R2STAR_DISPLAY_MAXIMA_S[1:])} 1/s at or above the {_PERCENTILE} "
                 "where that is higher (iron-loaded tissue)",
    "S0map": f"0 to the {_PERCENTILE}, {_NICE} (S0's units vary by scanner; runs of one scanner usually "
             "share it)",
    "confidence": f"symmetric about 0, to the {_PERCENTILE} of |LLR|, {_NICE}, at least {AMBIGUOUS_LLR_NATS:g} "
                  "nat (the ambiguity threshold)",
    "SideProbmap": f"fixed {SIDE_PROBABILITY_RANGE[0]:g} (a coin toss, or below it where the spatial choice "
                   f"goes against its marginal) to {SIDE_PROBABILITY_RANGE[1]:g}",
    "PDFFsdmap": f"fixed {PDFF_SD_RANGE[0]:g} to {PDFF_SD_RANGE[1]:g} (the participant level warns above "
                 f"{UNCERTAIN_PDFF_SD:g})",
    "R2starsdmap": f"0 to the {_PERCENTILE}, {_NICE}",
    "PDFFdifference": f"fixed -{PDFF_RANGE[1]:g} to {PDFF_RANGE[1]:g}",
    "R2stardifference": f"symmetric about 0, to the {_PERCENTILE} of |difference|, {_NICE}, at least 1 1/s",
}


def nice_ceiling(value: float) -> float:
    """The least of NICE_MANTISSAS x 10^k (integer k) at or above `value`; 1 if not positive or finite."""
    if not np.isfinite(value) or value <= 0:
        return 1.0
    exponent = int(np.floor(np.log10(value)))
    for k in (exponent - 1, exponent, exponent + 1):  # log10's rounding can be one off either way
        for mantissa in NICE_MANTISSAS:
            step = float(f"{mantissa}e{k}")  # exact decimal: 5e-2, not 5 * 0.01
            if step >= value:
                return step
    return float(f"1e{exponent + 2}")


def display_percentile(values: np.ndarray) -> float:
    """The DISPLAY_PERCENTILE-th percentile of the finite values (0 if none)."""
    finite = values[np.isfinite(values)]
    return float(np.percentile(finite, DISPLAY_PERCENTILE)) if finite.size else 0.0


def colour_limits(key: str, values: np.ndarray) -> tuple[float, float]:
    """The colour range of a map from its values in the mask, by RANGE_RULES[key] (PANELS keys,
    and PDFFdifference, R2stardifference for one method's map minus another's)."""
    if key == "PDFFmap":
        return PDFF_RANGE
    if key == "SideProbmap":
        return SIDE_PROBABILITY_RANGE
    if key == "PDFFsdmap":
        return PDFF_SD_RANGE
    if key == "PDFFdifference":
        return -PDFF_RANGE[1], PDFF_RANGE[1]
    if key == "R2starmap":
        return 0.0, r2star_display_max(display_percentile(values))
    if key in ("confidence", "R2stardifference"):
        least = AMBIGUOUS_LLR_NATS if key == "confidence" else 1.0
        bound = max(least, nice_ceiling(display_percentile(np.abs(values))))
        return -bound, bound
    if key in ("echo1", "S0map", "R2starsdmap"):
        return 0.0, nice_ceiling(display_percentile(values))
    raise KeyError(f"no colour range rule for {key!r}")


def r2star_display_max(top: float) -> float:
    """The first of R2STAR_DISPLAY_MAXIMA_S (1/s) at or above `top` (the largest if none is)."""
    return next((m for m in R2STAR_DISPLAY_MAXIMA_S if m >= top), R2STAR_DISPLAY_MAXIMA_S[-1])


# ---------------------------------------------------------------- orientation
# Slices are drawn as radiologists read them, from each image's affine: the volume is reoriented
# to the closest canonical axes (RAS+; oblique ones to the nearest, without resampling) and the
# plane across the axis with the fewest voxels (the acquired plane of a 2D acquisition; axial if
# tied, then coronal) is shown in its standard view: axial seen from the feet (anterior up, the
# patient's right on the image's left), coronal seen from the front (superior up, right on the
# left), sagittal seen from the patient's left (superior up, anterior on the left).
# plane -> (the RAS axis across it, the letters at the top, bottom, left and right edges).
VIEWS = {"axial": (2, ("A", "P", "R", "L")),
         "coronal": (1, ("S", "I", "R", "L")),
         "sagittal": (0, ("S", "I", "A", "P"))}
_RAS = nib.orientations.axcodes2ornt("RAS")


@dataclass(frozen=True)
class View:
    """How one run's volumes are drawn, from its images' grid (the affine and shape they share).
    `stack` turns a volume on that grid into the slices as displayed."""

    plane: str  # a key of VIEWS
    ornt: np.ndarray  # nibabel orientation: the file's voxel axes -> RAS
    pixel_mm: tuple[float, float]  # a displayed pixel's height and width
    slice_numbers: tuple[int, ...]  # displayed slice -> the file's voxel index along that axis
    obliquity_deg: float  # the largest angle between a voxel axis and its nearest RAS axis
    placeholder: bool  # the affine carries no geometry (see View.of)

    @classmethod
    def of(cls, affine: np.ndarray, shape: tuple[int, ...], codes: tuple[int, int] = (1, 1)) -> View:
        """The view of volumes of `shape` (3-D, or more: the rest are not drawn) with `affine`.
        `codes` (the NIfTI sform and qform codes) both 0, or a diagonal affine whose origin is the
        first voxel, mark a placeholder: what converters write that lost the scanner's geometry."""
        affine = np.asarray(affine, dtype=np.float64)
        ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine), _RAS)
        sizes = np.linalg.norm(affine[:3, :3], axis=0)
        ras_shape, ras_mm = [0, 0, 0], [1.0, 1.0, 1.0]
        for axis, (target, _) in enumerate(ornt.astype(int)):
            ras_shape[target], ras_mm[target] = int(shape[axis]), float(sizes[axis]) or 1.0
        plane = min(VIEWS, key=lambda p: (ras_shape[VIEWS[p][0]], list(VIEWS).index(p)))
        across = VIEWS[plane][0]
        source = int(np.flatnonzero(ornt[:, 0] == across)[0])
        n = ras_shape[across]
        numbers = tuple(range(n)) if ornt[source, 1] > 0 else tuple(range(n - 1, -1, -1))
        rows, cols = {2: (1, 0), 1: (2, 0), 0: (2, 1)}[across]
        linear = affine[:3, :3]
        placeholder = (codes[0] == 0 and codes[1] == 0) or (
            np.allclose(affine[:3, 3], 0) and np.allclose(linear, np.diag(np.diag(linear))))
        return cls(plane, ornt, (ras_mm[rows], ras_mm[cols]), numbers,
                   float(np.degrees(nib.affines.obliquity(affine)).max()), bool(placeholder))

    @classmethod
    def of_image(cls, img) -> View:
        header = getattr(img, "header", None)
        codes = ((int(header["sform_code"]), int(header["qform_code"]))
                 if header is not None and "sform_code" in header else (1, 1))
        return cls.of(img.affine, img.shape, codes)

    @property
    def letters(self) -> dict[str, str]:
        """The patient's direction at each edge of a displayed slice."""
        return dict(zip(("top", "bottom", "left", "right"), VIEWS[self.plane][1]))

    def stack(self, volume: np.ndarray) -> np.ndarray:
        """A volume on the view's grid (3-D; a 4-D one's first volume) as displayed slices:
        [slice, row from the top, column from the left]."""
        volume = np.asarray(volume)
        volume = volume.reshape(volume.shape[:3] + (-1,))[..., 0] if volume.ndim > 3 else volume
        ras = nib.orientations.apply_orientation(volume, self.ornt)
        if self.plane == "axial":  # rows: anterior to posterior; columns: right to left
            return ras[::-1, ::-1, :].transpose(2, 1, 0)
        if self.plane == "coronal":  # rows: superior to inferior; columns: right to left
            return ras[::-1, :, ::-1].transpose(1, 2, 0)
        return ras[:, ::-1, ::-1].transpose(0, 2, 1)  # sagittal: superior to inferior; anterior to posterior

    def describe(self) -> str:
        """The rule, for a caption (plain text)."""
        letters = self.letters
        text = {"axial": "Axial slices seen from the feet (radiological view)",
                "coronal": "Coronal slices seen from the front (radiological view)",
                "sagittal": "Sagittal slices seen from the patient's left"}[self.plane]
        text += (f": {letters['top']} (top), {letters['bottom']} (bottom), {letters['left']} (image left), "
                 f"{letters['right']} (image right), from the images' affine; slices are numbered by the "
                 "file's voxel index.")
        if self.obliquity_deg > 0.5:
            text += (f" The acquisition is oblique (up to {self.obliquity_deg:.0f} degrees): drawn along the "
                     "nearest axes, not resampled.")
        if self.placeholder:
            text += (" The affine looks like a placeholder (no orientation recorded, or a plain scaling with "
                     "its origin at the first voxel, as written by conversions that lost the scanner's "
                     "geometry): the letters follow it and may not be the patient's.")
        return text


# ---------------------------------------------------------------- mosaics
# A slice's width (inches; figures are written at 100 dpi, on a 1200 px page) by how many are shown:
# one slice 600 px wide, two 500, three or more 340 (three to a row: the row and its colour bar fit
# the page). No slice is taller than _TILE_MAX_IN.
_TILE_WIDTH_IN = {1: 6.0, 2: 5.0}
_TILE_WIDTH_MANY_IN = 3.4
_TILE_MAX_IN = 6.0
_GAP_IN, _LABEL_IN = 0.08, 0.2


def grid_shape(n: int) -> tuple[int, int]:
    """Rows and columns of `n` slices: at most 3 a row, rows as full as can be (4: 2 x 2)."""
    rows = -(-n // 3)
    cols = -(-n // rows)
    return rows, cols


def mosaic(stack: np.ndarray, slices: list[int], title: str, cmap: str, limits: tuple[float, float],
           mask: np.ndarray | None = None, units: str | None = None, view: View | None = None) -> Figure:
    """The displayed slices (View.stack) `slices` in a grid in one Axes (a figure per slice
    costs layout time), outside the mask black, with the orientation letters on each slice's
    edges, a colour bar labelled with `units` (arrows where values pass the range) and the title
    (may hold a second line). Sizes follow the data (_TILE_WIDTH_IN: one slice 600 px wide, up to
    three to a row); pixels keep their aspect (view.pixel_mm)."""
    n_rows, n_cols = grid_shape(len(slices))
    rows, cols = stack.shape[1:]
    height_mm, width_mm = (rows * view.pixel_mm[0], cols * view.pixel_mm[1]) if view else (rows, cols)
    tile_w = min(_TILE_WIDTH_IN.get(len(slices), _TILE_WIDTH_MANY_IN), _TILE_MAX_IN * width_mm / height_mm)
    scale = width_mm / tile_w  # mm per inch
    gap, label = _GAP_IN * scale, _LABEL_IN * scale
    total_w = n_cols * width_mm + (n_cols - 1) * gap
    total_h = n_rows * (label + height_mm) + (n_rows - 1) * gap
    image_w, image_h = total_w / scale, total_h / scale
    title_h = 0.12 + 0.2 * (title.count("\n") + 1)
    fig_w, fig_h = max(6.0, image_w + (1.45 if units else 1.2)), image_h + title_h + 0.1
    fig = Figure(figsize=(fig_w, fig_h))
    ax = fig.add_axes((0.1 / fig_w, 0.1 / fig_h, image_w / fig_w, image_h / fig_h))
    colours = matplotlib.colormaps[cmap].with_extremes(bad="black")
    pad = 0.05 * scale
    outline = [patheffects.withStroke(linewidth=2, foreground="black")]
    shown = []
    for i, z in enumerate(slices):
        row, col = divmod(i, n_cols)
        x0, y0 = col * (width_mm + gap), row * (label + height_mm + gap) + label
        plane = stack[z] if mask is None else np.where(mask[z], stack[z], np.nan)
        shown.append(ax.imshow(plane, cmap=colours, vmin=limits[0], vmax=limits[1], interpolation="nearest",
                               extent=(x0, x0 + width_mm, y0 + height_mm, y0), aspect="auto"))
        number = view.slice_numbers[z] if view else z
        ax.text(x0 + width_mm / 2, y0 - 0.15 * label, f"slice {number}", ha="center", va="bottom", fontsize=8)
        if view:
            letters = view.letters
            for edge, x, y, ha, va in (("top", x0 + width_mm / 2, y0 + pad, "center", "top"),
                                       ("bottom", x0 + width_mm / 2, y0 + height_mm - pad, "center", "bottom"),
                                       ("left", x0 + pad, y0 + height_mm / 2, "left", "center"),
                                       ("right", x0 + width_mm - pad, y0 + height_mm / 2, "right", "center")):
                ax.text(x, y, letters[edge], ha=ha, va=va, fontsize=9, fontweight="bold", color="white",
                        path_effects=outline, gid=f"orientation-{edge}")
    ax.set_xlim(0, total_w)
    ax.set_ylim(total_h, 0)
    ax.set_axis_off()
    values = np.concatenate([s.get_array().compressed().ravel() for s in shown]) if shown else np.zeros(0)
    values = values[np.isfinite(values)]
    over, under = bool((values > limits[1]).any()), bool((values < limits[0]).any())
    extend = {(True, True): "both", (True, False): "max", (False, True): "min"}.get((over, under), "neither")
    bar = fig.colorbar(shown[0], extend=extend, cax=fig.add_axes(((0.25 + image_w) / fig_w, 0.1 / fig_h,
                                                                   0.15 / fig_w, image_h / fig_h)))
    if units:
        bar.set_label(units, fontsize=8)
    fig.text(0.1 / fig_w, 1 - 0.08 / fig_h, title, ha="left", va="top", fontsize=10, linespacing=1.4)
    return fig


def training_figure(networks: list[NetworkRecord]) -> Figure:
    """Training and validation loss per epoch of each network, its best epoch dotted."""
    fig = Figure(figsize=(7, 3.2), layout="constrained")
    ax = fig.subplots()
    for net, colour in zip(networks, ("tab:blue", "tab:red", "tab:green", "tab:purple")):
        epochs = np.arange(1, len(net.validation_loss) + 1)
        ax.plot(epochs, net.train_loss, color=colour, alpha=0.5, label=f"{net.network} training")
        ax.plot(epochs, net.validation_loss, color=colour, label=f"{net.network} validation")
        if net.best_epoch:
            ax.axvline(net.best_epoch, color=colour, linestyle=":", linewidth=1)
    # The first epochs' losses are far above the rest: scale the axis to the converged part.
    losses = [v for net in networks for curve in (net.train_loss, net.validation_loss)
              for v in curve[max(2, len(curve) // 20):] if np.isfinite(v)]
    if losses:
        low, high = min(losses), max(losses)
        ax.set_ylim(low - 0.05 * (high - low + 1e-9), high + 0.05 * (high - low + 1e-9))
    ax.set_xlabel("epoch")
    ax.set_ylabel(networks[0].loss if networks else "loss")
    ax.legend(fontsize=8)
    ax.set_title("Training curves (dotted: best epoch, whose weights are kept)", fontsize=10)
    return fig


def histogram_figure(maps: dict[str, np.ndarray], mask: np.ndarray, title: str = "") -> Figure:
    """Histograms of PDFF, R2* and S0 in the mask, each over its maps' colour range (colour_limits)."""
    fig = Figure(figsize=(10, 3.0))
    # fixed: a layout engine costs time
    fig.subplots_adjust(left=0.085, right=0.99, bottom=0.1, top=0.8 if title else 0.9, wspace=0.25)
    axes = fig.subplots(1, 3)
    for ax, suffix in zip(axes, ("PDFFmap", "R2starmap", "S0map")):
        values = maps[suffix][mask]
        values = values[np.isfinite(values)]
        ax.hist(values, bins=60, range=colour_limits(suffix, values), color="#456")
        if suffix == "PDFFmap":
            ax.axvline(PDFF_BOUNDARY, color="tab:red", linestyle="--", linewidth=1, label=f"{PDFF_BOUNDARY:g}")
            ax.legend(fontsize=8)
        ax.set_title(PANELS[suffix][0], fontsize=9)
    axes[0].set_ylabel("voxels")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def roi_figure(roi: str, rows: list[dict], participants: list[str]) -> Figure:
    """Per map: each run's median (point) and 5th-95th percentile range (bar), by participant."""
    fig = Figure(figsize=(max(7.0, 3 * 0.35 * len(participants) + 4), 3.2), layout="constrained")
    axes = fig.subplots(1, len(STATISTIC_MAPS), squeeze=False)[0]
    position = {p: i for i, p in enumerate(participants)}
    palette = [("#89a", "#234"), ("#e9a", "#a13"), ("#9d9", "#272"), ("#db8", "#a60")]
    colours = {m: palette[i % len(palette)] for i, m in enumerate(dict.fromkeys(r["method"] for r in rows))}
    for ax, name in zip(axes, STATISTIC_MAPS):
        labelled: set[str] = set()
        mine = [r for r in rows if r["map"] == name and r["median"] is not None]
        # Runs (and methods) of one participant side by side around its position.
        per_participant: dict[str, int] = defaultdict(int)
        for r in mine:
            x = position[r["participant_id"]] + 0.12 * per_participant[r["participant_id"]]
            per_participant[r["participant_id"]] += 1
            light, dark = colours[r["method"]]
            ax.plot([x, x], [r["p05"], r["p95"]], color=light, linewidth=2)
            ax.plot(x, r["median"], "o", color=dark, markersize=4,
                    label=r["method"] if len(colours) > 1 and r["method"] not in labelled else None)
            labelled.add(r["method"])
        if name == "PDFF":
            ax.axhline(PDFF_BOUNDARY, color="tab:red", linestyle="--", linewidth=0.8)
        ax.set_xticks(range(len(participants)), participants, rotation=90, fontsize=7)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel(next((r["units"] for r in mine), ""), fontsize=8)
        if len(colours) > 1 and name == next(iter(STATISTIC_MAPS)):
            ax.legend(fontsize=7, title="method", title_fontsize=7)
    fig.suptitle(f"ROI {roi}: median (point) and 5th-95th percentile (bar) per run; method "
                 + ", ".join(colours), fontsize=10)
    return fig
