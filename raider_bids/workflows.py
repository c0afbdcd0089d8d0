"""Orchestration. Participant level: for each selected run, mask, noise, estimate, write, then a
report per participant. Group level: ROI statistics of the participant-level outputs and a report."""

from __future__ import annotations

import json
import logging
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .bids_io import (MegreRun, find_runs, list_run_names, load_filters, load_mask, load_run, read_volume, run_size,
                      strip_ses, strip_sub)
from .comparison import agreement
from .config import Config
from .derivatives import (RunOutputs, find_run_outputs, map_sidecar, output_path, prepare_output_dataset,
                          remove_run_outputs, run_outputs, write_json, write_nifti, write_torch, write_tsv)
from .errors import (InputDataError, MissingInputError, NoFilesSelectedError, RaiderError, ResourceError,
                     UsageError)
from .estimators import Estimates, Estimator, ProgressCallbackFactory, get_estimator
from .fat_spectrum import load_fat_spectrum
from .mask import foreground_mask, usable_voxels
from .noise import estimate_sigma
from .reports import group_report, participant_report
from .resources import (DEFAULT_WORKING_BYTES, MIN_WORKING_BYTES, format_bytes, resident_bytes, run_bytes,
                        set_working_memory)
from .rois import Roi, applies_to, find_roi_files, load_rois
from .roistats import COLUMNS, DATA_DICTIONARY, STATISTIC_MAPS, roi_rows
from .signal_model import Acquisition

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run: MegreRun
    outputs: dict[str, Path]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is visible (under Apptainer, pass --nv)")
    return torch.device(name)


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "raider-bids": __version__}
    for dist in ("torch", "numpy", "scipy", "nibabel", "pybids"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "unknown"
    return versions


def select_runs(config: Config) -> tuple[list[MegreRun], dict[str, RaiderError]]:
    return find_runs(config.bids_dir, list(config.participant_labels), list(config.session_labels),
                     load_filters(config.bids_filter_file), config.field_strength_t)


@dataclass
class ParticipantResult:
    finished: list[RunResult]  # processed now
    skipped: list[MegreRun]  # finished before with the same options
    failed: dict[str, RaiderError]  # run name -> why, in name order

    @property
    def exit_code(self) -> int:
        """0, or the code of the first run that failed."""
        return next(iter(self.failed.values())).exit_code if self.failed else 0


def participant(config: Config, progress: ProgressCallbackFactory | None = None) -> ParticipantResult:
    """Process every selected run; a run that fails is reported and the others go on. Runs that
    already finished with the same options are skipped."""
    runs, failed = select_runs(config)
    for name, exc in failed.items():
        log.error("%s", exc)
    if not runs:
        return ParticipantResult([], [], failed)
    spectrum = load_fat_spectrum(config.fat_spectrum)
    device = resolve_device(config.device)
    estimators = [get_estimator(m, config.training) for m in config.methods]
    prepare_output_dataset(config.output_dir, config.bids_dir)
    log.info("%d run(s) selected: %s", len(runs), ", ".join(r.name for r in runs))
    result = ParticipantResult([], [], failed)
    for i, run in enumerate(runs, 1):
        previous = run_outputs(config.output_dir, run)
        redo = _why_redo(previous.provenance, config, run) if previous.finished else None
        if previous.finished and redo is None:
            log.info("[%d/%d] %s: already finished with the same options (%s); skipped", i, len(runs), run.name,
                     previous.files["provenance"].name)
            result.skipped.append(run)
            continue
        if previous.files:
            log.info("%s: removing earlier outputs %s", run.name, redo or "left by an interrupted or failed run")
        remove_run_outputs(config.output_dir, run)
        log.info("[%d/%d] %s: %d echoes, TE %.2f-%.2f ms, %.3g T", i, len(runs), run.name,
                 len(run.echo_times_s), 1e3 * run.echo_times_s[0], 1e3 * run.echo_times_s[-1],
                 run.field_strength_t)
        try:
            callback = progress(run.name) if progress else None
            result.finished.append(process_run(config, run, Acquisition(run.echo_times_s, run.field_strength_t,
                                                                        spectrum), estimators, device, callback))
        except BaseException as exc:
            remove_run_outputs(config.output_dir, run)  # whatever stops a run leaves none of its files
            error = _user_error(exc, run)
            log.error("%s", error)
            result.failed[run.name] = error
    result.failed = dict(sorted(result.failed.items()))
    write_participant_reports(config, sorted({r.run.subject for r in result.finished}
                                             | {r.subject for r in result.skipped}))
    return result


def _user_error(exc: BaseException, run: MegreRun) -> RaiderError:
    """A run's failure as a one-line user error; anything else (an interruption, a bug) is raised."""
    if isinstance(exc, RaiderError):
        return exc
    # torch reports a failed allocation as a RuntimeError ("... not enough memory ...").
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and "memory" in str(exc).lower()):
        return ResourceError(f"{run.echo_files[0].parent}: run {run.name} ran out of memory; give the job "
                             "more memory (and --mem), or fewer --nprocs")
    raise exc


