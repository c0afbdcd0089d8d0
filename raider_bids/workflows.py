"""Participant-level orchestration: for each selected run, mask, noise, estimate, write."""

from __future__ import annotations

import logging
import platform
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import __version__
from .bids_io import MegreRun, find_runs, load_filters, load_mask, load_run
from .config import Config
from .derivatives import (map_sidecar, output_path, prepare_output_dataset, write_json, write_nifti,
                          write_torch)
from .errors import InputDataError, UsageError
from .estimators import ProgressCallbackFactory, get_estimator
from .fat_spectrum import load_fat_spectrum
from .mask import foreground_mask
from .noise import estimate_sigma
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


def select_runs(config: Config) -> list[MegreRun]:
    return find_runs(config.bids_dir, list(config.participant_labels), list(config.session_labels),
                     load_filters(config.bids_filter_file), config.field_strength_t)


def participant(config: Config, progress: ProgressCallbackFactory | None = None) -> list[RunResult]:
    """Process every selected run; returns where each run's outputs went."""
    runs = select_runs(config)
    spectrum = load_fat_spectrum(config.fat_spectrum)
    device = resolve_device(config.device)
    estimator = get_estimator(config.method, config.training)
    prepare_output_dataset(config.output_dir, config.bids_dir)
    log.info("%d run(s) selected: %s", len(runs), ", ".join(r.name for r in runs))
    results = []
    for i, run in enumerate(runs, 1):
        log.info("[%d/%d] %s: %d echoes, TE %.2f-%.2f ms, %.3g T", i, len(runs), run.name,
                 len(run.echo_times_s), 1e3 * run.echo_times_s[0], 1e3 * run.echo_times_s[-1],
                 run.field_strength_t)
        callback = progress(run.name) if progress else None
        results.append(process_run(config, run, Acquisition(run.echo_times_s, run.field_strength_t, spectrum),
                                   estimator, device, callback))
    return results


def process_run(config: Config, run: MegreRun, acquisition: Acquisition, estimator, device: torch.device,
                progress=None) -> RunResult:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    data, reference = load_run(run)
    timings["LoadSeconds"] = time.perf_counter() - t0

    t = time.perf_counter()
    if config.mask_file:
        # Voxels that are zero at every echo carry no information (and cannot be normalised).
        mask = load_mask(config.mask_file, data.shape[:3]) & (data.max(axis=-1) > 0)
        mask_source = f"user: {config.mask_file}"
    else:
        mask = foreground_mask(data)
        mask_source = "automatic (Otsu threshold on the log of the echo-mean magnitude, opening, specks removed)"
    if mask.sum() < 10:
        raise InputDataError(f"{run.echo_files[0]}: only {int(mask.sum())} voxels in the foreground mask")
    signals = data[mask]
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

    t = time.perf_counter()
    estimates = estimator.fit(signals, acquisition, sigma, seed=config.random_seed, device=device,
                              progress=progress)
    timings["EstimationSeconds"] = time.perf_counter() - t
    log.info("%s: %.1f%% of voxels on the fat-dominant side (PDFF >= 0.58)", run.name, 100 * estimates.chose_fat.mean())

    outputs = write_outputs(config, run, acquisition, reference, mask, estimates, estimator, noise,
                            mask_source, device, timings)
    log.info("%s: maps written to %s", run.name, outputs["PDFFmap"].parent)
    return RunResult(run, outputs)


def write_outputs(config: Config, run: MegreRun, acquisition: Acquisition, reference, mask, estimates,
                  estimator, noise: dict, mask_source: str, device: torch.device,
                  timings: dict[str, float]) -> dict[str, Path]:
    t = time.perf_counter()
    out = config.output_dir
    outputs: dict[str, Path] = {}
    volumes = {("PDFFmap", None): estimates.pdff, ("R2starmap", None): estimates.r2star_s,
               ("S0map", None): estimates.s0}
    if estimates.log_likelihood_ratio is not None:
        volumes[("LLRmap", None)] = estimates.log_likelihood_ratio
    if config.write_candidates:
        for kind, candidate in estimates.candidates.items():
            volumes |= {("PDFFmap", kind): candidate["pdff"], ("R2starmap", kind): candidate["r2star_s"],
                        ("S0map", kind): candidate["s0"]}
    for (suffix, desc), values in volumes.items():
        volume = np.zeros(mask.shape, dtype=np.float32)
        volume[mask] = values
        path = output_path(out, run, suffix, desc=desc)
        write_nifti(path, volume, reference)
        write_json(path.with_name(path.name.replace(".nii.gz", ".json")),
                   map_sidecar(run, suffix, estimator.description, estimator.reference, desc))
        outputs[suffix if desc is None else f"{suffix}-{desc}"] = path
    mask_path = output_path(out, run, "mask", desc="foreground")
    write_nifti(mask_path, mask, reference, dtype=np.uint8)
    write_json(mask_path.with_name(mask_path.name.replace(".nii.gz", ".json")),
               {"Description": f"Foreground mask, {mask_source}",
                "Sources": [f"bids:raw:{f}" for f in run.relative_files()], "SkullStripped": False})
    outputs["mask"] = mask_path
    for kind, weights in estimates.weights.items():
        path = output_path(out, run, "weights", desc=kind, ext=".pt")
        write_torch(path, weights)
        outputs[f"weights-{kind}"] = path
    timings["WriteSeconds"] = time.perf_counter() - t
    provenance = {
        "Software": library_versions(),
        "CommandLine": list(config.command_line) or sys.argv,
        "Configuration": config.to_dict(),
        "RandomSeed": config.random_seed,
        "Device": str(device),
        "TorchThreads": torch.get_num_threads(),
        "Inputs": [f"bids:raw:{f}" for f in run.relative_files()],
        "EchoTime": list(run.echo_times_s),
        "MagneticFieldStrength": run.field_strength_t,
        "FatSpectrum": acquisition.fat_spectrum.to_dict(),
        "Noise": noise,
        "Mask": {"Source": mask_source, "Voxels": int(mask.sum())},
        "Estimation": estimates.provenance,
        "Timings": {k: round(v, 3) for k, v in timings.items()},
        "Outputs": {k: v.name for k, v in outputs.items()},
    }
    path = output_path(out, run, "provenance", ext=".json")
    write_json(path, provenance)
    outputs["provenance"] = path
    return outputs
