"""The choice of each voxel's side, water- or fat-dominant, from its two candidates.

"voxel" (the paper): the candidate with the lower Rician NLL.

"spatial": real tissue is piecewise smooth, so a voxel whose own data barely prefer a side should
follow the neighbours of its own tissue. The sides minimise, over the run's 3-D grid,

    E = sum_i NLL_i(side_i) + sum_(i,j) w_ij g_ij [side_i != side_j],

the unary terms in nats, the pair terms over the 6-neighbourhood (4 on a single slice), by graph
cut (graph_cut; every pair term is submodular, so the cut is the global minimum). g_ij says how
alike the two voxels' measured echoes are: d_ij = sum_e (m_ie - m_je)^2 / (2 sigma^2) is chi-square
with n_echoes degrees of freedom for two voxels of the same tissue, and
g_ij = exp(-max(d_ij - n_echoes, 0) / (SIMILARITY_SCALE n_echoes)): 1 for signals alike up to noise,
1/e where they differ by about 4 sigma per echo (root mean square), ~0 across real borders, so a
thin fat layer or a border is never pulled across by the tissue beside it (a contrast-sensitive
Potts model, as in interactive segmentation). The weights need no per-scan tuning: w_ij is
proportional to 1/distance (voxel sizes from the affine), scaled so that the whole neighbourhood
of an interior voxel pulls at most PULL_NATS = RELIABLE_LLR_NATS (5 nats): a voxel whose data
prefer a side by more than that (where the per-voxel choice is reliable, measured on synthetic
truth) keeps it whatever its neighbours say, and a region of ambiguous voxels of one tissue takes
the side the sum of its evidence favours. PULL_NATS and SIMILARITY_SCALE were chosen on synthetic
phantoms (docs/water-fat-choice.md): a penalty on PDFF differences between neighbours (tried
first) pulled thin fat layers and borders across, this one does not.

A voxel on a fat/water border matches neither neighbour, so the pair terms leave it to its own,
often ambiguous, evidence. A first cut gives its neighbours their sides; where a mix of those
neighbours' signals explains its echoes, the mix's evidence for a side is added to its own
(partial_volume), and the energy is minimised again (anatomy phantom, hard protocol: swaps 5.1 %
to 3.5 %; docs/water-fat-choice.md).

The probability that the chosen side is right: with the per-voxel choice, the logistic of the
candidates' log-likelihood ratio (equal prior odds on the two sides). With the spatial choice, the
marginal probability of the chosen side under the energy read as a Gibbs distribution
(p ~ exp(-E), the NLL as the likelihood and the pair terms as the prior), by loopy belief
propagation (marginals). The conditional probability given the neighbours' chosen sides, used
before, was overconfident where a whole ambiguous region can lie on either side (simulated hard
protocol: of voxels given 0.94, 0.85 were right; docs/water-fat-choice.md). The chosen sides are
the energy's minimum, and where they disagree with the marginal the probability is below 0.5.
Pairs of two voxels whose own evidence exceeds PULL_NATS are never formed (they cannot change the
cut, and forming them cost most of the choice's time): such a voxel's probability counts only its
undecided neighbours' messages (below 0.993 in under 0.2 % of such voxels on the phantoms at the
hard protocol; the least 0.68).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, TypeVar

import numpy as np

from ..physics.parameters import AMBIGUOUS_LLR_NATS, RELIABLE_LLR_NATS
from ..physics.signal_model import Acquisition
from .graph_cut import PairTerms, minimise
from .marginals import marginal_log_odds
from .partial_volume import EXCESS_NATS, MAX_RATIO_NATS, MIX_FRACTIONS, MIX_WEIGHT, SCALE_RANGE, mix_evidence

PULL_NATS = RELIABLE_LLR_NATS
SIMILARITY_SCALE = 8.0
NEIGHBOURHOOD = "6-connected (4 on a single slice)"
T = TypeVar("T")


@dataclass
class SideChoice:
    """Per voxel (N,) in mask order: the chosen side and the probability that it is right."""

    chose_fat: np.ndarray  # bool
    # 0.5-1 per voxel; with the spatial choice below 0.5 where the minimum and the marginal disagree.
    side_probability: np.ndarray
    mode: str
    ambiguous_share: float  # share with |LLR| < AMBIGUOUS_LLR_NATS
    changed_share: float  # share whose side differs from the per-voxel choice
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def expected_wrong_share(self) -> float:
        """The share of voxels expected on the wrong side: the mean of 1 - side_probability."""
        return float(np.mean(1 - self.side_probability)) if self.side_probability.size else 0.0


def choose_sides(mode: str, water: dict[str, np.ndarray], fat: dict[str, np.ndarray], mask: np.ndarray,
                 voxel_size_mm: tuple[float, float, float], signals: np.ndarray, sigma: float,
                 acquisition: Acquisition, threads: int = 1) -> SideChoice:
    """Sides for candidates `water` and `fat` (each with s0, pdff, r2star_s and nll, (N,) in the
    order of mask.nonzero()) on the grid `mask` (3-D bool, N voxels true) of magnitudes `signals`
    (N, n_echoes) of `acquisition` with noise level `sigma` (image units). With `threads` >= 2 (the
    run's --nprocs) the pairs' axes, and then the cut and the marginals, are computed side by side:
    the same results, in less time."""
    llr = water["nll"] - fat["nll"]  # > 0: the data prefer fat
    per_voxel = llr > 0
    ambiguous = float(np.mean(np.abs(llr) < AMBIGUOUS_LLR_NATS))
    if mode == "voxel":
        return SideChoice(per_voxel, _logistic(np.abs(llr)), mode, ambiguous, 0.0)
    if mode != "spatial":
        raise ValueError(f"unknown choice mode {mode!r}")
    start = time.perf_counter()
    # A voxel preferring a side by more than PULL_NATS keeps it whatever its neighbours (their pull
    # is at most that): pairs of two such voxels cannot change the cut and are never formed.
    open_ = np.abs(llr) <= PULL_NATS
    pairs = grid_pairs(mask, voxel_size_mm, signals, sigma, open_, threads)
    # A first cut gives the border voxels' neighbours their sides; the mixes of those neighbours'
    # signals then add their evidence (partial_volume), and the energy is minimised again.
    first = minimise(water["nll"], fat["nll"], pairs)
    chosen = {key: np.where(first.labels, fat[key], water[key]) for key in ("s0", "pdff", "r2star_s")}
    mixes = mix_evidence(mask, signals, sigma, acquisition, chosen, first.labels,
                         np.minimum(water["nll"], fat["nll"]), open_)
    extra = np.zeros(llr.size)  # the mixes' log-likelihood ratio, added to the voxel's own (> 0: fat)
    extra[mixes.index] = mixes.log_ratio
    unary_fat = fat["nll"] - extra
    result, beliefs = _side_by_side(threads, partial(minimise, water["nll"], unary_fat, pairs),
                                    partial(marginal_log_odds, water["nll"], unary_fat, pairs))
    chose_fat = result.labels
    evidence = np.where(chose_fat, beliefs.log_odds, -beliefs.log_odds)  # beliefs: log-odds of the fat side
    details = {"Energy": "sum of the candidates' Rician NLL (nats), with the partial-volume evidence of border "
                         "voxels, + sum over neighbours of w_ij g_ij [different sides]",
               "Similarity": "g_ij = exp(-max(d_ij - E, 0) / (SimilarityScale E)), d_ij = sum over the E "
                             "echoes of (m_i - m_j)^2 / (2 sigma^2)",
               "SimilarityScale": SIMILARITY_SCALE, "Neighbourhood": NEIGHBOURHOOD, "PullNats": PULL_NATS,
               "Weights": "w_ij proportional to 1 / distance (mm); an interior voxel's weights sum to PullNats",
               "NeighbourWeightsNats": pairs.axis_weights, "Solver": "one max-flow (PyMaxflow)",
               "PartialVolume": {
                   "Rule": "a voxel with |LLR| <= PullNats and a face neighbour on the other side of a first cut: "
                           "its echoes against k |S_a| and k |c S_a + (1 - c) S_b| (S: a neighbour's chosen "
                           "candidate's complex signal, a fat side, b water side); where the best comes within "
                           "ExcessNats of its own better candidate, MixWeight times the NLL ratio of the best "
                           "water- and fat-side mix (at most MaxRatioNats) is added to its own",
                   "MixWeight": MIX_WEIGHT,
                   "MixFractions": [round(float(c), 3) for c in MIX_FRACTIONS], "ScaleRange": list(SCALE_RANGE),
                   "ExcessNats": round(EXCESS_NATS, 3), "MaxRatioNats": MAX_RATIO_NATS,
                   "TriedVoxels": mixes.candidates, "ExplainedVoxels": int(mixes.index.size),
                   "ChangedVoxels": int(np.sum(result.labels != first.labels))},
               "FixedVoxels": result.fixed_nodes, "CutVoxels": result.cut_nodes, "CutPairs": result.cut_edges,
               "TruncatedPairs": result.truncated_edges,
               "SideProbability": "marginal of the chosen side under exp(-energy), by loopy belief propagation",
               "BeliefIterations": beliefs.iterations, "BeliefChangeNats": round(beliefs.change_nats, 6),
               "Seconds": round(time.perf_counter() - start, 3)}
    return SideChoice(chose_fat, _logistic(evidence), mode, ambiguous, float(np.mean(chose_fat != per_voxel)),
                      details)


_CHUNK = 1 << 18  # neighbour pairs whose echo differences are formed at once


@dataclass
class GridPairs(PairTerms):
    axis_weights: list[float] = field(default_factory=list)  # nats per axis (0 where the grid is flat)


def grid_pairs(mask: np.ndarray, voxel_size_mm, signals: np.ndarray, sigma: float,
               needed: np.ndarray | None = None, threads: int = 1) -> GridPairs:
    """The pair terms w_ij g_ij [different sides] between neighbouring voxels of `mask` along each
    axis, for magnitudes `signals` (N, n_echoes) in mask order; only the pairs with at least one
    end `needed` (bool (N,); None: all). With `threads` >= 2 the axes are formed side by side."""
    index = np.full(mask.shape, -1, dtype=np.int32)  # int32: half the memory of the pairs' ends
    index[mask] = np.arange(int(mask.sum()), dtype=np.int32)
    spacing = np.abs(np.asarray(voxel_size_mm, dtype=np.float64))
    active = [a for a in range(3) if mask.shape[a] > 1]
    norm = sum(2 / spacing[a] for a in active)
    weights = [PULL_NATS / spacing[a] / norm if a in active else 0.0 for a in range(3)]
    m = np.asarray(signals, dtype=np.float32) / np.float32(np.sqrt(2) * sigma)  # differences in noise units
    n_echoes = m.shape[1]

    def along(a: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        lo = index[(slice(None),) * a + (slice(None, -1),)]
        hi = index[(slice(None),) * a + (slice(1, None),)]
        both = (lo >= 0) & (hi >= 0)
        i, j = lo[both], hi[both]
        if needed is not None:
            keep = needed[i] | needed[j]
            i, j = i[keep], j[keep]
        distance = np.zeros(i.size, dtype=np.float32)
        for start in range(0, i.size, _CHUNK):  # (chunk, n_echoes) at a time: bounded memory
            d = m[i[start:start + _CHUNK]] - m[j[start:start + _CHUNK]]
            distance[start:start + _CHUNK] = np.einsum("ne,ne->n", d, d)
        distance -= n_echoes
        np.maximum(distance, 0, out=distance)
        distance *= np.float32(-1 / (SIMILARITY_SCALE * n_echoes))
        return i, j, np.exp(distance, out=distance) * np.float32(weights[a])

    per_axis = _side_by_side(threads, *(partial(along, a) for a in active))
    i = np.concatenate([p[0] for p in per_axis]) if per_axis else np.zeros(0, np.int32)
    j = np.concatenate([p[1] for p in per_axis]) if per_axis else np.zeros(0, np.int32)
    cost = np.concatenate([p[2] for p in per_axis]) if per_axis else np.zeros(0, np.float32)
    same = np.zeros_like(cost)
    return GridPairs(i, j, same, cost, cost, same, axis_weights=[round(x, 4) for x in weights])


def _side_by_side(threads: int, *tasks: Callable[[], T]) -> list[T]:
    """Each task's result, in order: with `threads` >= 2 on up to that many Python threads (NumPy
    releases the GIL in its operations on large arrays), else one after the other. The tasks are
    independent, so their results do not depend on the threads."""
    if threads < 2 or len(tasks) < 2:
        return [task() for task in tasks]
    with ThreadPoolExecutor(min(threads, len(tasks))) as pool:
        futures = [pool.submit(task) for task in tasks]
        return [future.result() for future in futures]


def _logistic(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * x))  # 1 / (1 + e^-x) without overflow