def _why_redo(provenance: dict, config: Config, run: MegreRun) -> str | None:
    """Why a finished run's outputs no longer hold (made with other options or another version, or
    from inputs that changed since), or None."""
    recorded = provenance.get("Configuration", {})
    current = json.loads(json.dumps(config.result_options(), default=str))
    if (provenance.get("Software", {}).get("raider-bids") != __version__
            or {k: recorded.get(k) for k in current} != current):
        return "made with other options"
    if (provenance.get("EchoTime") != list(run.echo_times_s)
            or provenance.get("MagneticFieldStrength") != run.field_strength_t
            or provenance.get("InputFiles") != run.input_state()):
        return "made from inputs that have changed since (images or sidecars)"
    return None


def write_participant_reports(config: Config, subjects: list[str]) -> None:
    """sub-<label>.html for each subject, covering all its finished runs in the output dataset."""
    outputs = find_run_outputs(config.output_dir)
    for subject in subjects:
        path = participant_report(config.output_dir, subject, [r for r in outputs if r.subject == subject],
                                  config.bids_dir)
        log.info("report: %s", path)


def process_run(config: Config, run: MegreRun, acquisition: Acquisition, estimators: list[Estimator],
                device: torch.device, progress=None) -> RunResult:
    """Load, mask, estimate the noise, run every estimator (the first is the primary) and write."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if config.mem_bytes:
        _fit_memory(run, config.mem_bytes)
    inputs = run.input_state()  # before reading: a change while the run works shows on the next rerun
    data, reference = load_run(run, threads=torch.get_num_threads())
    timings["LoadSeconds"] = time.perf_counter() - t0

    t = time.perf_counter()
    if config.mask_file:
        # NaN/Inf voxels and voxels zero at every echo cannot be fitted, whatever the user's mask says.
        mask = (load_mask(config.mask_file, data.shape[:3], reference.affine, run.echo_files[0].name)
                & usable_voxels(data))
        mask_source = f"user: {config.mask_file}"
    else:
        mask = foreground_mask(data)
        mask_source = "automatic (Otsu threshold on the log of the echo-mean magnitude, opening, specks removed)"
    if mask.sum() < 10:
        raise InputDataError(f"{run.echo_files[0]}: only {int(mask.sum())} voxels in the foreground mask")
    signals = data[mask].astype(np.float64)  # the estimators work in float64 (stored as float32)
    timings["MaskSeconds"] = time.perf_counter() - t

    t = time.perf_counter()
    rng = np.random.default_rng(config.random_seed)
    if config.sigma is not None:
        noise = {"Sigma": config.sigma, "Method": "user (--sigma)"}
    else:
        noise = estimate_sigma(signals, acquisition, rng).to_dict()
    sigma = float(noise["Sigma"])
    timings["NoiseSeconds"] = time.perf_counter() - t
    log.info("%s: %d foreground voxels, sigma %.4g (%s)", run.name, signals.shape[0], sigma, noise["Method"])

    results: dict[str, Estimates] = {}
    for estimator in estimators:
        t = time.perf_counter()
        estimates = estimator.fit(signals, acquisition, sigma, seed=config.random_seed, device=device,
                                  progress=progress)
        seconds = time.perf_counter() - t
        timings["EstimationSeconds"] = timings.get("EstimationSeconds", 0.0) + seconds
        estimates.provenance["Seconds"] = round(seconds, 3)
        results[estimator.name] = estimates
        log.info("%s: %s: %.1f%% of voxels on the fat-dominant side (PDFF >= 0.58)", run.name, estimator.name,
                 100 * estimates.chose_fat.mean())

    outputs = write_outputs(config, run, inputs, acquisition, reference, mask, results, estimators, noise,
                            mask_source, device, timings)
    log.info("%s: maps written to %s", run.name, outputs["PDFFmap"].parent)
    return RunResult(run, outputs)


def _fit_memory(run: MegreRun, limit: int) -> None:
    """Refuse a run whose whole-image arrays cannot fit in `limit` bytes; size the chunks of the
    computations to what is left."""
    base, images = resident_bytes(), run_bytes(run_size(run))
    if base + images + MIN_WORKING_BYTES > limit:
        raise ResourceError(f"{run.echo_files[0].parent}: run {run.name} needs about "
                            f"{format_bytes(base + images + MIN_WORKING_BYTES)} ({format_bytes(base)} for the "
                            f"program, {format_bytes(images)} for the images), more than --mem {format_bytes(limit)}")
    set_working_memory(min(DEFAULT_WORKING_BYTES, limit - base - images))


def _write_map(path: Path, values: np.ndarray, mask: np.ndarray, reference) -> None:
    volume = np.zeros(mask.shape, dtype=np.float32)
    volume[mask] = values
    write_nifti(path, volume, reference)


def _maps(estimates: Estimates) -> dict[str, np.ndarray]:
    """Suffix -> per-voxel values of one method's maps."""
    maps = {"PDFFmap": estimates.pdff, "R2starmap": estimates.r2star_s, "S0map": estimates.s0}
    if estimates.log_likelihood_ratio is not None:
        maps["LLRmap"] = estimates.log_likelihood_ratio
    return maps


