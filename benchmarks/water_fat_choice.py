"""How often each method picks the wrong (water- or fat-dominant) side, per-voxel vs spatial choice.

For each phantom (raider_bids.experiments.phantoms: abdomen, anatomy, and liver-derived when
/work/shared/data/real-bids exists) x protocol (paper: 3 T, 6 echoes, TE1 = dTE = 1.15 ms,
SNR 60; hard: 1.5 T, 6 echoes, TE1 1.2 ms, spacing 2.0 ms, SNR 40) x method x choice, writes the
phantom as a raw BIDS dataset, runs `python -m raider_bids bids out participant --method M
--choice C --nprocs N` in a child process, and prints one table:

    voxels      truth tissue voxels inside the written foreground mask (what the errors cover)
    swap%       of those, the share whose chosen side (PDFF >= 0.58) differs from the truth's
    gross%      the share of swaps that also miss the true PDFF by more than 0.2
    border%     the same at the real fat/water borders (phantoms.border_voxels), and their count
    PDFF MAE    mean |PDFF - truth| (fraction)
    R2* MAE     mean |R2* - truth| (1/s)
    est s       the provenance's Timings.EstimationSeconds
    choice s    Timings.ChoiceSeconds (the spatial choice), '-' where the provenance has none
    wall s      the child's wall time

    python benchmarks/water_fat_choice.py [--phantoms abdomen anatomy liver-derived]
        [--protocols paper hard] [--methods fit ssl [supervised]] [--choices voxel spatial]
        [--shape X Y Z] [--nprocs 2] [--seed 0] [--keep DIR] [--liver-cache DIR]

Numbers only; nothing is asserted. --keep keeps every dataset, output and the truth maps
(DIR/<phantom>-<protocol>/{bids,truth,<method>-<choice>}); --liver-cache keeps the fit of the
real liver slice between calls (default: under --keep, else a temporary directory).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from runs import SUBJECT, format_row, run_participant, write_protocol_dataset  # benchmarks/runs.py, beside this script

from raider_bids.bids_io.derivatives import DerivativesDataset
from raider_bids.experiments.phantoms import PHANTOMS, PROTOCOLS, REAL_BIDS, border_voxels, build
from raider_bids.physics.parameters import PDFF_BOUNDARY

GROSS_PDFF_ERROR = 0.2  # a swap that changes PDFF by more than this (not a partial-volume voxel near 0.58)
COLUMNS = (("phantom", 14, "s"), ("protocol", 9, "s"), ("method", 11, "s"), ("choice", 8, "s"),
           ("voxels", 8, "d"), ("swap%", 7, ".2f"), ("gross%", 7, ".2f"), ("border%", 8, ".2f"), ("borders", 8, "d"),
           ("PDFF MAE", 9, ".4f"), ("R2* MAE", 8, ".1f"), ("est s", 7, ".1f"), ("choice s", 9, ".2f"),
           ("wall s", 7, ".1f"))


def run_app(bids: Path, out: Path, method: str, choice: str, nprocs: int, seed: int) -> float:
    """Wall seconds of one participant-level run in a child process; exits on failure."""
    return run_participant(bids, out, ["--method", method, "--choice", choice, "--nprocs", str(nprocs),
                                       "--random-seed", str(seed)])


def evaluate(out: Path, truth: dict[str, np.ndarray], border: np.ndarray) -> dict[str, float]:
    """Errors of the written maps against the truth over tissue voxels in the written mask."""
    outputs = DerivativesDataset(out).subject_outputs(SUBJECT)
    load = lambda key: np.asarray(nib.load(outputs.files[key]).dataobj, dtype=np.float64)  # noqa: E731
    pdff, r2 = load("PDFFmap"), load("R2starmap")
    sel = (load("mask") > 0) & (truth["labels"] > 0)
    swapped = (pdff >= PDFF_BOUNDARY) != (truth["PDFFmap"] >= PDFF_BOUNDARY)
    timings = json.loads(outputs.files["provenance"].read_text()).get("Timings", {})
    at_border = sel & border
    gross = swapped & (np.abs(pdff - truth["PDFFmap"]) > GROSS_PDFF_ERROR)
    return {"voxels": int(sel.sum()), "swap%": 100 * float(swapped[sel].mean()),
            "gross%": 100 * float(gross[sel].mean()),
            "border%": 100 * float(swapped[at_border].mean()) if at_border.any() else float("nan"),
            "borders": int(at_border.sum()),
            "PDFF MAE": float(np.abs(pdff - truth["PDFFmap"])[sel].mean()),
            "R2* MAE": float(np.abs(r2 - truth["R2starmap"])[sel].mean()),
            "est s": float(timings.get("EstimationSeconds", float("nan"))),
            "choice s": timings.get("ChoiceSeconds")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phantoms", nargs="+", choices=PHANTOMS,
                        help="default: abdomen anatomy, and liver-derived when the real data are there")
    parser.add_argument("--protocols", nargs="+", choices=sorted(PROTOCOLS), default=["paper", "hard"])
    parser.add_argument("--methods", nargs="+", choices=["fit", "ssl", "supervised"], default=["fit", "ssl"])
    parser.add_argument("--choices", nargs="+", choices=["voxel", "spatial"], default=["voxel", "spatial"])
    parser.add_argument("--shape", type=int, nargs=3, metavar=("X", "Y", "Z"),
                        help="grid of abdomen and anatomy (default 96 96 8 and 112 96 8)")
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="phantom, noise and app seed")
    parser.add_argument("--keep", type=Path, help="keep datasets, outputs and truth here (default: a temp dir)")
    parser.add_argument("--liver-cache", type=Path, help="where the real liver slice's fit is kept")
    args = parser.parse_args()
    phantoms = args.phantoms or ["abdomen", "anatomy"] + (["liver-derived"] if REAL_BIDS.is_dir() else [])
    with tempfile.TemporaryDirectory(prefix="water-fat-choice-") as scratch:
        root = args.keep or Path(scratch)
        cache = args.liver_cache or root / "liver-fit"
        print(format_row(COLUMNS), flush=True)
        for name in phantoms:
            phantom = build(name, tuple(args.shape) if args.shape else None, args.seed, cache, args.nprocs)
            border = border_voxels(phantom.pdff, phantom.labels)
            notes = ", ".join(f"{k} {v}" for k, v in phantom.notes.items())
            print(f"# {name}: {phantom.shape[0]} x {phantom.shape[1]} x {phantom.shape[2]}, "
                  f"{int(phantom.tissue.sum())} tissue voxels, {int(border.sum())} at fat/water borders"
                  + (f"; {notes}" if notes else ""), flush=True)
            for protocol_name in args.protocols:
                protocol = PROTOCOLS[protocol_name]
                directory = root / f"{name}-{protocol_name}"
                truth = write_protocol_dataset(directory, phantom, protocol, args.seed, bool(args.keep))
                for method in args.methods:
                    for choice in args.choices:
                        out = directory / f"{method}-{choice}"
                        wall = run_app(directory / "bids", out, method, choice, args.nprocs, args.seed)
                        row = {"phantom": name, "protocol": protocol_name, "method": method, "choice": choice,
                               **evaluate(out, truth, border), "wall s": wall}
                        print(format_row(COLUMNS, row), flush=True)


if __name__ == "__main__":
    main()
