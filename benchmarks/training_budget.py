"""How close the dual networks come to the maximum-likelihood fit for a given training budget, on
small and large data and for several seeds.

For each dataset (the demo phantom's 4,704 tissue voxels; the paper's in silico grid, 100 PDFF x
50 R2* x 20 repetitions = 100,000 voxels; both at the paper's 3 T six-echo protocol, SNR 60) the
conventional fit is run once as the reference, then the dual networks with the fast preset for
each --epochs (x 100 steps, the cosine schedule annealing over that budget; 0: the app's budget
for the dataset's voxels, config.TrainingSettings.budget_passes) and --seeds, with the per-voxel
choice. Printed per run: training seconds; the chosen candidate's NLL above the fit's
(mean, 99th percentile, nats); PDFF MAE against the truth (the fit's beside it); the swap rate's
excess over the fit's (percentage points); and, in the fit's near-degenerate voxels (|LLR| < 2
nats), each network's mean NLL above the fit's own candidate of that side: the larger one loses
the choice there more often than it should. A second line gives the same after the app's default
refinement of close candidates (estimators.refinement, --refine ambiguous): the share refined and
its seconds, the NLL above the fit, PDFF MAE and swap excess.

    python benchmarks/training_budget.py [--datasets demo grid] [--epochs 0 10 20 40 80] [--seeds 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

from raider_bids.config import DEFAULT_TRAINING, TRAINING_PRESETS
from raider_bids.estimators import get_estimator
from raider_bids.estimators.refinement import refine_ambiguous
from raider_bids.experiments import demo, insilico
from raider_bids.physics.fat_spectrum import PRESETS
from raider_bids.physics.parameters import PDFF_BOUNDARY
from raider_bids.physics.signal_model import Acquisition
from raider_bids.physics.simulation import simulate_magnitude

CPU = torch.device("cpu")


def dataset(name: str) -> tuple[Acquisition, np.ndarray, float, np.ndarray]:
    """Acquisition, signals (N, E), sigma and true PDFF (N,)."""
    acquisition = Acquisition(demo.ECHO_TIMES_S, demo.FIELD_STRENGTH_T, PRESETS["hernando"])
    rng = np.random.default_rng(0)
    if name == "grid":
        pdff, r2 = (np.repeat(a.ravel(), 20) for a in np.meshgrid(*insilico.grid_truth(), indexing="ij"))
        return acquisition, simulate_magnitude(acquisition, np.ones(pdff.size), pdff, r2, insilico.SIGMA, rng), \
            insilico.SIGMA, pdff
    labels = demo.make_phantom((48, 48, 4))
    truth, tissue = demo.truth_maps(labels, rng), labels > 0
    sigma = 100 / 60  # the demo's: muscle S0 / SNR
    signals = simulate_magnitude(acquisition, truth["S0map"][tissue], truth["PDFFmap"][tissue],
                                 truth["R2starmap"][tissue], sigma, rng)
    return acquisition, signals, sigma, truth["PDFFmap"][tissue]


def chosen_nll(estimates) -> np.ndarray:
    return np.where(estimates.chose_fat, estimates.candidates["fat"]["nll"], estimates.candidates["water"]["nll"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", choices=("demo", "grid"), default=["demo", "grid"])
    parser.add_argument("--epochs", nargs="+", type=int, default=[0, 10, 20, 40, 80])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    args = parser.parse_args()
    fast = TRAINING_PRESETS[DEFAULT_TRAINING]
    for name in args.datasets:
        acquisition, signals, sigma, truth = dataset(name)
        fit = get_estimator("fit", fast).fit(signals, acquisition, sigma, seed=0, device=CPU)
        fit_swap = np.mean((fit.pdff >= PDFF_BOUNDARY) != (truth >= PDFF_BOUNDARY))
        degenerate = np.abs(fit.candidates["water"]["nll"] - fit.candidates["fat"]["nll"]) < 2
        print(f"{name}: {len(signals):,} voxels; fit swaps {100 * fit_swap:.2f} %, PDFF MAE "
              f"{np.mean(np.abs(fit.pdff - truth)):.4f}")
        for epochs in args.epochs:
            for seed in args.seeds:
                fixed = dataclasses.replace(fast, max_epochs=epochs, budget_passes=None)
                settings = fixed if epochs else fast
                start = time.perf_counter()
                ssl = get_estimator("ssl", settings).fit(signals, acquisition, sigma, seed=seed, device=CPU)
                seconds = time.perf_counter() - start
                gap = chosen_nll(ssl) - chosen_nll(fit)
                swap = np.mean((ssl.pdff >= PDFF_BOUNDARY) != (truth >= PDFF_BOUNDARY))
                side = {k: float(np.mean(ssl.candidates[k]["nll"][degenerate] - fit.candidates[k]["nll"][degenerate]))
                        for k in ("water", "fat")}
                steps = f"{ssl.training.max_epochs * fast.steps_per_epoch:>5} steps{'' if epochs else ' (app budget)'}"
                print(f"  {steps}, seed {seed}: {seconds:5.1f} s; NLL above the fit "
                      f"mean {gap.mean():.3f}, p99 {np.percentile(gap, 99):.2f}; PDFF MAE "
                      f"{np.mean(np.abs(ssl.pdff - truth)):.4f}; swaps {100 * (swap - fit_swap):+.2f} points; "
                      f"near-degenerate, above the fit's side: water {side['water']:.2f}, fat {side['fat']:.2f}",
                      flush=True)
                start = time.perf_counter()
                refined = refine_ambiguous(ssl, signals, acquisition, sigma, CPU)
                seconds = time.perf_counter() - start
                gap = chosen_nll(refined) - chosen_nll(fit)
                swap = np.mean((refined.pdff >= PDFF_BOUNDARY) != (truth >= PDFF_BOUNDARY))
                print(f"{'':>8}then --refine ambiguous ({100 * refined.details['Refinement']['RefinedShare']:.1f} % "
                      f"refined, {seconds:.1f} s): NLL above the fit mean {gap.mean():.3f}, p99 "
                      f"{np.percentile(gap, 99):.2f}; PDFF MAE {np.mean(np.abs(refined.pdff - truth)):.4f}; swaps "
                      f"{100 * (swap - fit_swap):+.2f} points", flush=True)


if __name__ == "__main__":
    main()
