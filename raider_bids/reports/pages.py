"""HTML reports made from the outputs on disk: one page per participant (quality control, slice
mosaics, training curves, histograms, provenance) and a group page (quality control and ROI
statistics across participants).

Pages are self-contained for offline viewing: inline CSS, no scripts, PNG figures beside them."""

from __future__ import annotations

import html
import logging
import re
from pathlib import Path
from typing import Any, Callable, Iterable

import nibabel as nib
import numpy as np
from matplotlib.figure import Figure

from .. import __version__
from ..bids_io.derivatives import MAPS, DerivativesDataset, RunOutputs
from ..bids_io.files import write_figure, write_text
from ..config import METHODS
from ..physics.parameters import AMBIGUOUS_LLR_NATS, PDFF_BOUNDARY
from ..provenance import Provenance
from .comparison import AGREEMENT
from .figures import (PANELS, RANGE_RULES, UNCERTAINTY_PANELS, View, colour_limits, histogram_figure, mosaic,
                      roi_figure, training_figure)
from .quality import RunQuality, flagged_first, run_quality
from .roistats import STATISTIC_MAPS

log = logging.getLogger(__name__)

MAX_SLICES = 6
_CSS = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { border-bottom: 2px solid #345; } h2 { margin-top: 2em; border-bottom: 1px solid #aaa; }
table { border-collapse: collapse; margin: 0.5em 0; } td, th { border: 1px solid #ccc; padding: 2px 8px;
text-align: left; vertical-align: top; } th { background: #eef; }
img { max-width: 100%; display: block; margin: 0.5em 0; } .bad { color: #a00; } .note { color: #555; }
code { background: #f4f4f4; } tr.bad td { background: #fdecec; } .nowrap { white-space: nowrap; }
.banner { border: 2px solid #a00; background: #fdecec; padding: 0.5em 1em; margin: 1em 0; }
"""


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n{body}\n<p class=\"note\">raider-bids {__version__}</p>"
            "</body></html>\n")


def _table(rows: Iterable[tuple[Any, Any]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def _grid(header: list[str], rows: Iterable[tuple[list[str], bool]]) -> str:
    """A table with a header row; each row's cells (HTML) and whether to mark it bad."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(("<tr class=\"bad\">" if bad else "<tr>") + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
                   for cells, bad in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _image(output_dir: Path, path: Path, alt: str, draw: Callable[[], Figure]) -> str:
    """Draw and write one figure; its <img> tag, or a note where it could not be drawn (a figure
    must never fail the run or the group level: the maps and tables are the results)."""
    try:
        write_figure(path, draw())
    except Exception as exc:  # matplotlib raises many types, e.g. on extreme values
        log.warning("%s: figure not drawn (%s: %s)", path, exc.__class__.__name__, exc)
        return f"<p class=\"note\">Figure '{html.escape(alt)}' could not be drawn ({html.escape(str(exc))}).</p>"
    return f"<img src=\"{path.relative_to(output_dir).as_posix()}\" alt=\"{html.escape(alt)}\">"


def _read(path: Path) -> tuple[np.ndarray, nib.spatialimages.SpatialImage]:
    """An image's data on its own (acquisition) grid, as float (a 4-D image's first volume, a 2-D
    slice made 3-D as the echoes are read), and the image (its affine and header)."""
    img = nib.load(path)
    data = np.asarray(img.dataobj, dtype=np.float64)
    return (data[..., 0] if data.ndim == 4 else data[..., None] if data.ndim == 2 else data), img


class _Loader:
    """Reads a run's images and turns each into displayed slices by the view of the run's grid
    (the mask's): every map, mask and overlay of a page is reoriented here, the same way."""

    def __init__(self, mask_path: Path):
        data, img = _read(mask_path)
        self.view = View.of_image(img)
        self.shape, self.axes = data.shape, nib.orientations.io_orientation(img.affine)
        self.mask = self.view.stack(data > 0)

    def load(self, path: Path) -> np.ndarray:
        data, img = _read(path)
        if data.shape != self.shape or not np.array_equal(nib.orientations.io_orientation(img.affine), self.axes):
            raise ValueError(f"{path.name} is not on the grid of the run's mask")
        return self.view.stack(data)


def _slices(mask: np.ndarray) -> list[int]:
    """Up to MAX_SLICES displayed slices (the first axis of View.stack), evenly spread over those
    that hold foreground."""
    occupied = np.flatnonzero(mask.any(axis=(1, 2)))
    if occupied.size == 0:
        occupied = np.arange(mask.shape[0])
    picks = np.linspace(0, occupied.size - 1, min(MAX_SLICES, occupied.size)).round().astype(int)
    return [int(occupied[i]) for i in np.unique(picks)]


def _first_echo(run: RunOutputs, bids_dir: Path | None, loader: _Loader) -> np.ndarray | None:
    inputs = run.provenance.inputs if run.provenance else []
    if bids_dir is None or not inputs or not str(inputs[0]).startswith("bids:raw:"):
        return None
    path = Path(bids_dir) / str(inputs[0])[len("bids:raw:"):]
    try:
        return loader.load(path)
    except Exception as exc:  # a report must not fail the run: the figure is left out
        log.warning("%s: first echo not shown in the report (%s)", path, exc)
        return None


def method_label(name: str) -> str:
    """A method as the pages name it, e.g. 'ssl: the paper's dual self-supervised networks'."""
    method = METHODS.get(name)
    return f"{name}: {method.summary}" if method else name


def _range_caption(key: str, limits: tuple[float, float], units: str) -> str:
    return (f"<p class=\"note caption\">Colour range {limits[0]:g} to {limits[1]:g} {html.escape(units)}, the "
            f"same rule on every page: {html.escape(RANGE_RULES[key])}.</p>")


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _provenance_table(prov: Provenance) -> str:
    est, noise = prov.estimation, prov.noise
    rows: list[tuple[str, Any]] = [
        ("Method", html.escape(f"{est.method}: {est.description}")),
        ("Noise sigma", html.escape(f"{_number(noise.sigma)} ({noise.method})")),
        ("Random seed", prov.random_seed),
        ("Device, threads", html.escape(f"{prov.device}, {prov.torch_threads}")),
        ("Field strength (T)", prov.field_strength_t),
        ("Echo times (ms)", ", ".join(f"{1e3 * t:.3g}" for t in prov.echo_times_s)),
        ("Foreground voxels", html.escape(f"{prov.mask_voxels} ({prov.mask_source})" + (
            f", {prov.mask_details['DroppedAsNoise']} usable voxels dropped as noise"
            if "DroppedAsNoise" in prov.mask_details else ""))),
        ("Voxels on the fat side", f"{100 * est.share_choosing_fat:.1f}%"),
    ]
    for net in est.networks:
        rows.append((f"Network {net.network}", html.escape(
            f"{net.epochs} epochs, best {net.best_epoch}, stopped: {net.stop_reason}")))
    if est.networks:  # the networks train together, in the same steps: one time for all of them
        names = " and ".join(net.network for net in est.networks)
        threads = ", ".join(f"{n} on {t} thread{'s' if t != '1' else ''}"
                            for t, n in est.networks[0].step_threads.items())
        rows.append(("Training time", html.escape(
            (f"{round(max(net.seconds for net in est.networks), 3)} s ({names} trained together)"
             if len(est.networks) > 1 else f"{round(est.networks[0].seconds, 3)} s")
            + (f"; steps {threads}" if threads else ""))))
    if len(prov.methods) > 1:
        for name, method in prov.methods.items():
            rows.append((f"Method {html.escape(name)}", html.escape(
                f"{round(method.seconds, 3)} s, {100 * method.share_choosing_fat:.1f}% of voxels on the fat side")))
    rows.append(("Timings (s)", html.escape(", ".join(f"{k.removesuffix('Seconds')} {v}"
                                                      for k, v in prov.timings.items()))))
    rows.append(("Software", html.escape(", ".join(f"{k} {v}" for k, v in prov.software.items()))))
    rows.append(("Command line", f"<code>{html.escape(' '.join(map(str, prov.command_line)))}</code>"))
    return _table(rows)


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _banner(quality: RunQuality) -> str:
    """The warning at the top of a flagged run's section."""
    check = quality.identifiability
    assert check is not None and check.flagged
    reason = html.escape(check.reason.rstrip(".") or "no reason recorded")
    advice = f"<br>Advice: {html.escape(check.advice)}" if check.advice else ""
    return (f"<div class=\"banner\" role=\"alert\"><strong>Water/fat separation {html.escape(check.verdict)}"
            f"</strong>: {reason}. PDFF and R2* may be water/fat swapped in places (median SNR "
            f"{check.snr:.3g}; {_share(check.unresolved_share)} of the tissue range unresolved).{advice}</div>")


def _quality_table(quality: RunQuality, schema_version: int) -> str:
    """The identifiability check and, per method, how its water/fat side was chosen."""
    check = quality.identifiability
    if check is None:
        rows: list[tuple[str, Any]] = [("Identifiability", f"not checked (provenance schema {schema_version}, "
                                                           "written before the check existed)")]
    else:
        verdict = html.escape(check.verdict)
        rows = [("Identifiability", f"<span class=\"bad\">{verdict}</span>" if check.flagged else verdict),
                ("Median first-echo SNR", f"{check.snr:.3g}"),
                ("Tissue range unresolved", _share(check.unresolved_share)),
                ("Median log-likelihood gap", f"{check.median_gap_nats:.3g} nats")]
    choices = []
    for method, choice in quality.choices.items():
        if choice is None:
            mode = "one candidate" if schema_version >= 3 else "not recorded (provenance before schema 3)"
            choices.append(([html.escape(method), mode, "n/a", "n/a", "n/a", "n/a"], False))
        else:
            choices.append(([html.escape(method), html.escape(choice.mode), _share(choice.ambiguous_share),
                             _share(choice.changed_share), _share(choice.expected_wrong_share),
                             _share(quality.refined.get(method))], False))
    header = ["Method", "Water/fat choice", f"Ambiguous (|LLR| < {AMBIGUOUS_LLR_NATS:g} nat)",
              "Changed by the spatial choice", "Expected on the wrong side (from the side probability)",
              "Refined to the side's maximum likelihood"]
    return "<h3>Quality control</h3>" + _table(rows) + _grid(header, choices)


def _run_section(dataset: DerivativesDataset, run: RunOutputs, bids_dir: Path | None) -> str:
    assert run.provenance is not None  # a finished run
    output_dir, figures = dataset.root, dataset.figure_directory(run.subject)
    loader = _Loader(run.files["mask"])
    view, mask = loader.view, loader.mask
    maps = {s: loader.load(run.files[s]) for s in MAPS if s in run.files}
    slices = _slices(mask)
    method = method_label(run.provenance.estimation.method)
    volumes: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}  # panel -> slices, mask to show
    echo1 = _first_echo(run, bids_dir, loader)
    if echo1 is not None:
        volumes["echo1"] = (echo1, None)
    volumes |= {key: (maps[key], mask) for key in ("PDFFmap", "R2starmap", "S0map")}
    if "LLRmap" in maps:
        volumes["confidence"] = (np.where(maps["PDFFmap"] >= PDFF_BOUNDARY, 1.0, -1.0) * maps["LLRmap"], mask)
    # The primary method's uncertainty (the plain names); runs written before them have none.
    volumes |= {key: (maps[key], mask) for key in UNCERTAINTY_PANELS if key in maps}
    quality = run_quality(run)
    parts = [f"<h2 id=\"{run.name}\">{html.escape(run.name)}: {html.escape(method)}</h2>"]
    if quality.flagged:
        parts.append(_banner(quality))
    parts.append(_quality_table(quality, run.provenance.schema_version))
    parts.append(f"<h3>Maps ({html.escape(method)})</h3><p class=\"note orientation\">"
                 f"{html.escape(view.describe())}</p>")
    for key, (volume, show_mask) in volumes.items():
        title, cmap, units = PANELS[key]
        title = title + ("\nraw data, before estimation" if key == "echo1" else f"\n{method}")
        limits = colour_limits(key, volume[mask])  # the first echo's rule too is over the mask
        parts.append(_image(output_dir, figures / f"{run.name}_{key}.png", title.replace("\n", ": "),
                            lambda: mosaic(volume, slices, title, cmap, limits, show_mask, units, view)))
        parts.append(_range_caption(key, limits, units))
    if "echo1" not in volumes:
        parts.append("<p class=\"note\">First echo not shown: the raw data were not found.</p>")
    if "confidence" not in volumes:
        parts.append("<p class=\"note\">No water/fat confidence map: this method has one candidate.</p>")
    networks = run.provenance.estimation.networks
    if networks:
        parts.append(_image(output_dir, figures / f"{run.name}_training.png", "training curves",
                            lambda: training_figure(networks)))
    else:
        parts.append("<p class=\"note\">No training curves: this method trains no network.</p>")
    parts.append(_image(output_dir, figures / f"{run.name}_histograms.png", f"histograms: {method}",
                        lambda: histogram_figure(maps, mask, f"Histograms in the mask: {method}")))
    parts.append("<p class=\"note\">Each histogram spans its map's colour range (above).</p>")
    parts += _comparison_section(dataset, run, maps, loader, slices)
    parts.append("<h3>Provenance</h3>" + _provenance_table(run.provenance))
    return "\n".join(parts)


def _comparison_section(dataset: DerivativesDataset, run: RunOutputs, maps: dict[str, np.ndarray],
                        loader: _Loader, slices: list[int]) -> list[str]:
    """With several methods: per other method, maps of its difference from the first method and
    the agreement statistics recorded in the provenance."""
    comparison = run.provenance.comparison if run.provenance else None
    if comparison is None:
        return []
    output_dir, figures, reference = dataset.root, dataset.figure_directory(run.subject), comparison.reference
    mask = loader.mask
    parts = [f"<h3>Methods compared with {html.escape(method_label(reference))}</h3>"]
    for other, stats in comparison.agreement.items():
        parts.append(f"<h4>{html.escape(method_label(other))} - {html.escape(reference)}</h4>")
        for suffix, label, units in (("PDFFmap", "PDFF", "fraction"), ("R2starmap", "R2* (1/s)", "1/s")):
            path = run.listed.get(f"{suffix}-{other}")
            if path is None or not path.is_file():
                parts.append(f"<p class=\"note\">{html.escape(other)}'s {label} map is missing.</p>")
                continue
            difference = loader.load(path) - maps[suffix]
            key = suffix.removesuffix("map") + "difference"
            limits = colour_limits(key, difference[mask])
            title = f"{label}: {other} - {reference}\n(blue: {other} lower, red: higher)"
            parts.append(_image(output_dir, figures / f"{run.name}_{suffix}-{other}-minus-{reference}.png",
                                title.replace("\n", " "),
                                lambda: mosaic(difference, slices, title, "RdBu_r", limits, mask, units,
                                               loader.view)))
            parts.append(_range_caption(key, limits, units))
        parts.append(_table((AGREEMENT[k][0] + f" ({AGREEMENT[k][1]})", _number(v)) for k, v in stats.items()
                            if k in AGREEMENT))
    return parts


def participant_report(dataset: DerivativesDataset, subject: str, runs: list[RunOutputs],
                       bids_dir: Path | None) -> Path:
    """Write sub-<subject>.html (and its figures) for the participant's finished runs."""
    runs = [r for r in runs if r.finished]
    flagged = [q for q in map(run_quality, runs) if q.flagged]
    index = "".join(f"<li><a href=\"#{r.name}\">{html.escape(r.name)}</a></li>" for r in runs)
    banner = ""
    if flagged:
        items = "".join(f"<li><a href=\"#{q.name}\">{html.escape(q.name)}</a>: "
                        f"{html.escape(q.identifiability.reason or 'no reason recorded')}</li>"
                        for q in flagged if q.identifiability)
        banner = (f"<div class=\"banner\" role=\"alert\"><strong>Water/fat separation unreliable</strong> in "
                  f"{len(flagged)} of {len(runs)} run(s); their PDFF and R2* may be water/fat swapped in places:"
                  f"<ul>{items}</ul></div>")
    methods = "; ".join(dict.fromkeys(method_label(r.provenance.estimation.method) for r in runs if r.provenance))
    title = f"sub-{subject}" + (f": {methods}" if methods else "")
    body = (f"<h1>raider-bids: {html.escape(title)}</h1>{banner}<p>{len(runs)} run(s). "
            f"<a href=\"group.html\">Group report</a> (after the group level).</p><ul>{index}</ul>"
            + "\n".join(_run_section(dataset, r, bids_dir) for r in runs))
    target = dataset.report_path(subject)
    write_text(target, _page(f"raider-bids {title}", body))
    return target


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "", name) or "roi"


def _quality_section(dataset: DerivativesDataset, quality: list[RunQuality], qc_table: str) -> str:
    """The group's quality control: one row per run, flagged runs first, with their reasons."""
    flagged = sum(q.flagged for q in quality)
    where = (f" Per run in <a href=\"{qc_table}.tsv\">{qc_table}.tsv</a> (columns described in "
             f"<a href=\"{qc_table}.json\">{qc_table}.json</a>).")
    summary = (f"<p class=\"bad\"><strong>{flagged} of {len(quality)} run(s) flagged: water/fat separation "
               f"unreliable</strong> (their PDFF and R2* may be water/fat swapped in places).{where}</p>"
               if flagged else f"<p>No run flagged: every checked run's water/fat separation is reliable.{where}</p>")
    rows = []
    for q in flagged_first(quality):
        row = q.row()
        page = dataset.report_path(q.entities["sub"])
        name = (f"<a class=\"nowrap\" href=\"{page.name}#{q.name}\">{html.escape(q.name)}</a>" if page.is_file()
                else f"<span class=\"nowrap\">{html.escape(q.name)}</span>")
        verdict = html.escape(row["identifiability"] or "not checked")
        why = "<br>".join(html.escape(label + row[k]) for k, label in (("reason", ""), ("advice", "Advice: "))
                          if row[k])
        rows.append(([name, html.escape(row["method"]), html.escape(row["choice_mode"] or "n/a"),
                      f"<strong>{verdict}</strong>" if q.flagged else verdict,
                      "n/a" if row["median_snr"] is None else f"{row['median_snr']:.3g}",
                      _share(row["unresolved_share"]), _share(row["ambiguous_share"]),
                      _share(row["changed_share"]), _share(row["expected_wrong_share"]), _share(row["refined_share"]),
                      why or "n/a"], q.flagged))
    header = ["Run", "Method", "Choice", "Identifiability", "Median SNR", "Tissue range unresolved",
              f"Ambiguous (|LLR| < {AMBIGUOUS_LLR_NATS:g} nat)", "Changed by the spatial choice",
              "Expected on the wrong side", "Refined", "Reason, advice"]
    return f"<h2 id=\"quality\">Quality control</h2>{summary}" + _grid(header, rows)


def _across_runs(values: list[float]) -> dict[str, float | None]:
    """Statistics across runs of one per-run statistic (ACROSS_RUNS' keys); None where undefined."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"mean": None, "sd": None, "median": None, "q1": None, "q3": None, "min": None, "max": None}
    q1, median, q3 = np.percentile(v, [25, 50, 75])
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else None, "median": float(median),
            "q1": float(q1), "q3": float(q3), "min": float(v.min()), "max": float(v.max())}


ACROSS_RUNS_NOTE = ("Across runs: the mean and standard deviation (N-1) of the runs' ROI means, and the median, "
                    "interquartile range (25th to 75th percentile, linear interpolation) and range of the runs' "
                    "ROI medians, from the mean and median columns of {table}.tsv; runs without voxels in the "
                    "ROI are left out.")


def _g(value: float | None) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.4g}"


def _roi_tables(mine: list[dict], methods: list[str]) -> str:
    """One ROI's statistics across runs, per map and method (ACROSS_RUNS_NOTE), and per run."""
    rows = []
    for name in STATISTIC_MAPS:
        for method in methods:
            selected = [r for r in mine if r["map"] == name and r["method"] == method and r["median"] is not None]
            means = _across_runs([r["mean"] for r in selected])
            medians = _across_runs([r["median"] for r in selected])
            units = next((r["units"] for r in mine if r["map"] == name), "")
            rows.append(([html.escape(name), html.escape(units), html.escape(method), str(len(selected)),
                          _g(means["mean"]), _g(means["sd"]), _g(medians["median"]),
                          f"{_g(medians['q1'])} to {_g(medians['q3'])}",
                          f"{_g(medians['min'])} to {_g(medians['max'])}"], False))
    header = ["Map", "Units", "Method", "Runs", "Mean of run means", "SD of run means", "Median of run medians",
              "IQR of run medians", "Range of run medians"]
    summary = _grid(header, rows).replace("<table>", "<table class=\"roistats\">", 1)
    per_run = []
    for r in mine:
        per_run.append(([html.escape(r["source"]), html.escape(r["method"]), html.escape(r["map"]),
                         html.escape(r["units"]), str(r["n_voxels"]), _g(r["mean"]), _g(r["stdv"]), _g(r["median"]),
                         f"{_g(r['p05'])} to {_g(r['p95'])}"], False))
    details = ("<details><summary>Per run</summary>"
               + _grid(["Run", "Method", "Map", "Units", "Voxels", "Mean", "SD", "Median", "5th to 95th percentile"],
                       per_run) + "</details>")
    return summary + details


def group_report(dataset: DerivativesDataset, rows: list[dict], runs: list[RunOutputs],
                 problems: dict[str, str], table_name: str, quality: list[RunQuality], qc_table: str) -> Path:
    """Write group.html: the runs' quality control (flagged runs first; `quality`, one record per
    run, from the QC table `qc_table`), per ROI plots and a table of each map's statistics per
    method across runs, links to participant pages, and the runs that are missing or failed."""
    output_dir = dataset.root
    participants = sorted({r["participant_id"] for r in rows})
    flagged = sum(q.flagged for q in quality)
    all_methods = list(dict.fromkeys(r["method"] for r in rows))
    counts = {m: len({r["source"] for r in rows if r["method"] == m}) for m in all_methods}
    methods_note = "; ".join(f"{html.escape(method_label(m))} ({counts[m]} run(s))" for m in all_methods)
    body = [f"<h1>raider-bids: group report ({html.escape(', '.join(all_methods))})</h1>"
            f"<p>{len(runs)} run(s) of {len(participants)} participant(s) "
            f"summarised; statistics in <a href=\"{table_name}.tsv\">{table_name}.tsv</a> "
            f"(columns described in <a href=\"{table_name}.json\">{table_name}.json</a>)."
            + (f" <a href=\"#quality\" class=\"bad\">{flagged} run(s) flagged</a> in quality control." if flagged
               else "") + "</p>"
            f"<p class=\"methods\">Maps by method: {methods_note}. Every statistic below names its method.</p>"]
    if problems:
        items = "".join(f"<li class=\"bad\">{html.escape(k)}: {html.escape(v)}</li>"
                        for k, v in sorted(problems.items()))
        body.append(f"<h2>Missing or failed ({len(problems)})</h2><ul>{items}</ul>")
    body.append(_quality_section(dataset, quality, qc_table))
    listing = []
    for label in sorted({f"sub-{r.subject}" for r in runs} | {k.split("_")[0] for k in problems}):
        page = dataset.report_path(label.removeprefix("sub-"))
        link = f"<a href=\"{page.name}\">{label}</a>" if page.is_file() else html.escape(label)
        names = [r.name for r in runs if f"sub-{r.subject}" == label]
        bad = [k for k in problems if k.split("_")[0] == label]
        status = f"{len(names)} run(s) summarised" + (f"; <span class=\"bad\">{len(bad)} missing or failed</span>"
                                                      if bad else "")
        listing.append((label, f"{link}: {status}"))
    body.append("<h2>Participants</h2>" + _table(listing)
                + f"<p class=\"note\">Per ROI below: {html.escape(ACROSS_RUNS_NOTE.format(table=table_name))}</p>")
    for roi in dict.fromkeys(r["roi"] for r in rows):
        mine = [r for r in rows if r["roi"] == roi]
        methods = list(dict.fromkeys(r["method"] for r in mine))
        image = _image(output_dir, dataset.figure_directory(None) / f"group_roi-{_safe(roi)}.png", f"ROI {roi}",
                       lambda: roi_figure(roi, mine, participants))
        body.append(f"<h2 id=\"roi-{_safe(roi)}\">ROI {html.escape(roi)}</h2>"
                    f"<p>Method: {'; '.join(html.escape(method_label(m)) for m in methods)}.</p>{image}"
                    + _roi_tables(mine, methods))
    target = output_dir / "group.html"
    write_text(target, _page(f"raider-bids group report: {', '.join(all_methods)}", "\n".join(body)))
    return target
