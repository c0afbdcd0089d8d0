"""The command line's parser and its checks: the options, their validators, and the frozen
Config they make. It imports neither torch nor pybids, nibabel or numpy (the label check's module
is imported only when a Config is made), so that --help and --version answer at once
(tests/test_help.py)."""

from __future__ import annotations

import argparse
import dataclasses
import math
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Sequence

from .. import __version__
from ..config import CHOICES, DEFAULT_TRAINING, DEVICES, METHODS, REFINEMENTS, TRAINING_PRESETS, Config
from ..errors import UnknownLevelError, UsageError
from ..physics.fat_spectrum import PRESETS
from ..physics.parameters import MAX_FIELD_STRENGTH_T
from ..resources import DEFAULT_WORKING_BYTES, format_bytes, parse_memory

ANALYSIS_LEVELS = ("participant", "group")
_DEFAULTS = Config(Path("."), Path("."))


class _HelpFormatter(argparse.HelpFormatter):
    """Help as in fMRIPrep and MRIQC: every default written into the option's own help (nothing is
    appended, so no "(default: None)"), lines wrapped to the terminal (at most 100 columns) and never
    inside an option's name, and in the description and epilog, indented lines (the examples) kept
    as they are while the other paragraphs are wrapped."""

    def __init__(self, prog: str) -> None:
        width = min(shutil.get_terminal_size().columns - 2, 100)
        super().__init__(prog, width=max(width, 60))

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False, break_long_words=False)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        lines: list[str] = []
        paragraph: list[str] = []

        def flush() -> None:
            if paragraph:
                lines.extend(textwrap.wrap(" ".join(paragraph), width, initial_indent=indent,
                                           subsequent_indent=indent, break_on_hyphens=False,
                                           break_long_words=False))
                paragraph.clear()

        for line in text.splitlines():
            if not line.strip() or line[0].isspace() or line.endswith(":"):  # blank, indented or a heading
                flush()
                lines.append(indent + line.rstrip() if line.strip() else "")
            else:
                paragraph.append(line.strip())
        flush()
        return "\n".join(lines)


def _presets_say(field: str, show=str) -> str:
    """What the training presets set `field` to, for a help text: "10 in both presets", or each
    preset's value, the default preset first ("fast: 1024, paper: 128")."""
    names = [DEFAULT_TRAINING, *sorted(set(TRAINING_PRESETS) - {DEFAULT_TRAINING})]
    values = [getattr(TRAINING_PRESETS[name], field) for name in names]
    if len(set(values)) == 1:
        return f"{show(values[0])} in {'both' if len(names) == 2 else 'all'} presets"
    return ", ".join(f"{name}: {show(value)}" for name, value in zip(names, values))


def _examples() -> str:
    """The epilog: typical calls, and the exit codes."""
    defaults = f"--method {' '.join(_DEFAULTS.methods)}, --training {DEFAULT_TRAINING}, --choice {_DEFAULTS.choice}"
    examples = [
        (f"Every participant, with the defaults ({defaults}):",
         ["raider-bids /data/bids /data/derivatives/raider-bids participant"]),
        ("Two participants, the self-supervised networks compared with the conventional fit:",
         ["raider-bids /data/bids /data/out participant --participant-label 01 02 \\",
          "    --method ssl fit"]),
        ("The group level, once the participant level is done, with ROIs from a derivative dataset:",
         ["raider-bids /data/bids /data/out group --roi-dataset /data/derivatives/rois"]),
        ("In a container or a SLURM job: the job's CPUs and memory, and a work directory for the "
         "scratch files and the log:",
         ["raider-bids /bids /out participant --participant-label 01 \\",
          '    --nprocs "$SLURM_CPUS_PER_TASK" --mem 8GB -w /work/sub-01']),
    ]
    lines = ["examples:"]
    for heading, command in examples:
        lines += [*textwrap.wrap(heading, 76, initial_indent="  ", subsequent_indent="  "),
                  *("    " + line for line in command), ""]
    lines += ["exit codes (BIDS-Apps):",
              *textwrap.wrap("0 ok, 1 failure, 17 unknown analysis level, 18 no files selected, 64 usage error, "
                             "65 bad input data, 66 missing input, 73 cannot write the output", 76,
                             initial_indent="  ", subsequent_indent="  ")]
    return "\n".join(lines)


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
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text} must be a positive finite number")
    return value


