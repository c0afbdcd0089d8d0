"""The participant level: for each selected run, load, mask, estimate the noise, run every
method, write the outputs and their provenance; then a report per participant. A run that fails
is reported and the others go on; runs that already finished with the same options are skipped."""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..bids_io.derivatives import DerivativesDataset, MethodOutputs, RunOutputs
from ..choice import SideChoice, choose_sides
from ..bids_io.raw import MegreRun, find_runs, load_filters, load_mask, load_run, run_size
from ..config import Config
from ..errors import InputDataError, OutputError, RaiderError, ResourceError
from ..estimators import Estimates, Estimator, get_estimator, resolve_device
from ..estimators.base import ProgressCallbackFactory
from ..estimators.refinement import refine_ambiguous
from ..physics.cramer_rao import cramer_rao_sd
from ..physics.fat_spectrum import load_fat_spectrum
from ..physics.identifiability import assess
from ..physics.parameters import PARAMETERS, UNCERTAIN_PDFF_SD, UNCERTAIN_PDFF_SHARE
from ..physics.signal_model import Acquisition
from ..preprocessing.mask import AUTOMATIC_MASK, automatic_mask, provisional_tissue, usable_voxels
from ..preprocessing.noise import estimate_sigma
from ..provenance import ChoiceRecord, NoiseRecord, Provenance
from ..reports.pages import participant_report
from ..resources import (DEFAULT_WORKING_BYTES, MIN_WORKING_BYTES, format_bytes, resident_bytes, run_bytes,
                         set_working_memory)
from .recording import comparison_record, estimation_record, library_versions, parameters
from .reruns import ADD, REDO, REFUSE, SKIP, option_files, plan_run

log = logging.getLogger(__name__)

MIN_AUTOMATIC_SHARE = 0.01  # an automatic mask keeping less of the usable voxels: sigma or the data are wrong


@dataclass
class RunResult:
    run: MegreRun
    outputs: dict[str, Path]


@dataclass
class ParticipantResult:
    finished: list[RunResult]  # processed now
    skipped: list[MegreRun]  # finished before with the same options
    failed: dict[str, RaiderError]  # run name -> why, in name order

    @property
    def exit_code(self) -> int:
        """0, or the code of the first run that failed."""
        return next(iter(self.failed.values())).exit_code if self.failed else 0


