"""Speed and accuracy of the participant level on a clinical-size synthetic subject.

Writes a subject of the paper's in vivo size (240 x 240 x 50 voxels, 3 T, TE1 = dTE = 1.15 ms,
6 echoes, SNR 60; muscle, liver, steatosis, marrow, subcutaneous fat, air) as a BIDS dataset,
runs `raider-bids ... participant` end to end (load, sigma, mask, estimation, writing, report)
for each method in a child process (--repeat times, the median reported: a shared machine's speed
varies by tens of percent from minute to minute), and prints wall time, the child's peak RSS,
voxels per second and the accuracy against the truth per tissue. Then times a per-voxel scipy fit of the same
Rician likelihood (L-BFGS-B, one start per side, as conventional software does) on a sample of
voxels, extrapolates it to the whole foreground, and compares its answers with `--method fit`.

    python benchmarks/clinical_subject.py [--shape 240 240 50] [--methods ssl fit] [--nprocs 2]
        [--repeat 3] [--scipy-voxels 200] [--dir DIR] [-- extra raider-bids options]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.optimize import minimize
from scipy.special import i0e

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from ml_reference import shapes  # noqa: E402  (independent numpy model)

from raider_bids.experiments.demo import ECHO_TIMES_S, FIELD_STRENGTH_T, TISSUES, write_dataset  # noqa: E402
from raider_bids.physics.parameters import PDFF_BOUNDARY  # noqa: E402


def run_app(bids: Path, out: Path, method: str, nprocs: int, extra: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB) of one participant-level run in a child process."""
    command = [sys.executable, "-m", "raider_bids", str(bids), str(out), "participant", "--method", method,
               "--nprocs", str(nprocs), *extra]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(command)} failed:\n{process.stderr.read()[-3000:]}")
    return wall, usage.ru_maxrss / 1024**2


def accuracy(out: Path, truth: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, dict[str, float]]]:
    anat = out / "sub-01" / "anat"
    load = lambda name: np.asarray(nib.load(anat / f"sub-01_{name}.nii.gz").dataobj)  # noqa: E731
    pdff, r2, mask = load("PDFFmap"), load("R2starmap"), load("desc-foreground_mask") > 0
    rows = {}
    for name, tissue in TISSUES.items():
        sel = mask & (truth["labels"] == tissue.label)
        t = truth["PDFFmap"][sel]
        rows[name] = {"voxels": int(sel.sum()),
                      "swap": float(np.mean((pdff[sel] >= PDFF_BOUNDARY) != (t >= PDFF_BOUNDARY))),
                      "pdff_mae": float(np.mean(np.abs(pdff[sel] - t))),
                      "r2_mae": float(np.mean(np.abs(r2[sel] - truth["R2starmap"][sel])))}
    return pdff, rows


