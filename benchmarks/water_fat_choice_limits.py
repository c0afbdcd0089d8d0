"""What limits the spatial water/fat choice: the candidates, or the grouping of neighbours?

For a phantom (raider_bids.experiments.phantoms) at a protocol, simulates the echoes of its tissue
voxels, fits both candidates per voxel with the conventional fit (the run's true sigma), and
prints the swaps (tissue voxels on the wrong side of 0.58) of five choices:

    voxel             the per-voxel likelihood choice (--choice voxel)
    spatial           the default (raider_bids.choice.sides), neighbours grouped by signal similarity
    closer candidate  an oracle: per voxel, the candidate nearer the true PDFF. What the candidates
                      allow at best; any choice from them does worse
    tissue oracle     the spatial choice's energy and weights, with the signal similarity replaced
                      by the truth (1 for neighbours of one tissue label, 0 otherwise): what a perfect
                      grouping of neighbours would give
    tissue oracle x4  the same with four times the pull (20 nats)

and the same per tissue for the spatial choice and the tissue oracle. Columns: swap (all tissue),
gross (swapped and more than 0.2 off the true PDFF), border (voxels with a neighbour on the other
side of 0.58), interior (the rest).

Then the calibration of the spatial choice's side probability (the chosen side's marginal, by
belief propagation), beside the conditional probability given the neighbours' chosen sides that
it replaced: per band of probability, the mean probability given and the share of voxels on the
right side; the Brier score; the expected share of swaps (mean of 1 - p) against the real one.

    python benchmarks/water_fat_choice_limits.py [--phantom anatomy] [--protocol hard] [--seed 0]
        [--liver-cache DIR]

Numbers only; nothing is asserted. In-process, single run (about a minute for anatomy).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from raider_bids.choice.graph_cut import PairTerms, minimise
from raider_bids.choice.sides import PULL_NATS, choose_sides, grid_pairs
from raider_bids.config import DEFAULT_TRAINING, TRAINING_PRESETS
from raider_bids.estimators import get_estimator
from raider_bids.experiments.phantoms import PHANTOMS, PROTOCOLS, border_voxels, build
from raider_bids.physics.fat_spectrum import PRESETS
from raider_bids.physics.parameters import PDFF_BOUNDARY
from raider_bids.physics.signal_model import Acquisition
from raider_bids.physics.simulation import simulate_magnitude

GROSS_PDFF_ERROR = 0.2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phantom", choices=PHANTOMS, default="anatomy")
    parser.add_argument("--protocol", choices=sorted(PROTOCOLS), default="hard")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--liver-cache", type=Path, help="where the real liver slice's fit is kept")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="choice-limits-") as scratch:
        phantom = build(args.phantom, None, args.seed, args.liver_cache or Path(scratch))
    protocol = PROTOCOLS[args.protocol]
    acquisition = Acquisition(protocol.echo_times_s, protocol.field_strength_t, PRESETS["hernando"])
    sigma = phantom.reference_s0 / protocol.snr
    mask = phantom.labels > 0
    signals = simulate_magnitude(acquisition, phantom.s0[mask], phantom.pdff[mask], phantom.r2star_s[mask], sigma,
                                 np.random.default_rng(args.seed))
    fit = get_estimator("fit", TRAINING_PRESETS[DEFAULT_TRAINING]).fit(signals, acquisition, sigma, seed=args.seed,
                                                                        device=torch.device("cpu"))
    water, fat = fit.candidates["water"], fit.candidates["fat"]
    truth, labels = phantom.pdff[mask], phantom.labels[mask]
    true_fat = truth >= PDFF_BOUNDARY
    border = border_voxels(phantom.pdff, phantom.labels)[mask]

    pairs = grid_pairs(mask, phantom.voxel_size_mm, signals, sigma)
    # The same pairs between identical echoes: similarity 1, so their costs are the weights w_ij.
    weight = grid_pairs(mask, phantom.voxel_size_mm, np.zeros_like(signals), sigma).e01.astype(np.float64)
    same_tissue = (labels[pairs.i] == labels[pairs.j]).astype(np.float64)

    def cut(similarity: np.ndarray, pull: float = PULL_NATS) -> np.ndarray:
        cost = weight * similarity * (pull / PULL_NATS)
        zero = np.zeros_like(cost)
        return minimise(water["nll"], fat["nll"], PairTerms(pairs.i, pairs.j, zero, cost, cost, zero)).labels

    spatial = choose_sides("spatial", water, fat, mask, phantom.voxel_size_mm, signals, sigma, acquisition)
    choices = {
        "voxel": fat["nll"] < water["nll"],
        "spatial": spatial.chose_fat,
        "closer candidate": np.abs(fat["pdff"] - truth) < np.abs(water["pdff"] - truth),
        "tissue oracle": cut(same_tissue),
        "tissue oracle x4": cut(same_tissue, 4 * PULL_NATS),
    }
    print(f"# {args.phantom} at {args.protocol}: {mask.sum()} tissue voxels, {border.sum()} at fat/water borders")
    print(f"{'choice':18s} {'swap%':>7s} {'gross%':>7s} {'border%':>8s} {'interior%':>10s}")
    swapped = {}
    for name, chose_fat in choices.items():
        pdff = np.where(chose_fat, fat["pdff"], water["pdff"])
        swapped[name] = chose_fat != true_fat
        gross = swapped[name] & (np.abs(pdff - truth) > GROSS_PDFF_ERROR)
        print(f"{name:18s} {100 * swapped[name].mean():7.2f} {100 * gross.mean():7.2f} "
              f"{100 * swapped[name][border].mean():8.2f} {100 * swapped[name][~border].mean():10.2f}")
    print(f"\n{'tissue':18s} {'voxels':>7s} {'border%':>8s} {'voxel':>7s} {'spatial':>8s} {'oracle':>7s}  (swap %)")
    for label in np.unique(labels):
        sel = labels == label
        print(f"{phantom.tissues.get(int(label), str(label)):18s} {sel.sum():7d} {100 * border[sel].mean():8.1f} "
              + " ".join(f"{100 * swapped[k][sel].mean():{w}.1f}"
                         for k, w in (("voxel", 7), ("spatial", 8), ("tissue oracle", 7))))


    print("\nside probability of the spatial choice: mean given : share right, per band")
    right = spatial.chose_fat == true_fat
    open_pairs = grid_pairs(mask, phantom.voxel_size_mm, signals, sigma,
                            np.abs(water["nll"] - fat["nll"]) <= PULL_NATS)
    for name, probability in (("marginal (app)", spatial.side_probability),
                              ("conditional", _conditional(spatial.chose_fat, water, fat, open_pairs))):
        bands = []
        for low, high in ((0.5, 0.6), (0.6, 0.7), (0.7, 0.8), (0.8, 0.9), (0.9, 0.97), (0.97, 0.995)):
            band = (probability >= low) & (probability < high)
            bands.append(f"{probability[band].mean():.2f}:{right[band].mean():.2f}" if band.any() else "-")
        print(f"{name:16s} " + " ".join(bands) + f"  Brier {np.mean((probability - right) ** 2):.4f}  expected swaps "
              f"{100 * np.mean(1 - probability):.2f} % (real {100 * np.mean(~right):.2f} %)"
              f"  below 0.5: {np.sum(probability < 0.5)}")


def _conditional(chose_fat: np.ndarray, water: dict, fat: dict, pairs) -> np.ndarray:
    """The probability of the chosen side given the neighbours' chosen sides (the voxel alone
    flipped): the side probability of the spatial choice before issue 15's stop 30."""
    cost = np.where(chose_fat, fat["nll"], water["nll"])
    other = np.where(chose_fat, water["nll"], fat["nll"])
    flip = np.where(chose_fat[pairs.i] == chose_fat[pairs.j], pairs.e01, -pairs.e01)
    n = chose_fat.size
    evidence = other - cost + np.bincount(pairs.i, flip, minlength=n) + np.bincount(pairs.j, flip, minlength=n)
    return 0.5 * (1 + np.tanh(0.5 * evidence))


if __name__ == "__main__":
    main()