def _candidate(estimates: Estimates) -> dict[str, np.ndarray]:
    return {"pdff": estimates.pdff, "r2star_s": estimates.r2star_s, "s0": estimates.s0}


def write_outputs(config: Config, run: MegreRun, inputs: dict, acquisition: Acquisition, reference, mask,
                  results: dict[str, Estimates], estimators: list[Estimator], noise: dict, mask_source: str,
                  device: torch.device, timings: dict[str, float]) -> dict[str, Path]:
    """Maps of the primary (first) method under the plain names; with several methods, every
    method's maps also as desc-<method> variants and their agreement with the primary in the
    provenance. Weights: desc-<network> for the primary, desc-<method><network> for the others."""
    t = time.perf_counter()
    out = config.output_dir
    outputs: dict[str, Path] = {}
    primary = estimators[0]
    several = len(estimators) > 1
    volumes = {(suffix, None, primary): values for suffix, values in _maps(results[primary.name]).items()}
    if config.write_candidates:
        for kind, candidate in results[primary.name].candidates.items():
            volumes |= {("PDFFmap", kind, primary): candidate["pdff"],
                        ("R2starmap", kind, primary): candidate["r2star_s"], ("S0map", kind, primary): candidate["s0"]}
    if several:
        for estimator in estimators:
            volumes |= {(suffix, estimator.name, estimator): values
                        for suffix, values in _maps(results[estimator.name]).items()}
    # Several files at once: their gzip compression runs outside the GIL.
    with ThreadPoolExecutor(max_workers=torch.get_num_threads()) as pool:
        jobs = []
        for (suffix, desc, estimator), values in volumes.items():
            path = output_path(out, run, suffix, desc=desc)
            jobs.append(pool.submit(_write_map, path, values, mask, reference))
            write_json(path.with_name(path.name.replace(".nii.gz", ".json")),
                       map_sidecar(run, suffix, estimator.description, estimator.reference, desc))
            outputs[suffix if desc is None else f"{suffix}-{desc}"] = path
        mask_path = output_path(out, run, "mask", desc="foreground")
        jobs.append(pool.submit(write_nifti, mask_path, mask, reference, dtype=np.uint8))
        for job in jobs:
            job.result()
    write_json(mask_path.with_name(mask_path.name.replace(".nii.gz", ".json")),
               {"Description": f"Foreground mask, {mask_source}",
                "Sources": [f"bids:raw:{f}" for f in run.relative_files()], "SkullStripped": False})
    outputs["mask"] = mask_path
    for estimator in estimators:
        for kind, weights in results[estimator.name].weights.items():
            desc = kind if estimator is primary else f"{estimator.name}{kind}"
            path = output_path(out, run, "weights", desc=desc, ext=".pt")
            write_torch(path, weights)
            outputs[f"weights-{desc}"] = path
    timings["WriteSeconds"] = time.perf_counter() - t
    provenance = {
        "Software": library_versions(),
        "CommandLine": list(config.command_line) or sys.argv,
        "Configuration": config.to_dict(),
        "RandomSeed": config.random_seed,
        "Device": str(device),
        "TorchThreads": torch.get_num_threads(),
        "Inputs": [f"bids:raw:{f}" for f in run.relative_files()],
        "InputFiles": inputs,
        "EchoTime": list(run.echo_times_s),
        "MagneticFieldStrength": run.field_strength_t,
        "FatSpectrum": acquisition.fat_spectrum.to_dict(),
        "Noise": noise,
        "Mask": {"Source": mask_source, "Voxels": int(mask.sum())},
        "Estimation": results[primary.name].provenance,
        **({"Methods": {name: estimates.provenance for name, estimates in results.items()},
            "Comparison": {"Reference": primary.name,
                           "Agreement": {name: agreement(_candidate(results[primary.name]), _candidate(estimates))
                                         for name, estimates in results.items() if name != primary.name}}}
           if several else {}),
        "Timings": {k: round(v, 3) for k, v in timings.items()},
        "Outputs": {k: v.name for k, v in outputs.items()},
    }
    path = output_path(out, run, "provenance", ext=".json")
    write_json(path, provenance)
    outputs["provenance"] = path
    return outputs


