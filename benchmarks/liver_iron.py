"""R2* and PDFF across the clinical range of liver iron overload, with the automatic foreground mask.

For each protocol (raider_bids.experiments.phantoms.IRON_PROTOCOLS: 1.5T: 1.5 T, six echoes,
TE1 = dTE = 1.0 ms; 3T: 3 T, eight echoes, TE1 = dTE = 0.8 ms; SNR 50 for both) x liver R2* grade
(IRON_GRADES_S: 50-1000 1/s at 1.5 T, 50-2000 1/s at 3 T), writes the liver-iron phantom
(phantoms.liver_iron: liver PDFF 0.05 with a steatotic region at 0.20, spleen at half the liver's
R2*, air of noise only) as a raw BIDS dataset, runs `python -m raider_bids bids out participant
--method M1 [M2 ...] --nprocs N --random-seed S` once in a child process (no --mask: the
automatic foreground mask and noise estimate, as a user gets them), and prints one row per
protocol x grade x method:

    protocol    IRON_PROTOCOLS key
    grade R2*   the liver's R2* grade (1/s)
    method      the estimator (its desc-<method> maps when several ran)
    liver vox   truth liver voxels (labels "liver" and "liver-steatosis")
    kept%       the share of them inside the written foreground mask
    R2* est     median R2* estimate over the kept liver voxels (1/s)
    R2* err%    its error relative to the median truth R2* of the same voxels (%)
    PDFF est    median PDFF estimate over the kept voxels of the liver proper (truth PDFF 0.05)
    PDFF err    that median minus the median truth PDFF of the same voxels (fraction)
    steat PDFF  the same over the kept voxels of the steatotic region (truth PDFF 0.20)
    steat err   its median minus the median truth (fraction)
    sigma       the app's noise estimate (truth: 100 / SNR = 2.0)
    est s       the method's estimation seconds (the provenance's Methods.<method>.Seconds)
    wall s      the child's wall time (one call for all methods of a dataset)

Where the mask keeps no liver voxel (or none of a region), the estimates read '-'.

    python benchmarks/liver_iron.py [--protocols 1.5T 3T] [--grades R2* ...]
        [--methods ssl fit [supervised] [single]] [--shape 96 96 8] [--nprocs 2] [--seed 0]
        [--keep DIR] [--max-epochs N]

Numbers only; nothing is asserted. --grades replaces every protocol's grades; --max-epochs is
passed to the app (quicker network training when exploring); --keep keeps every dataset, output
and the truth maps (DIR/<protocol>-R2star<grade>/{bids,truth,out}).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from runs import SUBJECT, format_row, run_participant, write_protocol_dataset  # benchmarks/runs.py, beside this script

from raider_bids.bids_io.derivatives import DerivativesDataset
from raider_bids.experiments.phantoms import IRON_GRADES_S, IRON_PROTOCOLS, liver_iron, liver_labels

METHODS = ("ssl", "fit", "supervised", "single")
COLUMNS = (("protocol", 8, "s"), ("grade R2*", 9, ".0f"), ("method", 10, "s"), ("liver vox", 9, "d"),
           ("kept%", 6, ".1f"), ("R2* est", 8, ".1f"), ("R2* err%", 8, ".1f"), ("PDFF est", 8, ".3f"),
           ("PDFF err", 8, "+.3f"), ("steat PDFF", 10, ".3f"), ("steat err", 9, "+.3f"), ("sigma", 6, ".2f"),
           ("est s", 7, ".1f"), ("wall s", 7, ".1f"))


def run_app(bids: Path, out: Path, methods: list[str], nprocs: int, seed: int, max_epochs: int | None) -> float:
    """Wall seconds of one participant-level run of every method in a child process; exits on failure."""
    return run_participant(bids, out, ["--method", *methods, "--nprocs", str(nprocs), "--random-seed", str(seed),
                                       *(["--max-epochs", str(max_epochs)] if max_epochs else [])])


def _median(values: np.ndarray) -> float | None:
    return float(np.median(values)) if values.size else None


def evaluate(out: Path, truth: dict[str, np.ndarray], liver: dict[str, np.ndarray]) -> dict[str, dict]:
    """Per method: the liver's kept share and its median estimates against the truth."""
    outputs = DerivativesDataset(out).subject_outputs(SUBJECT)
    load = lambda path: np.asarray(nib.load(path).dataobj, dtype=np.float64)  # noqa: E731
    mask = load(outputs.files["mask"]) > 0
    provenance = outputs.provenance
    whole = liver["all"]
    kept = whole & mask
    rows = {}
    for method, files in outputs.method_maps().items():
        r2, pdff = load(files["R2star"]), load(files["PDFF"])
        row = {"liver vox": int(whole.sum()), "kept%": 100 * float(kept.sum()) / max(int(whole.sum()), 1),
               "sigma": provenance.noise.sigma, "est s": provenance.methods[method].seconds}
        estimate, reference = _median(r2[kept]), _median(truth["R2starmap"][kept])
        row["R2* est"] = estimate
        row["R2* err%"] = None if estimate is None else 100 * (estimate / reference - 1)
        for name, est_key, err_key in (("liver", "PDFF est", "PDFF err"),
                                       ("liver-steatosis", "steat PDFF", "steat err")):
            sel = liver[name] & mask
            estimate = _median(pdff[sel])
            row[est_key] = estimate
            row[err_key] = None if estimate is None else estimate - _median(truth["PDFFmap"][sel])
        rows[method] = row
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocols", nargs="+", choices=sorted(IRON_PROTOCOLS), default=list(IRON_PROTOCOLS))
    parser.add_argument("--grades", nargs="+", type=float, metavar="R2STAR",
                        help="liver R2* grades (1/s) for every protocol (default: IRON_GRADES_S per protocol)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=["ssl", "fit"])
    parser.add_argument("--shape", type=int, nargs=3, metavar=("X", "Y", "Z"), default=(96, 96, 8))
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="phantom, noise and app seed")
    parser.add_argument("--keep", type=Path, help="keep datasets, outputs and truth here (default: a temp dir)")
    parser.add_argument("--max-epochs", type=int, help="passed to the app: at most this many training epochs")
    args = parser.parse_args()
    methods = list(dict.fromkeys(args.methods))
    with tempfile.TemporaryDirectory(prefix="liver-iron-") as scratch:
        root = args.keep or Path(scratch)
        print(format_row(COLUMNS), flush=True)
        for protocol_name in args.protocols:
            protocol = IRON_PROTOCOLS[protocol_name]
            tes = ", ".join(f"{1e3 * t:g}" for t in protocol.echo_times_s)
            print(f"# {protocol_name}: {protocol.field_strength_t:g} T, echoes {tes} ms, SNR {protocol.snr:g}",
                  flush=True)
            for grade in args.grades or IRON_GRADES_S[protocol_name]:
                phantom = liver_iron(grade, tuple(args.shape), args.seed)
                names = {k: phantom.tissues[k] for k in liver_labels(phantom)}
                liver = {name: phantom.labels == k for k, name in names.items()}
                liver["all"] = np.isin(phantom.labels, list(names))
                directory = root / f"{protocol_name}-R2star{grade:g}"
                truth = write_protocol_dataset(directory, phantom, protocol, args.seed, bool(args.keep))
                out = directory / "out"
                wall = run_app(directory / "bids", out, methods, args.nprocs, args.seed, args.max_epochs)
                rows = evaluate(out, truth, liver)
                for method in methods:
                    print(format_row(COLUMNS, {"protocol": protocol_name, "grade R2*": grade, "method": method,
                                      **rows[method], "wall s": wall}), flush=True)


if __name__ == "__main__":
    main()
