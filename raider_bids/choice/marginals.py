"""Marginal probabilities of a binary Potts energy, by loopy belief propagation (sum-product).

The energy E(x) = sum_i U_i(x_i) + sum_(i,j) w_ij [x_i != x_j], in nats, read as the Gibbs
distribution p(x) ~ exp(-E(x)): with the candidates' Rician NLL as the unary terms it is the
posterior of the sides under the pair terms' prior. The marginal p(x_i = 1) accounts for the
uncertainty of the neighbours' own sides, which the conditional probability given the neighbours'
chosen sides does not: where a whole region of ambiguous voxels could as well lie on the other
side, each of its voxels gets the region's doubt rather than its neighbours' agreement. Exact on
a graph without loops (a chain, a tree); on a grid the standard approximation (Yedidia, Freeman &
Weiss 2003). Messages are kept as log-odds, so one message per edge and direction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .graph_cut import PairTerms

MAX_ITERATIONS = 50
TOLERANCE_NATS = 1e-2  # a message change below which a pair is settled (a probability moves by < 0.0025)


@dataclass
class Beliefs:
    log_odds: np.ndarray  # (N,) log p(x_i = 1) - log p(x_i = 0), nats
    iterations: int
    change_nats: float  # largest change of a message in the last iteration


def marginal_log_odds(unary0: np.ndarray, unary1: np.ndarray, pairs: PairTerms) -> Beliefs:
    """Log-odds of label 1 per node for node costs U_i(0) = unary0, U_i(1) = unary1 (N,) and Potts
    `pairs` (E_ij = w_ij where the labels differ, 0 where they agree: e00 = e11 = 0, e01 = e10 = w)."""
    if np.any(pairs.e00) or np.any(pairs.e11) or not np.array_equal(pairs.e01, pairs.e10):
        raise ValueError("belief propagation here takes Potts pair terms only")
    n = np.asarray(unary0).size
    # float32: the messages are bounded by the pair weights (nats), and the grid's arrays are large
    belief = (np.asarray(unary0, dtype=np.float64) - unary1).astype(np.float32)  # own log-odds, then the belief
    # A Potts pair passes on a cavity log-odds h as 2 artanh(tanh(w / 2) tanh(h / 2)).
    coupling = np.tanh(np.float32(0.5) * np.asarray(pairs.e01, dtype=np.float32))
    to_j = np.zeros(pairs.i.size, np.float32)  # message i -> j: the log-odds it adds to x_j
    to_i = np.zeros(pairs.i.size, np.float32)
    active = np.arange(pairs.i.size, dtype=np.int32)  # int32: half the memory of the pairs' indices
    change, iterations = 0.0, 0
    # Only the messages of pairs next to a belief that moved are updated again: most of a grid's
    # pairs join voxels sure of their side and settle in a few iterations (cost ~ the unsettled pairs).
    while active.size and iterations < MAX_ITERATIONS:
        iterations += 1
        i, j, k = pairs.i[active], pairs.j[active], coupling[active]
        step_j = 2 * np.arctanh(k * np.tanh(0.5 * (belief[i] - to_i[active]))) - to_j[active]
        step_i = 2 * np.arctanh(k * np.tanh(0.5 * (belief[j] - to_j[active]))) - to_i[active]
        to_j[active] += step_j
        to_i[active] += step_i
        moved = np.bincount(j, step_j, minlength=n) + np.bincount(i, step_i, minlength=n)
        belief += moved
        change = float(max(np.abs(step_j).max(), np.abs(step_i).max()))
        if change < TOLERANCE_NATS:
            break
        # A belief far from 0 moves its probability (and its messages) little: weigh its move by
        # the logistic's slope relative to its slope at even odds.
        unsettled = np.abs(moved) * (1 - np.tanh(0.5 * belief) ** 2) >= TOLERANCE_NATS
        active = np.flatnonzero(unsettled[pairs.i] | unsettled[pairs.j]).astype(np.int32)
    return Beliefs(belief, iterations, change)
