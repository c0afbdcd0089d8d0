"""The group level: ROI statistics of every finished participant-level run, a quality-control
table of those runs (identifiability, water/fat choice), their data dictionaries and a report.
Runs without (finished) outputs are listed, not fatal; an ROI on another grid is fatal."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bids_io.derivatives import DerivativesDataset, RunOutputs
from ..bids_io.files import write_json, write_tsv
from ..bids_io.raw import list_run_names, load_filters, read_volume, strip_ses, strip_sub
from ..bids_io.rois import Roi, applies_to, find_roi_files, load_rois
from ..config import Config
from ..errors import InputDataError, MissingInputError, NoFilesSelectedError
from ..reports.pages import group_report
from ..reports.quality import QC_COLUMNS, QC_DICTIONARY, QC_TABLE, run_quality
from ..reports.roistats import COLUMNS, DATA_DICTIONARY, roi_rows

log = logging.getLogger(__name__)

GROUP_TABLE = "group_roistats"


@dataclass
class GroupResult:
    table: Path
    report: Path
    runs: list[RunOutputs]
    problems: dict[str, str]  # run or participant -> why it is not summarised
    qc_table: Path | None = None  # group_qc.tsv: one row per summarised run


def _expected_runs(config: Config) -> set[str]:
    """Run names the raw dataset holds (file names only); empty, with a warning, if it cannot be read."""
    try:
        return set(list_run_names(config.bids_dir, list(config.participant_labels),
                                  list(config.session_labels), load_filters(config.bids_filter_file)))
    except (MissingInputError, NoFilesSelectedError, InputDataError) as exc:
        log.warning("cannot list the runs of the raw dataset, so runs without outputs go unnoticed (%s)", exc)
        return set()


def _selected(run: RunOutputs, config: Config) -> bool:
    subjects = {strip_sub(p) for p in config.participant_labels}
    sessions = {strip_ses(s) for s in config.session_labels}
    return (not subjects or run.subject in subjects) and (not sessions or run.session in sessions)


def _load_output(path: Path) -> tuple[object, np.ndarray]:
    return read_volume(path, "a participant-level output", np.float64)


def group(config: Config) -> GroupResult:
    """ROI statistics of every finished run in the output dataset, a data dictionary and a report."""
    dataset = DerivativesDataset(config.output_dir)
    out = dataset.root
    if not dataset.exists():
        raise MissingInputError(f"{out}: no participant-level outputs (no dataset_description.json); "
                                "run the participant level first")
    expected = _expected_runs(config)
    found = [r for r in dataset.find_run_outputs() if _selected(r, config)]
    problems = {name: "missing: no outputs (the participant level was not run for it, or failed)"
                for name in sorted(expected - {r.name for r in found})}
    problems |= {r.name: f"failed: incomplete outputs (no {', '.join(r.missing)}); the participant level "
                         "did not finish" for r in found if not r.finished}
    roi_files = find_roi_files(list(config.roi_datasets)) if config.roi_datasets else []
    rows: list[dict] = []
    summarised: list[RunOutputs] = []
    for run in (r for r in found if r.finished):
        try:
            reference, foreground = _load_output(run.files["mask"])
            method_maps = {method: {name: _load_output(path)[1] for name, path in files.items()}
                           for method, files in run.method_maps().items()}
        except InputDataError as exc:
            problems[run.name] = f"failed: {exc}"
            continue
        if roi_files:
            matching = [f for f in roi_files if applies_to(f, run.entities)]
            rois = load_rois(matching, reference, run.files["PDFFmap"])
            if not rois:
                log.warning("%s: no ROI in %s applies to this run", run.name,
                            ", ".join(str(d) for d in config.roi_datasets))
        else:
            rois = [Roi("foreground", f"bids::{run.files['mask'].relative_to(out).as_posix()}", foreground > 0)]
        for method, maps in method_maps.items():
            rows += roi_rows(dict(run.entities), run.name, method, maps, foreground > 0, rois)
        summarised.append(run)
    for name, why in sorted(problems.items()):
        log.warning("%s: not in the group statistics: %s", name, why)
    if not summarised:
        raise MissingInputError(f"{out}: no finished participant-level outputs to summarise"
                                + (" for the selected participants/sessions" if config.participant_labels
                                   or config.session_labels else "") + "; run the participant level first")
    unused = [f.source for f in roi_files if not any(applies_to(f, r.entities) for r in summarised)]
    if unused:
        log.warning("ROI file(s) matching none of the runs: %s", ", ".join(unused))
    dataset.prepare(config.bids_dir)
    table = out / f"{GROUP_TABLE}.tsv"
    write_json(table.with_suffix(".json"), DATA_DICTIONARY)
    write_tsv(table, COLUMNS, rows)
    quality = [run_quality(r) for r in summarised]
    qc_table = out / f"{QC_TABLE}.tsv"
    write_json(qc_table.with_suffix(".json"), QC_DICTIONARY)
    write_tsv(qc_table, QC_COLUMNS, [q.row() for q in quality])
    for q in quality:
        if q.flagged and q.identifiability:
            log.warning("%s: water/fat separation unreliable: %s", q.name, q.identifiability.reason)
    report = group_report(dataset, rows, summarised, problems, GROUP_TABLE, quality, QC_TABLE)
    log.info("group: %d run(s), %d row(s) in %s; quality control in %s; report %s", len(summarised), len(rows),
             table, qc_table, report)
    return GroupResult(table, report, summarised, problems, qc_table)
