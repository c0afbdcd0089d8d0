"""Trained networks' candidates taken to their side's maximum likelihood where the side is not settled.

A network's candidate lies a few tenths of a nat above the maximum likelihood of its side, more in
dark tissue (an iron-loaded liver at 3 T: the water network 0.39 nats per voxel, the fat network
0.22). Where the two sides' likelihoods differ by less than that (the same liver: 0.10 nats per
voxel at the maximum likelihood), the networks' errors, not the data, pick the side, and the
spatial choice, which sums them over an organ, moves the whole organ to the wrong one (PDFF 0.99
for 0.05, with some seeds). So where |LLR| < AMBIGUOUS_BELOW_NATS, each candidate is refined by the
conventional fit's bounded Rician Levenberg-Marquardt steps from the network's estimate, within its
own side's PDFF range, before the choice. So are the voxels whose losing candidate is far above
its side's maximum, which makes a side look decided that is not: where the Gauss-Newton model of
its first step brings it within AMBIGUOUS_BELOW_NATS of the winner (networks trained on a slice's
budget, at a hard protocol: 8.5 % swaps on the liver-derived phantom without this, 4.3 % with it,
the fit's 4.3 %). Elsewhere the candidates are the networks' own.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch

from ..physics.parameters import PDFF_RANGES
from ..physics.signal_model import Acquisition
from ..physics.solver import LM_ITERATIONS, gauss_newton_gain, refine_voxels
from .base import Estimates, choose_by_likelihood

# Above this |LLR| (nats) no network error seen moved a voxel's side: the networks' candidates are
# within about 0.5 nats of their side's maximum likelihood on average, 3-4 nats at the 99th
# percentile of the in silico grid (docs/shared-machine.md).
AMBIGUOUS_BELOW_NATS = 5.0
RULE = (f"where |LLR| < {AMBIGUOUS_BELOW_NATS:g} nats, or where the losing candidate lowered by the "
        f"Gauss-Newton gain of its first step comes within {AMBIGUOUS_BELOW_NATS:g} nats of the winner, each "
        f"network's candidate refined from its estimate by up to {LM_ITERATIONS} bounded Levenberg-Marquardt "
        "steps on the Rician likelihood (the fit's), PDFF kept on its side; then the per-voxel choice")


def refine_ambiguous(estimates: Estimates, signals: np.ndarray, acquisition: Acquisition, sigma: float,
                     device: torch.device) -> Estimates:
    """`estimates` with the water and fat candidates refined where the side is not settled (the
    module's rule) and each voxel's side chosen again by likelihood; `signals` (N, n_echoes) and
    `sigma` in image units. What was done goes into details["Refinement"]."""
    t = time.perf_counter()
    water, fat = (dict(estimates.candidates[kind]) for kind in ("water", "fat"))
    close = np.abs(water["nll"] - fat["nll"]) < AMBIGUOUS_BELOW_NATS
    reachable = _losing_side_may_win(water, fat, ~close, signals, acquisition, sigma, device)
    index = np.flatnonzero(close | reachable)
    for kind, candidate in (("water", water), ("fat", fat)):
        if not index.size:
            break
        start = tuple(candidate[k][index] for k in ("s0", "pdff", "r2star_s"))
        result = refine_voxels(signals[index], acquisition, PDFF_RANGES[kind], sigma, start, device=device)
        for key, value in (("s0", result.s0), ("pdff", result.pdff), ("r2star_s", result.r2star_s),
                           ("nll", result.loss)):
            candidate[key] = candidate[key].copy()
            candidate[key][index] = value
    refined = choose_by_likelihood(water, fat)
    details = estimates.details | {"Refinement": {
        "Rule": RULE, "BelowNats": AMBIGUOUS_BELOW_NATS,
        "RefinedShare": index.size / close.size if close.size else 0.0,
        "LosingSideShare": float(reachable.mean()) if close.size else 0.0,
        "ChangedSideShare": float((refined.chose_fat != estimates.chose_fat).mean()) if close.size else 0.0,
        "Seconds": time.perf_counter() - t}}
    return replace(refined, weights=estimates.weights, training=estimates.training, networks=estimates.networks,
                   details=details)


def _losing_side_may_win(water: dict, fat: dict, where: np.ndarray, signals: np.ndarray, acquisition: Acquisition,
                         sigma: float, device: torch.device) -> np.ndarray:
    """Voxels of `where` whose losing candidate, lowered by the gain the Gauss-Newton model
    predicts for its first refinement step, comes within AMBIGUOUS_BELOW_NATS of the winner: a
    network far from its side's maximum (an undertrained one, or a side it fits badly) makes the
    side look decided when it is not."""
    may = np.zeros_like(where)
    for kind, loser, winner in (("water", water, fat), ("fat", fat, water)):
        index = np.flatnonzero(where & (loser["nll"] > winner["nll"]))
        if index.size:
            start = tuple(loser[k][index] for k in ("s0", "pdff", "r2star_s"))
            gain = gauss_newton_gain(signals[index], acquisition, PDFF_RANGES[kind], sigma, start, device)
            may[index] = loser["nll"][index] - gain < winner["nll"][index] + AMBIGUOUS_BELOW_NATS
    return may