GROUP_TABLE = "group_roistats"


@dataclass
class GroupResult:
    table: Path
    report: Path
    runs: list[RunOutputs]
    problems: dict[str, str]  # run or participant -> why it is not summarised


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


def _method_files(run: RunOutputs) -> dict[str, dict[str, Path]]:
    """Per method the run was processed with, its statistic maps (table name -> file): the plain
    maps for one method, the desc-<method> variants for several."""
    methods = list(run.provenance.get("Methods", {}))
    if len(methods) < 2:
        method = run.provenance.get("Estimation", {}).get("Method", "n/a")
        return {method: {name: run.files[suffix] for name, suffix in STATISTIC_MAPS.items()}}
    return {m: {name: run.listed[f"{suffix}-{m}"] for name, suffix in STATISTIC_MAPS.items()} for m in methods}


def group(config: Config) -> GroupResult:
    """ROI statistics of every finished run in the output dataset, a data dictionary and a report.
    Runs without (finished) outputs are listed, not fatal; an ROI on another grid is fatal."""
    out = config.output_dir
    if not (out / "dataset_description.json").is_file():
        raise MissingInputError(f"{out}: no participant-level outputs (no dataset_description.json); "
                                "run the participant level first")
    expected = _expected_runs(config)
    found = [r for r in find_run_outputs(out) if _selected(r, config)]
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
                           for method, files in _method_files(run).items()}
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
    prepare_output_dataset(out, config.bids_dir)
    table = out / f"{GROUP_TABLE}.tsv"
    write_json(table.with_suffix(".json"), DATA_DICTIONARY)
    write_tsv(table, COLUMNS, rows)
    report = group_report(out, rows, summarised, problems, GROUP_TABLE)
    log.info("group: %d run(s), %d row(s) in %s; report %s", len(summarised), len(rows), table, report)
    return GroupResult(table, report, summarised, problems)
