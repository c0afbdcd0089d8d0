"""The command line's parser and its checks: the options, their validators, and the frozen
Config they make. Torch-free, so that --help and --version answer at once."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Sequence

from .. import __version__
from ..bids_io.raw import check_labels
from ..config import CHOICES, DEFAULT_TRAINING, DEVICES, METHODS, TRAINING_PRESETS, Config
from ..errors import UnknownLevelError, UsageError
from ..physics.fat_spectrum import PRESETS
from ..resources import parse_memory

ANALYSIS_LEVELS = ("participant", "group")
_DEFAULTS = Config(Path("."), Path("."))


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors with the BIDS-Apps exit code 64 instead of 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(UsageError.exit_code, f"{self.prog}: error: {message}\n")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be positive")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def _fraction(text: str) -> float:
    value = _positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"{text} must be between 0 and 1")
    return value


def _memory(text: str) -> int:
    try:
        return parse_memory(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    return path


def _existing_dir(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: no such directory")
    return path


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="raider-bids",
        description="PDFF, R2* and S0 maps from magnitude multi-echo gradient-echo (MEGRE) BIDS data, "
                    "with the dual self-supervised networks of Minore et al. (2025). Exit codes follow the "
                    "BIDS-Apps execution spec: 0 ok, 1 failure, 17 unknown analysis level, 18 no files "
                    "selected, 64 usage error, 65 bad input data, 66 missing input, 73 cannot write output.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("bids_dir", type=Path, help="root of the raw BIDS dataset (read only)")
    p.add_argument("output_dir", type=Path, help="where the BIDS-Derivatives dataset is written")
    p.add_argument("analysis_level", help="participant: maps and a report per participant; group: ROI "
                                          "statistics of the participant-level outputs and a group report")
    p.add_argument("--version", action="version", version=f"raider-bids {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="more log detail (-v: every training epoch)")
    p.add_argument("-w", "--work-dir", type=Path, help="scratch directory (kept; a run log is written there)")

    sel = p.add_argument_group("selecting data")
    sel.add_argument("--participant-label", "--participant_label", nargs="+", dest="participant_label",
                     metavar="LABEL", help="participants to process (with or without 'sub-'); default all")
    sel.add_argument("--session-label", "--session_label", nargs="+", dest="session_label", metavar="LABEL",
                     help="sessions to process (with or without 'ses-'); default all")
    sel.add_argument("--bids-filter-file", type=_existing_file, metavar="FILE",
                     help='JSON {"megre": {"<entity>": value}} narrowing the MEGRE query '
                          '(null = entity absent, "*" = any value)')

    grp = p.add_argument_group("group level")
    grp.add_argument("--roi-dataset", nargs="+", action="extend", type=_existing_dir, metavar="DIR",
                     help="BIDS derivative dataset(s) with *_label-<name>_mask and/or *_dseg (+ .tsv lookup) "
                          "images on the MEGRE grid; default ROI: the participant-level foreground mask")

    phys = p.add_argument_group("signal model")
    phys.add_argument("--field-strength", type=_positive_float, metavar="TESLA",
                      help="magnetic field strength; overrides MagneticFieldStrength in the sidecars")
    phys.add_argument("--fat-spectrum", default=_DEFAULTS.fat_spectrum, metavar="NAME|FILE",
                      help=f"fat spectrum: a preset ({', '.join(sorted(PRESETS))}) or a JSON file "
                           '{"ppm": [...], "amplitudes": [...]}')
    phys.add_argument("--sigma", type=_positive_float,
                      help="noise level (std of each complex channel, image units); default: estimated "
                           "from the residuals of a least-squares fit")
    phys.add_argument("--mask", type=_existing_file, metavar="FILE",
                      help="foreground mask (NIfTI, nonzero = in) used for every selected run instead "
                           "of the automatic one")

    est = p.add_argument_group("estimation")
    est.add_argument("--method", nargs="+", choices=sorted(METHODS), default=list(_DEFAULTS.methods),
                     metavar="METHOD",
                     help="estimator(s): " + "; ".join(f"{m.name} = {m.summary}" for m in METHODS.values())
                          + ". Several (e.g. --method ssl fit supervised): each method's maps are written "
                          "as desc-<method> variants, the first's also under the plain names, and the report "
                          "compares the others with the first")
    est.add_argument("--choice", choices=CHOICES, default=_DEFAULTS.choice,
                     help="how each voxel's water- or fat-dominant candidate is chosen: spatial = a graph cut "
                          "that weighs each voxel's likelihoods against its neighbours' PDFF (real tissue is "
                          "piecewise smooth); voxel = the paper's per-voxel likelihood choice")
    est.add_argument("--write-candidates", action="store_true",
                     help="also write the water and fat candidates' maps (desc-water, desc-fat) of the "
                          "(first) method")
    fast, paper = TRAINING_PRESETS["fast"], TRAINING_PRESETS["paper"]
    est.add_argument("--training", choices=sorted(TRAINING_PRESETS), default=DEFAULT_TRAINING,
                     help=f"network training: paper = the paper's settings (batch {paper.batch_size}, learning "
                          f"rate {paper.learning_rate:g}, an epoch = one pass over the voxels); fast = batch "
                          f"{fast.batch_size}, learning rate {fast.learning_rate:g}, an epoch = "
                          f"{fast.steps_per_epoch} random mini-batches, validation on at most "
                          f"{fast.max_validation_voxels} voxels. The options below override either")
    est.add_argument("--learning-rate", type=_positive_float)
    est.add_argument("--batch-size", type=_positive_int)
    est.add_argument("--patience", type=_positive_int,
                     help="epochs without a better validation loss before training stops")
    est.add_argument("--max-epochs", type=_positive_int)
    est.add_argument("--validation-fraction", type=_fraction,
                     help="share of foreground voxels held out for early stopping")
    est.add_argument("--random-seed", type=int, default=_DEFAULTS.random_seed,
                     help="seed of weights, split and shuffling: the same seed on CPU gives identical maps")

    res = p.add_argument_group("resources")
    res.add_argument("--device", choices=DEVICES, default=_DEFAULTS.device,
                     help="auto = cuda when available; CPU and GPU results differ slightly")
    res.add_argument("--nprocs", "--nthreads", type=_positive_int, dest="nprocs",
                     help="most CPU threads torch uses; default: the CPUs available to this process (affinity, "
                          "cgroup quota); training steps use this many or one, whichever a probe finds faster")
    res.add_argument("--mem", type=_memory, metavar="SIZE",
                     help="memory this process may use, with a unit (e.g. 8GB, 500MB; a bare number is refused "
                          "because fMRIPrep reads it as MB and MRIQC as GB): chunks are sized to fit, and a run "
                          "whose images cannot fit fails with a clear error (exit 1) instead of an OOM kill")
    return p


def _check_paths(bids_dir: Path, output_dir: Path, work_dir: Path | None) -> None:
    raw = bids_dir.resolve()
    for label, path in (("output_dir", output_dir), ("--work-dir", work_dir)):
        if path is None:
            continue
        resolved = path.resolve()
        if resolved == raw:
            raise UsageError(f"{label} {path} is the BIDS directory; the input dataset is never written to")
        if raw in resolved.parents and (raw / "derivatives") not in resolved.parents:
            raise UsageError(f"{label} {path} is inside the BIDS dataset; use a directory outside it or "
                             f"under {raw / 'derivatives'}")


def config_from_args(args: argparse.Namespace, argv: Sequence[str]) -> Config:
    if args.analysis_level not in ANALYSIS_LEVELS:
        raise UnknownLevelError(f"analysis level {args.analysis_level!r} is unknown; "
                                f"expected one of: {', '.join(ANALYSIS_LEVELS)}")
    _check_paths(args.bids_dir, args.output_dir, args.work_dir)
    check_labels("--participant-label", args.participant_label or [], "sub-")
    check_labels("--session-label", args.session_label or [], "ses-")
    overrides = {k: getattr(args, k) for k in ("learning_rate", "batch_size", "patience", "max_epochs",
                                               "validation_fraction") if getattr(args, k) is not None}
    training = dataclasses.replace(TRAINING_PRESETS[args.training], **overrides)
    return Config(
        bids_dir=args.bids_dir.resolve(), output_dir=args.output_dir.resolve(),
        analysis_level=args.analysis_level,
        work_dir=args.work_dir.resolve() if args.work_dir else None,
        participant_labels=tuple(args.participant_label or ()),
        session_labels=tuple(args.session_label or ()),
        bids_filter_file=args.bids_filter_file, field_strength_t=args.field_strength,
        fat_spectrum=args.fat_spectrum, sigma=args.sigma, mask_file=args.mask,
        methods=tuple(dict.fromkeys(args.method)), choice=args.choice,
        roi_datasets=tuple(p.resolve() for p in args.roi_dataset or ()),
        write_candidates=args.write_candidates,
        training=training, random_seed=args.random_seed, device=args.device, nprocs=args.nprocs, mem_bytes=args.mem,
        command_line=("raider-bids", *argv))
