"""How close the estimators come to the maximum-likelihood answer on the same data.

Simulates voxels (PDFF ~ U[0, 1], R2* ~ U[0, R2MAX] 1/s, S0 = 1, SNR 60, the paper's 3 T 6-echo
protocol), runs the dual networks and the conventional fit, and compares both with an independent
dense grid search of the Rician likelihood (tests/ml_reference.py) on a random subset.

    python benchmarks/ml_agreement.py [--voxels 20000] [--subset 400] [--r2max 500]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from ml_reference import grid_search_ml  # noqa: E402

from raider_bids.config import TRAINING_PRESETS  # noqa: E402
from raider_bids.estimators import get_estimator  # noqa: E402
from raider_bids.physics.fat_spectrum import PRESETS  # noqa: E402
from raider_bids.physics.likelihood import rician_nll_per_voxel  # noqa: E402
from raider_bids.physics.signal_model import Acquisition, magnitude_signal  # noqa: E402
from raider_bids.physics.simulation import simulate_magnitude  # noqa: E402

ECHO_TIMES_S = tuple(1.15e-3 * k for k in range(1, 7))


def simulate(n: int, r2max: float, seed: int):
    rng = np.random.default_rng(seed)
    acquisition = Acquisition(ECHO_TIMES_S, 3.0, PRESETS["hernando"])
    pdff, r2 = rng.uniform(0, 1, n), rng.uniform(0, r2max, n)
    signals = simulate_magnitude(acquisition, np.ones(n), pdff, r2, 1 / 60, rng)
    return acquisition, signals, pdff, r2


def compare_with_ml(acquisition, signals, estimates, ml, sigma: float) -> dict[str, float]:
    """NLL excess over the grid ML, PDFF difference, and water/fat side agreement."""
    predicted = magnitude_signal(acquisition, estimates.s0, estimates.pdff, estimates.r2star_s)
    nll = rician_nll_per_voxel(torch.tensor(signals), torch.tensor(predicted), sigma).numpy()
    excess = nll - ml["nll"]
    dpdff = np.abs(estimates.pdff - ml["pdff"])
    return {"nll_excess_median": float(np.median(excess)), "nll_excess_p95": float(np.percentile(excess, 95)),
            "pdff_absdiff_median": float(np.median(dpdff)), "pdff_absdiff_p95": float(np.percentile(dpdff, 95)),
            "same_side_as_ml": float(np.mean((estimates.pdff >= 0.58) == (ml["pdff"] >= 0.58)))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--voxels", type=int, default=20000)
    parser.add_argument("--subset", type=int, default=400)
    parser.add_argument("--r2max", type=float, default=500.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sigma = 1 / 60
    acquisition, signals, pdff, r2 = simulate(args.voxels, args.r2max, args.seed)
    subset = np.random.default_rng(1).choice(args.voxels, args.subset, replace=False)
    t = time.perf_counter()
    ml = grid_search_ml(signals[subset], ECHO_TIMES_S, 3.0, sigma, r2_max=args.r2max + 100)
    print(f"grid-search ML on {args.subset} voxels: {time.perf_counter() - t:.1f} s; "
          f"swap rate vs truth {np.mean((ml['pdff'] >= 0.58) != (pdff[subset] >= 0.58)):.3f}")
    for method, preset in (("ssl", "fast"), ("ssl", "paper"), ("fit", "paper")):
        t = time.perf_counter()
        est = get_estimator(method, TRAINING_PRESETS[preset]).fit(signals, acquisition, sigma, seed=args.seed,
                                                                   device=torch.device("cpu"))
        seconds = time.perf_counter() - t
        swap = np.mean((est.pdff >= 0.58) != (pdff >= 0.58))
        sub = type(est)(**{k: (v[subset] if isinstance(v, np.ndarray) else v) for k, v in vars(est).items()})
        numbers = compare_with_ml(acquisition, signals[subset], sub, ml, sigma)
        label = f"{method} (--training {preset})" if method == "ssl" else method
        print(f"{label}: {seconds:.1f} s for {args.voxels} voxels; swap rate vs truth {swap:.3f}; vs ML: "
              + ", ".join(f"{k} {v:.4f}" for k, v in numbers.items()))


if __name__ == "__main__":
    main()