def select_runs(config: Config) -> tuple[list[MegreRun], dict[str, RaiderError]]:
    return find_runs(config.bids_dir, list(config.participant_labels), list(config.session_labels),
                     load_filters(config.bids_filter_file), config.field_strength_t)


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
    dataset = DerivativesDataset(config.output_dir)
    dataset.prepare(config.bids_dir)
    # The files options name are the same for every run of the call: read and hashed once, before
    # any run (a change while the call works shows on the next rerun).
    options = option_files(config)
    log.info("%d run(s) selected: %s", len(runs), ", ".join(r.name for r in runs))
    result = ParticipantResult([], [], failed)
    for i, run in enumerate(runs, 1):
        previous = dataset.run_outputs(run)
        plan = plan_run(previous, config, options, run)
        step = f"[{i}/{len(runs)}] {run.name}"
        if plan.action == SKIP:
            log.info("%s: already finished with the same options (%s; %s); skipped", step,
                     ", ".join(previous.provenance.methods), previous.files["provenance"].name)
            result.skipped.append(run)
            continue
        if plan.action == REFUSE:
            error = OutputError(f"{previous.files['provenance']}: the finished outputs of {run.name} were "
                                f"{plan.reason}; they are kept: give --overwrite to replace them, or choose "
                                "another output directory")
            log.error("%s", error)
            result.failed[run.name] = error
            continue
        keep: frozenset[Path] = frozenset()
        if plan.action == REDO:
            log.log(logging.WARNING if previous.finished else logging.INFO, "%s: removing earlier outputs %s%s",
                    run.name, plan.reason, " (--overwrite)" if previous.finished else "")
            dataset.remove_run(run)
        elif plan.action == ADD:
            if strays := dataset.stray_files(previous):
                log.info("%s: removing %d file(s) left by an interrupted call", run.name, len(strays))
                dataset.remove(strays)
            keep = frozenset(dataset.run_files(run))
            log.info("%s: finished with %s; adding %s with the same options", run.name,
                     ", ".join(previous.provenance.methods), ", ".join(plan.methods))
        log.info("%s: %d echoes, TE %.2f-%.2f ms, %.3g T", step, len(run.echo_times_s), 1e3 * run.echo_times_s[0],
                 1e3 * run.echo_times_s[-1], run.field_strength_t)
        try:
            callback = progress(run.name) if progress else None
            acquisition = Acquisition(run.echo_times_s, run.field_strength_t, spectrum)
            result.finished.append(process_run(
                config, dataset, run, acquisition, options, [e for e in estimators if e.name in plan.methods],
                device, callback, previous if plan.action == ADD else None))
        except BaseException as exc:
            dataset.remove_run(run, keep=keep)  # whatever stops a run leaves none of the files it was writing
            if not isinstance(exc, Exception):  # interrupted (Ctrl-C, SIGTERM): said here, raised on
                log.error("%s: stopped; the outputs it was writing were removed%s", run.name,
                          " (its finished ones are kept)" if keep else "")
            error = _user_error(exc, run)
            log.error("%s", error)
            result.failed[run.name] = error
    result.failed = dict(sorted(result.failed.items()))
    write_participant_reports(config, dataset, sorted({r.run.subject for r in result.finished}
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


def write_participant_reports(config: Config, dataset: DerivativesDataset, subjects: list[str]) -> None:
    """sub-<label>.html for each subject, covering all its finished runs in the output dataset."""
    outputs = dataset.find_run_outputs()
    for subject in subjects:
        path = participant_report(dataset, subject, [r for r in outputs if r.subject == subject], config.bids_dir)
        log.info("report: %s", path)


def process_run(config: Config, dataset: DerivativesDataset, run: MegreRun, acquisition: Acquisition,
                options: dict, estimators: list[Estimator], device: torch.device, progress=None,
                previous: RunOutputs | None = None) -> RunResult:
    """Load, mask, estimate the noise, run every estimator (the first is the primary) and write;
    `options` is the state of the files options name (reruns.option_files), for the provenance.
    With `previous` (a finished run of the same options), the estimators' outputs are added to its
    own, on its mask and noise level."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if config.mem_bytes:
        _fit_memory(run, config.mem_bytes)
    inputs = run.input_state()  # before reading: a change while the run works shows on the next rerun
    data, reference = load_run(run, threads=torch.get_num_threads())
    timings["LoadSeconds"] = time.perf_counter() - t0
    if previous is None:
        mask, noise, mask_source, mask_details = _mask_and_noise(config, run, data, reference.affine, acquisition,
                                                                 timings)
    else:
        mask, noise, mask_source, mask_details = _finished_mask(previous, data.shape[:3])
    signals = data[mask].astype(np.float64)  # the estimators work in float64 (stored as float32)
    first_echo_snr = signals[:, 0] / noise.sigma
    log.info("%s: %d foreground voxels, sigma %.4g (%s)", run.name, signals.shape[0], noise.sigma, noise.method)
    identifiability = assess(acquisition, float(np.median(first_echo_snr)))
    if identifiability.flagged:
        log.warning("%s: the water/fat separation is unreliable with this protocol: %s %s", run.name,
                    identifiability.reason, identifiability.advice)

    results: dict[str, Estimates] = {}
    records = {}
    method_outputs = []
    voxel_size = tuple(float(z) for z in reference.header.get_zooms()[:3])
    for estimator in estimators:
        t = time.perf_counter()
        estimates = estimator.fit(signals, acquisition, noise.sigma, seed=config.random_seed, device=device,
                                  progress=progress)
        seconds = time.perf_counter() - t
        timings["EstimationSeconds"] = timings.get("EstimationSeconds", 0.0) + seconds
        if config.refine == "ambiguous" and estimates.training is not None and set(estimates.candidates) == {
                "water", "fat"}:
            t = time.perf_counter()
            estimates = refine_ambiguous(estimates, signals, acquisition, noise.sigma, device)
            timings["RefinementSeconds"] = timings.get("RefinementSeconds", 0.0) + time.perf_counter() - t
            refinement = estimates.details["Refinement"]
            log.info("%s: %s: %.1f%% of voxels refined to their sides' maximum likelihood (|LLR| < %g nats, or "
                     "the losing candidate within reach of the winner: %.1f%%), %.1f%% changed side", run.name,
                     estimator.name, 100 * refinement["RefinedShare"], refinement["BelowNats"],
                     100 * refinement["LosingSideShare"], 100 * refinement["ChangedSideShare"])
        t = time.perf_counter()
        estimates, sides = _choose_sides(config.choice, estimates, mask, voxel_size, signals, acquisition,
                                         noise.sigma)
        timings["ChoiceSeconds"] = timings.get("ChoiceSeconds", 0.0) + time.perf_counter() - t
        t = time.perf_counter()
        sd = cramer_rao_sd(acquisition, estimates.s0, estimates.pdff, estimates.r2star_s, noise.sigma)
        timings["UncertaintySeconds"] = timings.get("UncertaintySeconds", 0.0) + time.perf_counter() - t
        _warn_uncertain_pdff(run.name, estimator.name, sd["pdff"], estimates.r2star_s, first_echo_snr)
        results[estimator.name] = estimates
        records[estimator.name] = estimation_record(estimator, estimates, seconds)
        if sides is not None:
            records[estimator.name].choice = ChoiceRecord(sides.mode, sides.ambiguous_share, sides.changed_share,
                                                          sides.details, round(sides.expected_wrong_share, 6))
            log.info("%s: %s: %.1f%% of voxels ambiguous (|LLR| < 1 nat)%s, about %.1f%% expected on the wrong "
                     "side", run.name, estimator.name, 100 * sides.ambiguous_share,
                     f", {100 * sides.changed_share:.1f}% changed side by the spatial choice"
                     if sides.mode == "spatial" else "", 100 * sides.expected_wrong_share)
        log.info("%s: %s: %.1f%% of voxels on the fat-dominant side (PDFF >= 0.58)", run.name, estimator.name,
                 100 * estimates.chose_fat.mean())
        method_outputs.append(_method_outputs(estimator, estimates, sides, sd))

    t = time.perf_counter()
    threads = torch.get_num_threads()
    if previous is None:
        outputs = dataset.write_run(run, reference, mask, mask_source, method_outputs, config.write_candidates,
                                    threads=threads)
    else:
        outputs = dataset.add_methods(previous, run, reference, mask, method_outputs, threads=threads)
    timings["WriteSeconds"] = time.perf_counter() - t
    estimated = {name: parameters(e) for name, e in results.items()}
    if previous is None:
        provenance = Provenance(
            software=library_versions(), command_line=list(config.command_line) or sys.argv,
            configuration=config.to_dict(), random_seed=config.random_seed, device=str(device),
            torch_threads=threads, inputs=[f"bids:raw:{f}" for f in run.relative_files()],
            input_files=inputs, option_files=options, echo_times_s=list(run.echo_times_s),
            field_strength_t=run.field_strength_t, fat_spectrum=acquisition.fat_spectrum.to_dict(), noise=noise,
            mask_source=mask_source, mask_voxels=int(mask.sum()), mask_details=mask_details, methods=records,
            comparison=comparison_record(estimated), timings=timings,
            outputs={k: v.name for k, v in outputs.items()}, identifiability=identifiability)
    else:
        added_by = {"CommandLine": list(config.command_line) or sys.argv, "Software": library_versions(),
                    "Device": str(device), "TorchThreads": threads, "Timings": timings}
        for record in records.values():
            record.added_by = added_by
        recorded = previous.read_parameters(mask)
        methods = previous.provenance.methods | records
        provenance = dataclasses.replace(
            previous.provenance, configuration=previous.provenance.configuration | {"methods": list(methods)},
            methods=methods, comparison=comparison_record(recorded | estimated),
            outputs=previous.provenance.outputs | {k: v.name for k, v in outputs.items()})
        outputs = previous.listed | outputs
    outputs["provenance"] = dataset.write_provenance(run, provenance)
    log.info("%s: maps written to %s", run.name, outputs["PDFFmap"].parent)
    return RunResult(run, outputs)


def _mask_and_noise(config: Config, run: MegreRun, data: np.ndarray, affine: np.ndarray,
                    acquisition: Acquisition, timings: dict[str, float]) -> tuple[np.ndarray, NoiseRecord, str, dict]:
    """The foreground mask (the user's, or the automatic one), the noise level, the mask's source
    and the automatic mask's details; their seconds are added to `timings`."""
    t = time.perf_counter()
    # NaN/Inf voxels and voxels zero at every echo cannot be fitted, whatever the user's mask says.
    usable = usable_voxels(data)
    mask_details: dict = {}
    if config.mask_file:
        mask = load_mask(config.mask_file, data.shape[:3], affine, run.echo_files[0].name) & usable
        mask_source = f"user: {config.mask_file}"
    # The most the mask can hold: the user's, or every usable voxel.
    if (candidates := int((mask if config.mask_file else usable).sum())) < 10:
        raise InputDataError(f"{run.echo_files[0]}: only {candidates} voxels in the foreground mask")
    timings["MaskSeconds"] = time.perf_counter() - t

    t = time.perf_counter()
    if config.sigma is not None:
        noise = NoiseRecord(config.sigma, "user (--sigma)")
    else:
        # The automatic mask tests each voxel against the noise, so sigma comes first: from the
        # user's mask, or from a provisional tissue sample (Otsu's upper class).
        sample = mask if config.mask_file else provisional_tissue(data, usable)
        try:
            noise = estimate_sigma(data[sample].astype(np.float64), acquisition,
                                   np.random.default_rng(config.random_seed))
        except InputDataError as exc:  # name the run: the estimate itself knows only its voxels
            raise InputDataError(f"{run.echo_files[0].parent}: run {run.name}: {exc}") from None
    timings["NoiseSeconds"] = time.perf_counter() - t

    if not config.mask_file:
        t = time.perf_counter()
        mask, mask_details = automatic_mask(data, noise.sigma, usable)
        mask_source = AUTOMATIC_MASK
        n_usable, n_kept = mask_details["UsableVoxels"], int(mask.sum())
        log.info("%s: automatic mask: %d of %d usable voxels above the noise (sigma %.4g)", run.name, n_kept,
                 n_usable, noise.sigma)
        if n_kept < max(10, MIN_AUTOMATIC_SHARE * n_usable):
            raise InputDataError(f"{run.echo_files[0]}: only {n_kept} of {n_usable} voxels stand above the noise "
                                 f"(sigma {noise.sigma:.4g}): give --sigma or --mask")
        timings["MaskSeconds"] += time.perf_counter() - t
    return mask, noise, mask_source, mask_details


def _finished_mask(previous: RunOutputs, shape: tuple[int, ...]) -> tuple[np.ndarray, NoiseRecord, str, dict]:
    """A finished run's mask, noise level, mask source and details, for the methods added to it."""
    mask = previous.read_mask()
    if mask.shape != shape:
        raise InputDataError(f"{previous.files['mask']}: the finished run's mask has shape {mask.shape}, its "
                             f"images {shape}")
    provenance = previous.provenance
    return mask, provenance.noise, provenance.mask_source, provenance.mask_details


def _warn_uncertain_pdff(run_name: str, method: str, pdff_sd: np.ndarray, r2star_s: np.ndarray,
                         first_echo_snr: np.ndarray) -> None:
    """One WARNING where the data determine PDFF poorly in much of the mask (Cramer-Rao SD above
    UNCERTAIN_PDFF_SD), saying what those voxels are like: low signal, or high R2* (iron) that
    leaves only the first echoes."""
    uncertain = pdff_sd > UNCERTAIN_PDFF_SD
    share = float(uncertain.mean())
    if share > UNCERTAIN_PDFF_SHARE:
        log.warning("%s: %s: PDFF is poorly determined in %.1f%% of the mask (Cramer-Rao standard deviation "
                    "above %g; there the median first-echo SNR is %.0f and the median R2* %.0f 1/s): see the "
                    "PDFFsdmap before reading PDFF there", run_name, method, 100 * share, UNCERTAIN_PDFF_SD,
                    float(np.median(first_echo_snr[uncertain])), float(np.median(r2star_s[uncertain])))


def _choose_sides(mode: str, estimates: Estimates, mask: np.ndarray, voxel_size_mm: tuple[float, ...],
                  signals: np.ndarray, acquisition: Acquisition, sigma: float) -> tuple[Estimates, SideChoice | None]:
    """Each voxel's side by `mode` (config.CHOICES) where the method has two candidates; the
    estimators themselves choose per voxel."""
    if set(estimates.candidates) != {"water", "fat"}:
        return estimates, None
    sides = choose_sides(mode, estimates.candidates["water"], estimates.candidates["fat"], mask, voxel_size_mm,
                         signals, sigma, acquisition, threads=torch.get_num_threads())  # --nprocs
    return (estimates.with_sides(sides.chose_fat) if sides.changed_share else estimates), sides


def _method_outputs(estimator: Estimator, estimates: Estimates, sides: SideChoice | None,
                    sd: dict[str, np.ndarray]) -> MethodOutputs:
    maps = {p.suffix: getattr(estimates, p.key) for p in PARAMETERS}
    if estimates.log_likelihood_ratio is not None:
        maps["LLRmap"] = estimates.log_likelihood_ratio
    if sides is not None:
        maps["SideProbmap"] = sides.side_probability
    maps["PDFFsdmap"], maps["R2starsdmap"] = sd["pdff"], sd["r2star_s"]
    candidates = {kind: {p.suffix: c[p.key] for p in PARAMETERS} for kind, c in estimates.candidates.items()}
    return MethodOutputs(estimator.method, maps, candidates, estimates.weights)


def _fit_memory(run: MegreRun, limit: int) -> None:
    """Refuse a run whose whole-image arrays cannot fit in `limit` bytes; size the chunks of the
    computations to what is left."""
    base, images = resident_bytes(), run_bytes(run_size(run))
    if base + images + MIN_WORKING_BYTES > limit:
        raise ResourceError(f"{run.echo_files[0].parent}: run {run.name} needs about "
                            f"{format_bytes(base + images + MIN_WORKING_BYTES)} ({format_bytes(base)} for the "
                            f"program, {format_bytes(images)} for the images), more than --mem "
                            f"{format_bytes(limit)}")
    set_working_memory(min(DEFAULT_WORKING_BYTES, limit - base - images))
