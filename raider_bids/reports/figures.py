"""The reports' figures, drawn with matplotlib's object API (no pyplot, no global backend)."""

from __future__ import annotations

from collections import defaultdict

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from ..bids_io.derivatives import MAPS
from ..physics.parameters import PDFF_BOUNDARY
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
# No distribution on [0, 1] has a standard deviation above 0.5: past it, a PDFF bound says "unknown".
_MAX_PDFF_SD = 0.5
# R2* maps and histograms end at the first of these (1/s) that holds the run's 99.5th percentile:
# an iron-loaded liver (500-2000 1/s) stays visible, and runs of one kind share a scale.
R2STAR_DISPLAY_MAXIMA_S = (100.0, 200.0, 500.0, 1000.0, 2000.0, 3000.0)


def colour_limits(key: str, values: np.ndarray) -> tuple[float, float]:
    """The colour range of a PANELS mosaic from its values over the mask (or the whole volume for
    the first echo). Bounded quantities span their range: PDFF 0-1; the chosen side's probability
    0.5-1 (0.5: a coin toss, the least either choice gives: the spatial choice's minimum is never
    improved by flipping one voxel). Unbounded ones go from 0 to
    their 99.5th percentile (upper_limit), so that a few outliers do not wash the map out; the PDFF
    standard deviation is also capped at 0.5. R2* ends at the first of R2STAR_DISPLAY_MAXIMA_S above
    that percentile. The signed LLR is symmetric about 0, up to its 95th
    percentile of |LLR| and at least 1 nat (the ambiguity threshold)."""
    if key == "PDFFmap":
        return 0.0, 1.0
    if key == "SideProbmap":
        return 0.5, 1.0
    if key == "confidence":
        finite = np.abs(values[np.isfinite(values)])
        bound = max(1.0, float(np.percentile(finite, 95))) if finite.size else 1.0
        return -bound, bound
    top = upper_limit(values)
    if key == "R2starmap":
        return 0.0, r2star_display_max(top)
    return 0.0, (min(top, _MAX_PDFF_SD) if key == "PDFFsdmap" else top)


def r2star_display_max(top: float) -> float:
    """The first of R2STAR_DISPLAY_MAXIMA_S (1/s) at or above `top` (the largest if none is)."""
    return next((m for m in R2STAR_DISPLAY_MAXIMA_S if m >= top), R2STAR_DISPLAY_MAXIMA_S[-1])


def mosaic(volume: np.ndarray, slices: list[int], title: str, cmap: str, limits: tuple[float, float],
           mask: np.ndarray | None, units: str | None = None) -> Figure:
    """The slices side by side in one image (one Axes: a figure per slice costs layout time),
    outside the mask black, with a colour bar labelled with `units`."""
    # rot90: the first (R) axis runs left to right, the second (A) upwards.
    planes = [np.rot90(volume[:, :, z] if mask is None else np.where(mask[:, :, z], volume[:, :, z], np.nan))
              for z in slices]
    height, width = planes[0].shape
    gap = max(1, width // 40)
    tiled = np.full((height, len(planes) * (width + gap) - gap), np.nan)
    for i, plane in enumerate(planes):
        tiled[:, i * (width + gap):i * (width + gap) + width] = plane
    image_h = 2.2  # inches
    image_w = image_h * tiled.shape[1] / height
    fig_w, fig_h = max(6.0, image_w + (1.35 if units else 1.1)), image_h + 0.65
    fig = Figure(figsize=(fig_w, fig_h))
    ax = fig.add_axes((0.1 / fig_w, 0.1 / fig_h, image_w / fig_w, image_h / fig_h))
    shown = ax.imshow(tiled, cmap=matplotlib.colormaps[cmap].with_extremes(bad="black"), vmin=limits[0],
                      vmax=limits[1], interpolation="nearest", aspect="auto")
    ax.set_axis_off()
    for i, z in enumerate(slices):
        left = i * (width + gap)
        if i:
            ax.axvspan(left - gap - 0.5, left - 0.5, color="white")
        ax.text(left + width / 2, -0.01 * height, f"slice {z}", ha="center", va="bottom", fontsize=8)
    bar = fig.colorbar(shown, cax=fig.add_axes(((0.25 + image_w) / fig_w, 0.1 / fig_h, 0.15 / fig_w,
                                                image_h / fig_h)))
    if units:
        bar.set_label(units, fontsize=8)
    fig.text(0.1 / fig_w, 1 - 0.08 / fig_h, title, ha="left", va="top", fontsize=10)
    return fig


def upper_limit(values: np.ndarray, q: float = 99.5) -> float:
    """A colour or histogram range's top: the q-th percentile of the finite values (1 if not positive)."""
    finite = values[np.isfinite(values)]
    top = float(np.percentile(finite, q)) if finite.size else 1.0
    return top if top > 0 else 1.0


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


def histogram_figure(maps: dict[str, np.ndarray], mask: np.ndarray) -> Figure:
    fig = Figure(figsize=(10, 2.8))
    fig.subplots_adjust(left=0.085, right=0.99, bottom=0.1, top=0.9, wspace=0.25)  # fixed: a layout engine costs time
    axes = fig.subplots(1, 3)
    for ax, suffix in zip(axes, ("PDFFmap", "R2starmap", "S0map")):
        values = maps[suffix][mask]
        values = values[np.isfinite(values)]
        upper = 1.0 if suffix == "PDFFmap" else upper_limit(values)
        if suffix == "R2starmap":
            upper = r2star_display_max(upper)
        ax.hist(values, bins=60, range=(0, upper), color="#456")
        if suffix == "PDFFmap":
            ax.axvline(PDFF_BOUNDARY, color="tab:red", linestyle="--", linewidth=1, label="0.58")
            ax.legend(fontsize=8)
        ax.set_title(PANELS[suffix][0], fontsize=9)
    axes[0].set_ylabel("voxels")
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
    fig.suptitle(f"ROI {roi}: median (point) and 5th-95th percentile (bar) per run", fontsize=10)
    return fig
