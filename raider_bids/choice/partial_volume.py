"""Partial volume: the evidence for a border voxel's side from the tissues beside it.

A voxel on a fat/water border holds some of each tissue beside it. Its own echoes often cannot
tell its two candidates apart, and its signal matches neither neighbour, so the signal similarity
does not tie it to either: such voxels were most of the spatial choice's remaining swaps on the
realistic phantoms (docs/water-fat-choice.md). But its complex signal is, to a good approximation,
the sum of its neighbours' tissues' signals, and a magnitude of such a mix has one parameter where
a free candidate has three.

For each undecided voxel with a face neighbour on the other side of a first cut, the mixes tried are
each neighbour alone, k |S_a|, and each pair of a fat-side neighbour a and a water-side neighbour
b, k |c S_a + (1 - c) S_b| for c in MIX_FRACTIONS; S is the complex model signal of the
neighbour's chosen candidate and k a scale in SCALE_RANGE (proton density varies within a
tissue). A mix's PDFF, its fat protons over all its protons, names its side. Where the best mix
explains the voxel's echoes about as well as its own better candidate (within EXCESS_NATS: with
two parameters against three, twice that excess is chi-square with 1 degree of freedom where the
voxel is such a mix; the bound is its 0.999 quantile), the log-likelihood ratio between the best
mix on each side (at most MAX_RATIO_NATS), times MIX_WEIGHT, is added to the voxel's own. A
voxel that no mix of its neighbours explains (a vessel in fat, a thin layer of its own tissue)
keeps its own evidence.

MIX_WEIGHT: the mix's ratio takes the neighbours' signals as exact and is the best of many mixes,
so counted whole it made the side probability overconfident (anatomy phantom, hard protocol: of
voxels given 0.85, 0.75 were right); at a half, 0.80, for nearly all of the swaps it removes
(docs/water-fat-choice.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import chi2

from ..physics.likelihood import rician_nll_echo_major
from ..physics.parameters import PDFF_BOUNDARY, RELIABLE_LLR_NATS
from ..physics.signal_model import Acquisition, complex_signal

MIX_FRACTIONS = np.linspace(0.1, 0.9, 9)  # c: the share of the fat-side neighbour's signal
SCALE_RANGE = (0.7, 1.4)
EXCESS_NATS = 0.5 * float(chi2.ppf(0.999, 1))  # 5.41
MIX_WEIGHT = 0.5
MAX_RATIO_NATS = RELIABLE_LLR_NATS  # the ratio where only one side has a mix that explains the voxel
_CHUNK = 1 << 16  # mixes evaluated at once (bounded memory)


@dataclass
class MixEvidence:
    """For the voxels `index` (mask order): the evidence of their best mixes, MIX_WEIGHT times the
    water side's NLL minus the fat side's (at most MAX_RATIO_NATS; nats, > 0 favours fat)."""

    index: np.ndarray
    log_ratio: np.ndarray
    candidates: int  # voxels whose mixes were tried


def sides_meet(fat: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    """Voxels of `tissue` (bool grid) with a face neighbour of `tissue` on the other side of `fat`
    (bool grid: the fat side); a flat axis has no neighbours along it."""
    fat, water = fat & tissue, ~fat & tissue
    meet = np.zeros(tissue.shape, dtype=bool)
    for a in range(tissue.ndim):
        if tissue.shape[a] < 2:
            continue
        lo = (slice(None),) * a + (slice(None, -1),)
        hi = (slice(None),) * a + (slice(1, None),)
        pair = (fat[lo] & water[hi]) | (water[lo] & fat[hi])
        meet[lo] |= pair
        meet[hi] |= pair
    return meet


def face_neighbours(mask: np.ndarray, voxels: np.ndarray) -> np.ndarray:
    """Mask-order indices (len(voxels), 6) of the face neighbours of `voxels` (mask-order indices)
    on the grid `mask`; -1 where a neighbour is outside the grid or the mask."""
    index = np.full(mask.shape, -1, dtype=np.int32)
    index[mask] = np.arange(int(mask.sum()), dtype=np.int32)
    coords = np.unravel_index(np.flatnonzero(mask)[voxels], mask.shape)
    out = np.full((voxels.size, 6), -1, dtype=np.int32)
    for a in range(3):
        for k, step in enumerate((-1, 1)):
            moved = coords[a] + step
            inside = (moved >= 0) & (moved < mask.shape[a])
            at = [c[inside] for c in coords]
            at[a] = moved[inside]
            out[inside, 2 * a + k] = index[tuple(at)]
    return out


def mix_evidence(mask: np.ndarray, signals: np.ndarray, sigma: float, acquisition: Acquisition,
                 chosen: dict[str, np.ndarray], chose_fat: np.ndarray, own_nll: np.ndarray,
                 undecided: np.ndarray) -> MixEvidence:
    """The mixes' evidence for the `undecided` voxels (bool (N,), mask order) that have a face
    neighbour on the other side of `chose_fat` (bool (N,)), from the chosen candidates `chosen`
    (s0, pdff, r2star_s; (N,)), the magnitudes `signals` (N, n_echoes) with noise `sigma`, and
    each voxel's better candidate's NLL `own_nll` (N,; nats): only voxels whose best mix comes
    within EXCESS_NATS of it are returned."""
    fat = np.zeros(mask.shape, dtype=bool)
    fat[mask] = chose_fat
    voxels = np.flatnonzero(undecided & sides_meet(fat, mask)[mask])
    neighbours = face_neighbours(mask, voxels)
    valid = neighbours >= 0
    at = np.maximum(neighbours, 0)
    if voxels.size == 0:
        return MixEvidence(voxels, np.zeros(0), 0)
    needed = np.unique(neighbours[valid])
    s0, pdff = chosen["s0"][needed], chosen["pdff"][needed]
    shapes = complex_signal(acquisition, s0, pdff, chosen["r2star_s"][needed]).astype(np.complex64)
    slot = np.searchsorted(needed, at)  # row of each neighbour in `shapes` (garbage where not valid)
    fat_protons, protons = s0 * pdff, s0
    # float32: the NLL's differences that matter here are tenths of a nat, and its Bessel series is
    # shorter in float32
    measured = np.asarray(signals, dtype=np.float32)
    best = np.full((2, voxels.size), np.inf)  # best NLL of a water-side and a fat-side mix

    def score(rows: np.ndarray, m: np.ndarray, mix: np.ndarray, fat_side: np.ndarray) -> None:
        """Fold the NLL of the mixes `mix` (E, n; complex) of voxels `rows` (sorted) with echoes `m`
        (E, n) into best."""
        magnitude = np.abs(mix)
        scale = np.clip(np.einsum("en,en->n", magnitude, m) / np.maximum(np.einsum("en,en->n", magnitude, magnitude),
                                                                              1e-30), *SCALE_RANGE)
        nll, _ = rician_nll_echo_major(torch.from_numpy(m), torch.from_numpy(magnitude * scale), sigma, score=False)
        nll = nll.numpy()
        for side in (0, 1):  # rows come sorted: the minimum over each run of one row
            pick = fat_side == side
            r, v = rows[pick], nll[pick]
            if r.size:
                starts = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
                first = r[starts]
                best[side, first] = np.minimum(best[side, first], np.minimum.reduceat(v, starts))

    # Each neighbour alone.
    rows, k = np.nonzero(valid)
    for start in range(0, rows.size, _CHUNK):
        r = rows[start:start + _CHUNK]
        s = slot[r, k[start:start + _CHUNK]]
        score(r, measured[voxels[r]].T.copy(), shapes[s].T, chose_fat[needed[s]])
    # Each pair of a fat-side and a water-side neighbour.
    fat_nb = valid & chose_fat[at]
    water_nb = valid & ~chose_fat[at]
    rows, ka, kb = np.nonzero(fat_nb[:, :, None] & water_nb[:, None, :])
    for start in range(0, rows.size, _CHUNK):
        r = rows[start:start + _CHUNK]
        a, b = slot[r, ka[start:start + _CHUNK]], slot[r, kb[start:start + _CHUNK]]
        m, shape_a, shape_b = measured[voxels[r]].T.copy(), shapes[a].T, shapes[b].T
        for c in MIX_FRACTIONS.astype(np.float32):
            fat_share = (c * fat_protons[a] + (1 - c) * fat_protons[b]) / np.maximum(
                c * protons[a] + (1 - c) * protons[b], 1e-30)
            score(r, m, c * shape_a + (1 - c) * shape_b, fat_share >= PDFF_BOUNDARY)
    explained = best.min(axis=0) < own_nll[voxels] + EXCESS_NATS
    log_ratio = MIX_WEIGHT * np.clip(best[0] - best[1], -MAX_RATIO_NATS, MAX_RATIO_NATS)  # inf: one side no mix
    return MixEvidence(voxels[explained], log_ratio[explained], int(voxels.size))