def _field_strength(text: str) -> float:
    value = _positive_float(text)
    if value > MAX_FIELD_STRENGTH_T:
        raise argparse.ArgumentTypeError(f"{text} T is above any MRI scanner's field ({MAX_FIELD_STRENGTH_T:g} T); "
                                         "give tesla")
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
    fast, paper = TRAINING_PRESETS["fast"], TRAINING_PRESETS["paper"]
    p = _Parser(
        prog="raider-bids",
        usage=f"%(prog)s bids_dir output_dir {{{','.join(ANALYSIS_LEVELS)}}} [options]",
        description="PDFF, R2* and S0 maps from magnitude multi-echo gradient-echo (MEGRE) BIDS data, with "
                    "the dual self-supervised networks of Minore et al. (2025) or the other estimators of "
                    "--method. The participant level writes a BIDS-Derivatives dataset (maps, sidecars, one "
                    "HTML report per participant); the group level adds ROI statistics and a group report.",
        epilog=_examples(), formatter_class=_HelpFormatter)
    p.add_argument("bids_dir", type=Path,
                   help="root of the raw BIDS dataset; read only, nothing is ever written there")
    p.add_argument("output_dir", type=Path,
                   help="the BIDS-Derivatives dataset to write (created if missing); outside bids_dir or "
                        "under bids_dir/derivatives/")
    p.add_argument("analysis_level",
                   help="participant: maps and a report per participant; group: ROI statistics of the "
                        "participant-level outputs and a group report")
    p.add_argument("--version", action="version", version=f"raider-bids {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="more log detail; -v also logs every training epoch (default: information "
                        "messages, and a progress bar on a terminal or every 10th epoch otherwise)")

    sel = p.add_argument_group("selecting data")
    sel.add_argument("--participant-label", "--participant_label", nargs="+", dest="participant_label",
                     metavar="LABEL",
                     help="participants to process, with or without 'sub-', separated by spaces "
                          "(default: every participant of bids_dir)")
    sel.add_argument("--session-label", "--session_label", nargs="+", dest="session_label", metavar="LABEL",
                     help="sessions to process, with or without 'ses-', separated by spaces "
                          "(default: every session)")
    sel.add_argument("--bids-filter-file", type=_existing_file, metavar="FILE",
                     help='JSON {"megre": {"<entity>": value}} narrowing the query for MEGRE images '
                          '(null = entity absent, "*" = any value) (default: every magnitude MEGRE run '
                          "of the selected participants and sessions)")

    phys = p.add_argument_group("signal model")
    phys.add_argument("--field-strength", type=_field_strength, metavar="TESLA",
                      help="magnetic field strength, for the fat frequencies (default: MagneticFieldStrength "
                           "of the sidecars; a run without it is refused)")
    phys.add_argument("--fat-spectrum", default=_DEFAULTS.fat_spectrum, metavar="NAME|FILE",
                      help=f"fat spectrum: a preset ({', '.join(sorted(PRESETS))}) or a JSON file "
                           '{"ppm": [...], "amplitudes": [...]} '
                           f"(default: {_DEFAULTS.fat_spectrum})")
    phys.add_argument("--sigma", type=_positive_float,
                      help="noise level (standard deviation of each complex channel, in image units) "
                           "(default: estimated per run from the residuals of a least-squares fit)")
    phys.add_argument("--mask", type=_existing_file, metavar="FILE",
                      help="foreground mask (NIfTI on the MEGRE grid, nonzero = in) used for every selected "
                           "run (default: an automatic mask per run, the voxels whose echoes hold signal "
                           "clearly above the noise floor)")

    est = p.add_argument_group("estimation")
    est.add_argument("--method", nargs="+", choices=sorted(METHODS), default=list(_DEFAULTS.methods),
                     metavar="METHOD",
                     help="estimator(s): " + "; ".join(f"{m.name} = {m.summary}" for m in METHODS.values())
                          + ". Several (e.g. --method ssl fit supervised): each method's maps are written "
                          "as desc-<method> variants, the first's also under the plain names, and the report "
                          f"compares the others with the first (default: {' '.join(_DEFAULTS.methods)})")
    est.add_argument("--choice", choices=CHOICES, default=_DEFAULTS.choice,
                     help="how each voxel's water- or fat-dominant candidate is chosen: spatial = a graph cut "
                          "that weighs each voxel's likelihoods against its neighbours' PDFF (real tissue is "
                          "piecewise smooth); voxel = the paper's per-voxel likelihood choice "
                          f"(default: {_DEFAULTS.choice})")
    est.add_argument("--refine", choices=REFINEMENTS, default=_DEFAULTS.refine,
                     help="for the trained methods (ssl, supervised): ambiguous = where a voxel's water and fat "
                          "candidates are within a few nats of each other, or the losing one is far enough above "
                          "its side's maximum that it might win, take each to its side's maximum "
                          "likelihood by the fit's Levenberg-Marquardt steps from the network's estimate, so that "
                          "the data and not the networks' approximation error decide the side; none = the "
                          f"networks' own candidates, as in the paper (default: {_DEFAULTS.refine})")

    def rate(value: float) -> str:
        return f"{value:g}"

    def annealed(settings) -> str:
        if settings.final_lr_fraction is None or settings.steps_per_epoch is None:
            return "constant"
        return f"annealed along a half cosine to {settings.final_lr_fraction:.0%}%"  # %% for argparse

    def epoch(settings) -> str:
        if settings.steps_per_epoch is None:
            return "an epoch = one pass over the training voxels"
        return f"an epoch = {settings.steps_per_epoch} random mini-batches"

    def weighting(settings) -> str:
        if settings.nll_snr_power is None:
            return "every voxel's NLL counts alike"
        return f"each voxel's NLL weighted by SNR^-{settings.nll_snr_power:g}"

    def budget(settings) -> str:
        if settings.budget_passes is None:
            return ""
        power = ("" if settings.budget_lr_power is None else
                 f", the learning rate times ({settings.max_epochs} / the run's epochs)^{settings.budget_lr_power:g}")
        return (f"; fast: fewer for fewer voxels, enough to draw each training voxel {settings.budget_passes:g} "
                f"times, at least {settings.min_epochs}{power}")

    def validation(settings) -> str:
        if settings.max_validation_voxels is None:
            return "validation on every held-out voxel"
        return f"validation on at most {settings.max_validation_voxels} voxels"

    trained = ", ".join(m.name for m in METHODS.values() if m.networks)
    train = p.add_argument_group(
        "network training", f"For the methods that train networks ({trained}). Each network stops after "
                            "--patience epochs without a better validation loss and keeps its best weights. "
                            "--learning-rate, --batch-size, --patience, --max-epochs and --validation-fraction "
                            "override the value of the chosen --training preset.")
    train.add_argument("--training", choices=sorted(TRAINING_PRESETS), default=DEFAULT_TRAINING,
                       help=f"preset: paper = the paper's settings (batch {paper.batch_size}, learning rate "
                            f"{rate(paper.learning_rate)} {annealed(paper)}, {epoch(paper)}, at most "
                            f"{paper.max_epochs} epochs, {validation(paper)}, {weighting(paper)}); fast = batch "
                            f"{fast.batch_size}, learning rate {rate(fast.learning_rate)} {annealed(fast)}, "
                            f"{epoch(fast)}, at most {fast.max_epochs} epochs, {validation(fast)}, "
                            f"{weighting(fast)} (default: {DEFAULT_TRAINING})")
    train.add_argument("--learning-rate", type=_positive_float, metavar="RATE",
                       help="Adam's learning rate (its start where the preset anneals it; fast scales it up "
                            "for short budgets, see --max-epochs); given, it is used as given "
                            f"(default: {_presets_say('learning_rate', rate)})")
    train.add_argument("--batch-size", type=_positive_int, metavar="N",
                       help=f"voxels per mini-batch (default: {_presets_say('batch_size')})")
    train.add_argument("--patience", type=_positive_int, metavar="EPOCHS",
                       help="epochs without a better validation loss before training stops "
                            f"(default: {_presets_say('patience')})")
    train.add_argument("--max-epochs", type=_positive_int, metavar="EPOCHS",
                       help="most training epochs; given, it is the budget whatever the number of voxels "
                            f"(default: {_presets_say('max_epochs')}{budget(fast)})")
    train.add_argument("--validation-fraction", type=_fraction, metavar="FRACTION",
                       help="share of the foreground voxels held out for early stopping, between 0 and 1 "
                            f"(default: {_presets_say('validation_fraction')})")
    train.add_argument("--random-seed", type=int, default=_DEFAULTS.random_seed, metavar="SEED",
                       help="seed of the weights, the validation split and the mini-batch order: the same seed "
                            f"on CPU (same --nprocs) gives identical maps (default: {_DEFAULTS.random_seed})")

    grp = p.add_argument_group("group level")
    grp.add_argument("--roi-dataset", nargs="+", action="extend", type=_existing_dir, metavar="DIR",
                     help="BIDS derivative dataset(s) with *_label-<name>_mask and/or *_dseg (+ .tsv lookup) "
                          "images on the MEGRE grid; may be repeated (default: the ROI is each run's "
                          "participant-level foreground mask)")

    out = p.add_argument_group("outputs and work directory")
    out.add_argument("--write-candidates", action="store_true",
                     help="also write the water and fat candidates' maps (desc-water, desc-fat) of the "
                          "(first) method (default: only the chosen maps)")
    out.add_argument("--overwrite", action="store_true",
                     help="replace a run's finished outputs that were made with other options, another version "
                          "or from inputs that changed since (default: such a run fails with exit 73, its outputs "
                          "kept). Either way, a finished run made with the same options is skipped, or only "
                          "gets the methods it lacks: outputs of other methods are kept")
    out.add_argument("-w", "--work-dir", type=Path, metavar="DIR",
                     help="scratch directory, kept: the run log raider-bids.log and the libraries' caches "
                          "go there (default: no log file; caches in a temporary directory removed at exit)")

    res = p.add_argument_group("resources")
    res.add_argument("--device", choices=DEVICES, default=_DEFAULTS.device,
                     help="where the networks run: auto = cuda when available, else cpu; CPU and GPU results "
                          f"differ slightly (default: {_DEFAULTS.device})")
    res.add_argument("--nprocs", "--nthreads", type=_positive_int, dest="nprocs", metavar="N",
                     help="most CPU threads torch uses; training steps use this many or one, whichever a probe "
                          "finds faster (default: the CPUs available to this process: its affinity mask and "
                          "cgroup quota, as SLURM, Docker --cpus and taskset set them)")
    res.add_argument("--mem", type=_memory, metavar="SIZE",
                     help="memory this process may use, with a unit (e.g. 8GB, 500MB; a bare number is refused "
                          "because fMRIPrep reads it as MB and MRIQC as GB): chunks are sized to fit, and a run "
                          "whose images cannot fit fails with a clear error (exit 1) instead of an OOM kill "
                          f"(default: no limit; chunked computations take at most "
                          f"{format_bytes(DEFAULT_WORKING_BYTES)} at a time)")
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
        if path.exists() and not path.is_dir():  # else mkdir would end with a bare "File exists"
            raise UsageError(f"{label} {path} is a file, not a directory")


def config_from_args(args: argparse.Namespace, argv: Sequence[str]) -> Config:
    if args.analysis_level not in ANALYSIS_LEVELS:
        raise UnknownLevelError(f"analysis level {args.analysis_level!r} is unknown; "
                                f"expected one of: {', '.join(ANALYSIS_LEVELS)}")
    _check_paths(args.bids_dir, args.output_dir, args.work_dir)
    from ..bids_io.raw import check_labels  # here, not at the top: it imports nibabel and numpy, --help need not

    check_labels("--participant-label", args.participant_label or [], "sub-")
    check_labels("--session-label", args.session_label or [], "ses-")
    overrides = {k: getattr(args, k) for k in ("learning_rate", "batch_size", "patience", "max_epochs",
                                               "validation_fraction") if getattr(args, k) is not None}
    if args.max_epochs is not None:  # the user's budget, whatever the number of voxels
        overrides["budget_passes"] = None
    if args.learning_rate is not None:  # the user's rate, whatever the budget
        overrides["budget_lr_power"] = None
    training = dataclasses.replace(TRAINING_PRESETS[args.training], **overrides)
    return Config(
        bids_dir=args.bids_dir.resolve(), output_dir=args.output_dir.resolve(),
        analysis_level=args.analysis_level,
        work_dir=args.work_dir.resolve() if args.work_dir else None,
        participant_labels=tuple(args.participant_label or ()),
        session_labels=tuple(args.session_label or ()),
        bids_filter_file=args.bids_filter_file, field_strength_t=args.field_strength,
        fat_spectrum=args.fat_spectrum, sigma=args.sigma, mask_file=args.mask,
        methods=tuple(dict.fromkeys(args.method)), choice=args.choice, refine=args.refine,
        roi_datasets=tuple(p.resolve() for p in args.roi_dataset or ()),
        write_candidates=args.write_candidates,
        training=training, random_seed=args.random_seed, device=args.device, nprocs=args.nprocs, mem_bytes=args.mem,
        overwrite=args.overwrite,
        command_line=("raider-bids", *argv))
