"""HTML reports made from the outputs on disk: one page per participant (slice mosaics, training
curves, histograms, provenance) and a group page (ROI statistics across participants).

Pages are self-contained for offline viewing: inline CSS, no scripts, PNG figures beside them.
Figures use matplotlib's object API (no pyplot, no global backend)."""

from __future__ import annotations

import html
import logging
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable

import matplotlib
import nibabel as nib
import numpy as np
from matplotlib.figure import Figure

from . import __version__
from .comparison import AGREEMENT
from .derivatives import (MAPS, RunOutputs, figure_directory, report_path, write_figure, write_text)
from .roistats import STATISTIC_MAPS
from .transforms import PDFF_BOUNDARY

log = logging.getLogger(__name__)

MAX_SLICES = 6
_CSS = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { border-bottom: 2px solid #345; } h2 { margin-top: 2em; border-bottom: 1px solid #aaa; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { border: 1px solid #ccc; padding: 2px 8px;
text-align: left; vertical-align: top; } th { background: #eef; }
img { max-width: 100%; display: block; margin: 0.5em 0; } .bad { color: #a00; } .note { color: #555; }
code { background: #f4f4f4; }
"""
# Display of each mosaic: title, colour map, how colour limits are set.
_PANELS = {
    "echo1": ("First echo (magnitude)", "gray"),
    "PDFFmap": ("PDFF (fraction)", "magma"),
    "R2starmap": ("R2* (1/s)", "inferno"),
    "S0map": ("S0 (image units)", "gray"),
    "confidence": ("Water/fat confidence: signed LLR (nats; + fat chosen, - water chosen)", "RdBu_r"),
}


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n{body}\n<p class=\"note\">raider-bids {__version__}</p>"
            "</body></html>\n")


def _table(rows: Iterable[tuple[Any, Any]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def _image(output_dir: Path, path: Path, alt: str, draw: Callable[[], Figure]) -> str:
    """Draw and write one figure; its <img> tag, or a note where it could not be drawn (a figure
    must never fail the run or the group level: the maps and tables are the results)."""
    try:
        write_figure(path, draw())
    except Exception as exc:  # matplotlib raises many types, e.g. on extreme values
        log.warning("%s: figure not drawn (%s: %s)", path, exc.__class__.__name__, exc)
        return f"<p class=\"note\">Figure '{html.escape(alt)}' could not be drawn ({html.escape(str(exc))}).</p>"
    return f"<img src=\"{path.relative_to(output_dir).as_posix()}\" alt=\"{html.escape(alt)}\">"


def _load(path: Path) -> np.ndarray:
    """An output image in the closest canonical (RAS) orientation, as float."""
    img = nib.as_closest_canonical(nib.load(path))
    data = np.asarray(img.dataobj, dtype=np.float64)
    return data[..., 0] if data.ndim == 4 else data


def _slices(mask: np.ndarray) -> list[int]:
    """Up to MAX_SLICES axial slices, evenly spread over those that hold foreground."""
    occupied = np.flatnonzero(mask.any(axis=(0, 1)))
    if occupied.size == 0:
        occupied = np.arange(mask.shape[2])
    picks = np.linspace(0, occupied.size - 1, min(MAX_SLICES, occupied.size)).round().astype(int)
    return [int(occupied[i]) for i in np.unique(picks)]


def _mosaic(volume: np.ndarray, slices: list[int], title: str, cmap: str, limits: tuple[float, float],
            mask: np.ndarray | None) -> Figure:
    """The slices side by side in one image (one Axes: a figure per slice costs layout time),
    outside the mask black, with a colour bar."""
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
    fig_w, fig_h = max(6.0, image_w + 1.1), image_h + 0.65
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
    fig.colorbar(shown, cax=fig.add_axes(((0.25 + image_w) / fig_w, 0.1 / fig_h, 0.15 / fig_w, image_h / fig_h)))
    fig.text(0.1 / fig_w, 1 - 0.08 / fig_h, title, ha="left", va="top", fontsize=10)
    return fig


def _upper(values: np.ndarray, q: float = 99.5) -> float:
    finite = values[np.isfinite(values)]
    top = float(np.percentile(finite, q)) if finite.size else 1.0
    return top if top > 0 else 1.0


def _first_echo(run: RunOutputs, bids_dir: Path | None) -> np.ndarray | None:
    inputs = run.provenance.get("Inputs") or []
    if bids_dir is None or not inputs or not str(inputs[0]).startswith("bids:raw:"):
        return None
    path = Path(bids_dir) / str(inputs[0])[len("bids:raw:"):]
    try:
        return _load(path)
    except Exception as exc:  # a report must not fail the run: the figure is left out
        log.warning("%s: first echo not shown in the report (%s)", path, exc)
        return None


def _training_figure(networks: list[dict]) -> Figure:
    fig = Figure(figsize=(7, 3.2), layout="constrained")
    ax = fig.subplots()
    for net, colour in zip(networks, ("tab:blue", "tab:red", "tab:green", "tab:purple")):
        epochs = np.arange(1, len(net.get("ValidationLoss", [])) + 1)
        ax.plot(epochs, net.get("TrainLoss", []), color=colour, alpha=0.5, label=f"{net['Network']} training")
        ax.plot(epochs, net.get("ValidationLoss", []), color=colour, label=f"{net['Network']} validation")
        if net.get("BestEpoch"):
            ax.axvline(net["BestEpoch"], color=colour, linestyle=":", linewidth=1)
    # The first epochs' losses are far above the rest: scale the axis to the converged part.
    losses = [v for net in networks for key in ("TrainLoss", "ValidationLoss")
              for v in net.get(key, [])[max(2, len(net.get(key, [])) // 20):] if np.isfinite(v)]
    if losses:
        low, high = min(losses), max(losses)
        ax.set_ylim(low - 0.05 * (high - low + 1e-9), high + 0.05 * (high - low + 1e-9))
    ax.set_xlabel("epoch")
    ax.set_ylabel(networks[0].get("Loss", "Rician NLL per voxel") if networks else "loss")
    ax.legend(fontsize=8)
    ax.set_title("Training curves (dotted: best epoch, whose weights are kept)", fontsize=10)
    return fig


def _histogram_figure(maps: dict[str, np.ndarray], mask: np.ndarray) -> Figure:
    fig = Figure(figsize=(10, 2.8))
    fig.subplots_adjust(left=0.085, right=0.99, bottom=0.1, top=0.9, wspace=0.25)  # fixed: a layout engine costs time
    axes = fig.subplots(1, 3)
    for ax, suffix in zip(axes, ("PDFFmap", "R2starmap", "S0map")):
        values = maps[suffix][mask]
        values = values[np.isfinite(values)]
        upper = 1.0 if suffix == "PDFFmap" else _upper(values)
        ax.hist(values, bins=60, range=(0, upper), color="#456")
        if suffix == "PDFFmap":
            ax.axvline(PDFF_BOUNDARY, color="tab:red", linestyle="--", linewidth=1, label="0.58")
            ax.legend(fontsize=8)
        ax.set_title(_PANELS[suffix][0], fontsize=9)
    axes[0].set_ylabel("voxels")
    return fig


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _provenance_table(prov: dict) -> str:
    est, noise, timings = prov.get("Estimation", {}), prov.get("Noise", {}), prov.get("Timings", {})
    rows: list[tuple[str, Any]] = [
        ("Method", html.escape(f"{est.get('Method', '?')}: {est.get('Description', '')}")),
        ("Noise sigma", html.escape(f"{_number(noise.get('Sigma'))} ({noise.get('Method', '?')})")),
        ("Random seed", prov.get("RandomSeed")),
        ("Device, threads", html.escape(f"{prov.get('Device')}, {prov.get('TorchThreads')}")),
        ("Field strength (T)", prov.get("MagneticFieldStrength")),
        ("Echo times (ms)", ", ".join(f"{1e3 * t:.3g}" for t in prov.get("EchoTime", []))),
        ("Foreground voxels", html.escape(f"{prov.get('Mask', {}).get('Voxels')} "
                                          f"({prov.get('Mask', {}).get('Source', '')})")),
    ]
    if "ShareChoosingFat" in est:
        rows.append(("Voxels on the fat side", f"{100 * est['ShareChoosingFat']:.1f}%"))
    for net in est.get("Networks", []):
        rows.append((f"Network {net['Network']}", html.escape(
            f"{net['Epochs']} epochs, best {net['BestEpoch']}, stopped: {net['StopReason']}, {net['Seconds']} s")))
    for name, method in prov.get("Methods", {}).items():
        fat = method.get("ShareChoosingFat", method.get("ShareFatDominant"))
        rows.append((f"Method {html.escape(name)}", html.escape(
            f"{method.get('Seconds', '?')} s" + (f", {100 * fat:.1f}% of voxels on the fat side" if fat is not None else ""))))
    rows.append(("Timings (s)", html.escape(", ".join(f"{k.removesuffix('Seconds')} {v}" for k, v in timings.items()))))
    rows.append(("Software", html.escape(", ".join(f"{k} {v}" for k, v in prov.get("Software", {}).items()))))
    rows.append(("Command line", f"<code>{html.escape(' '.join(map(str, prov.get('CommandLine', []))))}</code>"))
    return _table(rows)


def _run_section(output_dir: Path, run: RunOutputs, bids_dir: Path | None) -> str:
    figures = figure_directory(output_dir, run.subject)
    mask = _load(run.files["mask"]) > 0
    maps = {s: _load(run.files[s]) for s in MAPS if s in run.files}
    slices = _slices(mask)
    volumes: dict[str, tuple[np.ndarray, tuple[float, float], np.ndarray | None]] = {}
    echo1 = _first_echo(run, bids_dir)
    if echo1 is not None and echo1.shape == mask.shape:
        volumes["echo1"] = (echo1, (0.0, _upper(echo1)), None)
    volumes["PDFFmap"] = (maps["PDFFmap"], (0.0, 1.0), mask)
    volumes["R2starmap"] = (maps["R2starmap"], (0.0, _upper(maps["R2starmap"][mask])), mask)
    volumes["S0map"] = (maps["S0map"], (0.0, _upper(maps["S0map"][mask])), mask)
    if "LLRmap" in maps:
        signed = np.where(maps["PDFFmap"] >= PDFF_BOUNDARY, 1.0, -1.0) * maps["LLRmap"]
        bound = max(1.0, float(np.percentile(np.abs(signed[mask]), 95))) if mask.any() else 1.0
        volumes["confidence"] = (signed, (-bound, bound), mask)
    parts = [f"<h2 id=\"{run.name}\">{html.escape(run.name)}</h2>"]
    for key, (volume, limits, show_mask) in volumes.items():
        title, cmap = _PANELS[key]
        parts.append(_image(output_dir, figures / f"{run.name}_{key}.png", title,
                            lambda: _mosaic(volume, slices, title, cmap, limits, show_mask)))
    if "echo1" not in volumes:
        parts.append("<p class=\"note\">First echo not shown: the raw data were not found.</p>")
    if "confidence" not in volumes:
        parts.append("<p class=\"note\">No water/fat confidence map: this method has one candidate.</p>")
    networks = run.provenance.get("Estimation", {}).get("Networks", [])
    if networks:
        parts.append(_image(output_dir, figures / f"{run.name}_training.png", "training curves",
                            lambda: _training_figure(networks)))
    else:
        parts.append("<p class=\"note\">No training curves: this method trains no network.</p>")
    parts.append(_image(output_dir, figures / f"{run.name}_histograms.png", "histograms",
                        lambda: _histogram_figure(maps, mask)))
    parts += _comparison_section(output_dir, run, maps, mask, slices)
    parts.append("<h3>Provenance</h3>" + _provenance_table(run.provenance))
    return "\n".join(parts)


def _comparison_section(output_dir: Path, run: RunOutputs, maps: dict[str, np.ndarray], mask: np.ndarray,
                        slices: list[int]) -> list[str]:
    """With several methods: per other method, maps of its difference from the first method and
    the agreement statistics recorded in the provenance."""
    comparison = run.provenance.get("Comparison")
    if not comparison:
        return []
    reference, figures = comparison.get("Reference", "?"), figure_directory(output_dir, run.subject)
    parts = [f"<h3>Methods compared with {html.escape(reference)}</h3>"]
    for other, stats in comparison.get("Agreement", {}).items():
        parts.append(f"<h4>{html.escape(other)} - {html.escape(reference)}</h4>")
        for suffix, label in (("PDFFmap", "PDFF"), ("R2starmap", "R2* (1/s)")):
            path = run.listed.get(f"{suffix}-{other}")
            if path is None or not path.is_file():
                parts.append(f"<p class=\"note\">{html.escape(other)}'s {label} map is missing.</p>")
                continue
            difference = _load(path) - maps[suffix]
            bound = 1.0 if suffix == "PDFFmap" else max(1.0, float(np.percentile(np.abs(difference[mask]), 99)))
            title = f"{label}: {other} - {reference} (blue: {other} lower, red: higher)"
            parts.append(_image(output_dir, figures / f"{run.name}_{suffix}-{other}-minus-{reference}.png", title,
                                lambda: _mosaic(difference, slices, title, "RdBu_r", (-bound, bound), mask)))
        parts.append(_table((AGREEMENT[k][0] + f" ({AGREEMENT[k][1]})", _number(v)) for k, v in stats.items()
                            if k in AGREEMENT))
    return parts


def participant_report(output_dir: Path, subject: str, runs: list[RunOutputs], bids_dir: Path | None) -> Path:
    """Write sub-<subject>.html (and its figures) for the participant's finished runs."""
    runs = [r for r in runs if r.finished]
    index = "".join(f"<li><a href=\"#{r.name}\">{html.escape(r.name)}</a></li>" for r in runs)
    body = (f"<h1>raider-bids: sub-{html.escape(subject)}</h1><p>{len(runs)} run(s). "
            f"<a href=\"group.html\">Group report</a> (after the group level).</p><ul>{index}</ul>"
            + "\n".join(_run_section(output_dir, r, bids_dir) for r in runs))
    target = report_path(output_dir, subject)
    write_text(target, _page(f"sub-{subject}", body))
    return target


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "", name) or "roi"


def _roi_figure(roi: str, rows: list[dict], participants: list[str]) -> Figure:
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


def group_report(output_dir: Path, rows: list[dict], runs: list[RunOutputs], problems: dict[str, str],
                 table_name: str) -> Path:
    """Write group.html: per-ROI plots across participants, links to participant pages, and the runs
    that are missing or failed."""
    participants = sorted({r["participant_id"] for r in rows})
    body = [f"<h1>raider-bids: group report</h1><p>{len(runs)} run(s) of {len(participants)} participant(s) "
            f"summarised; statistics in <a href=\"{table_name}.tsv\">{table_name}.tsv</a> "
            f"(columns described in <a href=\"{table_name}.json\">{table_name}.json</a>).</p>"]
    if problems:
        items = "".join(f"<li class=\"bad\">{html.escape(k)}: {html.escape(v)}</li>" for k, v in sorted(problems.items()))
        body.append(f"<h2>Missing or failed ({len(problems)})</h2><ul>{items}</ul>")
    listing = []
    for label in sorted({f"sub-{r.subject}" for r in runs} | {k.split("_")[0] for k in problems}):
        page = output_dir / f"{label}.html"
        link = f"<a href=\"{page.name}\">{label}</a>" if page.is_file() else html.escape(label)
        names = [r.name for r in runs if f"sub-{r.subject}" == label]
        bad = [k for k in problems if k.split("_")[0] == label]
        status = f"{len(names)} run(s) summarised" + (f"; <span class=\"bad\">{len(bad)} missing or failed</span>"
                                                      if bad else "")
        listing.append((label, f"{link}: {status}"))
    body.append("<h2>Participants</h2>" + _table(listing))
    for roi in dict.fromkeys(r["roi"] for r in rows):
        mine = [r for r in rows if r["roi"] == roi]
        image = _image(output_dir, figure_directory(output_dir, None) / f"group_roi-{_safe(roi)}.png", f"ROI {roi}",
                       lambda: _roi_figure(roi, mine, participants))
        summary = []
        methods = list(dict.fromkeys(r["method"] for r in mine))
        for name in STATISTIC_MAPS:
            for method in methods:
                medians = np.array([r["median"] for r in mine if r["map"] == name and r["method"] == method
                                    and r["median"] is not None])
                summary.append((name if len(methods) == 1 else f"{name} ({html.escape(method)})",
                                f"{medians.size} run(s); median of run medians {np.median(medians):.4g}, "
                                f"range {medians.min():.4g} to {medians.max():.4g}" if medians.size else "no voxels"))
        body.append(f"<h2>ROI {html.escape(roi)}</h2>{image}" + _table(summary))
    target = output_dir / "group.html"
    write_text(target, _page("raider-bids group report", "\n".join(body)))
    return target