def scipy_fit(m: np.ndarray, sigma: float) -> tuple[float, float]:
    """Per-voxel Rician ML, the better of a water-side and a fat-side L-BFGS-B fit: (PDFF, NLL)."""
    te = np.asarray(ECHO_TIMES_S)

    def nll(theta: np.ndarray) -> float:
        nu = theta[0] * shapes(np.array(theta[1]), np.array(theta[2]), te, FIELD_STRENGTH_T)
        return float(np.sum((m - nu) ** 2 / (2 * sigma**2) - np.log(i0e(m * nu / sigma**2))))

    best = (np.nan, np.inf)
    for low, high, start in ((0.0, PDFF_BOUNDARY, 0.2), (PDFF_BOUNDARY, 1.0, 0.8)):
        result = minimize(nll, x0=[m.max(), start, 50.0], method="L-BFGS-B",
                          bounds=[(0, None), (low, high), (0, 1000.0)])
        if result.fun < best[1]:
            best = (float(result.x[1]), float(result.fun))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=(240, 240, 50))
    parser.add_argument("--methods", nargs="+", default=["ssl", "fit"])
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="runs per method and of the scipy sample")
    parser.add_argument("--scipy-voxels", type=int, default=200)
    parser.add_argument("--dir", type=Path, help="keep the dataset and outputs here (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("extra", nargs="*", help="after --: options passed to raider-bids")
    args = parser.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="raider-bids-bench-"))
    t = time.perf_counter()
    truth = write_dataset(root / "bids", shape=tuple(args.shape), snr=60, seed=args.seed)["01"]
    print(f"subject {tuple(args.shape)} x {len(ECHO_TIMES_S)} echoes written to {root / 'bids'} "
          f"in {time.perf_counter() - t:.0f} s; {os.cpu_count()} CPUs here, --nprocs {args.nprocs}")
    fit_pdff = None
    for method in args.methods:
        out = root / f"out-{method}"
        walls, rsses = [], []
        for _ in range(args.repeat):
            shutil.rmtree(out, ignore_errors=True)  # the app skips runs finished before
            wall, rss = run_app(root / "bids", out, method, args.nprocs, args.extra)
            walls.append(wall)
            rsses.append(rss)
        wall, rss = float(np.median(walls)), max(rsses)
        timings = json.loads((out / "sub-01/anat/sub-01_provenance.json").read_text())["Timings"]
        estimation, choice = timings["EstimationSeconds"], timings.get("ChoiceSeconds", 0.0)
        pdff, rows = accuracy(out, truth)
        n = sum(r["voxels"] for r in rows.values())
        swap = sum(r["swap"] * r["voxels"] for r in rows.values()) / n
        mae = sum(r["pdff_mae"] * r["voxels"] for r in rows.values()) / n
        print(f"\n--method {method} {' '.join(args.extra)}: {wall:.1f} s wall (median of "
              f"{', '.join(f'{w:.1f}' for w in walls)}; estimation {estimation:.1f} s in the last, the "
              f"water/fat choice {choice:.2f} s = {100 * choice / estimation:.1f}% of it), peak RSS {rss:.2f} GB, "
              f"{n / wall:,.0f} tissue voxels/s; swaps {100 * swap:.2f}%, PDFF MAE {mae:.4f}")
        for name, r in rows.items():
            print(f"  {name:<18}{r['voxels']:>9} voxels  swaps {100 * r['swap']:6.2f}%  "
                  f"PDFF MAE {r['pdff_mae']:.4f}  R2* MAE {r['r2_mae']:6.1f} 1/s")
        if method == "fit":
            fit_pdff, fit_wall, fit_estimation, fit_voxels = pdff, wall, estimation, int(
                (np.asarray(nib.load(out / "sub-01/anat/sub-01_desc-foreground_mask.nii.gz").dataobj) > 0).sum())
    if fit_pdff is None or args.scipy_voxels <= 0:
        return
    rng = np.random.default_rng(args.seed)
    data = np.stack([np.asarray(nib.load(p).dataobj) for p in
                     sorted((root / "bids/sub-01/anat").glob("*_MEGRE.nii.gz"))], axis=-1)
    tissue = np.argwhere(truth["labels"] > 0)
    sample = tissue[rng.choice(len(tissue), args.scipy_voxels, replace=False)]
    sigma = float(truth["sigma"])
    per_voxel = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        answers = np.array([scipy_fit(data[tuple(v)].astype(np.float64), sigma)[0] for v in sample])
        per_voxel.append((time.perf_counter() - t) / len(sample))
    ours = fit_pdff[tuple(sample.T)]
    baseline = float(np.median(per_voxel)) * fit_voxels
    print(f"\nper-voxel scipy fit (L-BFGS-B, both sides): {1e3 * np.median(per_voxel):.1f} ms/voxel (median of "
          f"{', '.join(f'{1e3 * x:.1f}' for x in per_voxel)}) on {len(sample)} voxels, extrapolated to "
          f"{fit_voxels:,} foreground voxels: {baseline:,.0f} s = {baseline / fit_wall:,.0f}x the end-to-end "
          f"--method fit, {baseline / fit_estimation:,.0f}x its estimation")
    same_side = np.mean((answers >= PDFF_BOUNDARY) == (ours >= PDFF_BOUNDARY))
    print(f"  same water/fat side as --method fit: {100 * same_side:.1f}%, "
          f"median |PDFF difference| {np.median(np.abs(answers - ours)):.4f}")


if __name__ == "__main__":
    main()
