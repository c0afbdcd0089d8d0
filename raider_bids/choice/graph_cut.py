"""Minimum of a binary pairwise energy by one max-flow (PyMaxflow, Boykov-Kolmogorov).

E(x) = sum_i U_i(x_i) + sum_(i,j) E_ij(x_i, x_j), x_i in {0, 1}. One minimum cut gives the global
minimum when every pair term is submodular (E(0,0) + E(1,1) <= E(0,1) + E(1,0); Kolmogorov &
Zabih 2004). A pair that is not has its same-label costs lowered until it is ("truncation", Rother
et al. 2005): the cut then minimises that slightly changed energy, and how many pairs were changed
is reported. Before cutting, every node whose own preference outweighs the most its undecided
neighbours could ever pull is fixed to it (exact: flipping it alone would lower any labelling's
energy), its pairs become unary terms of those neighbours, and so on for a few rounds (until a
round decides under 1 % of the nodes left: each costs a pass over the pairs left, and the last
rounds decided a few hundred of 100,000): the cut runs on the undecided nodes only.

Why PyMaxflow: its vectorised calls (add_edges, add_grid_tedges) build a graph of millions of
edges from NumPy arrays without a Python loop per edge, it ships wheels for every platform and
Python we support, and it is maintained. thinqpbo (QPBO) would take non-submodular pairs exactly,
but adds terms one call at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import maxflow
import numpy as np


MAX_FIXING_ROUNDS = 20  # rounds of deciding nodes before the cut (each is one pass over the pairs)
MIN_FIXED_SHARE = 0.01  # a round deciding fewer of the undecided nodes than this is the last


@dataclass
class PairTerms:
    """E_ij(a, b) for edges i -> j, each array of shape (M,)."""

    i: np.ndarray
    j: np.ndarray
    e00: np.ndarray
    e01: np.ndarray
    e10: np.ndarray
    e11: np.ndarray

    def select(self, keep: np.ndarray) -> PairTerms:
        return PairTerms(*(a[keep] for a in (self.i, self.j, self.e00, self.e01, self.e10, self.e11)))

    def cost(self, xi: np.ndarray, xj: np.ndarray) -> np.ndarray:
        """E_ij(xi, xj) per edge for label arrays xi, xj (M,)."""
        return np.where(xi, np.where(xj, self.e11, self.e10), np.where(xj, self.e01, self.e00))


@dataclass
class CutResult:
    labels: np.ndarray  # bool (N,)
    fixed_nodes: int  # decided by their own preference before the cut
    cut_nodes: int
    cut_edges: int
    truncated_edges: int  # pairs made submodular by lowering their same-label costs


def energy(labels: np.ndarray, unary0: np.ndarray, unary1: np.ndarray, pairs: PairTerms) -> float:
    """E(x) of a labelling (for checks and tests)."""
    x = np.asarray(labels, dtype=bool)
    return float(np.where(x, unary1, unary0).sum() + pairs.cost(x[pairs.i], x[pairs.j]).sum())


def minimise(unary0: np.ndarray, unary1: np.ndarray, pairs: PairTerms) -> CutResult:
    """Labels minimising E for node costs U_i(0) = unary0, U_i(1) = unary1 (N,) and `pairs`."""
    n = unary0.size
    delta = np.asarray(unary1, dtype=np.float64) - unary0  # cost of label 1 over label 0, per node
    labels = delta < 0
    fixed = np.zeros(n, dtype=bool)
    inner = pairs
    # What each pair can pull its ends by (nats); carried along as the pairs are dropped.
    swing_i = np.maximum(np.abs(pairs.e10 - pairs.e00), np.abs(pairs.e11 - pairs.e01))
    swing_j = np.maximum(np.abs(pairs.e01 - pairs.e00), np.abs(pairs.e11 - pairs.e10))
    # Fix the nodes whose preference outweighs what their undecided neighbours can pull; their pairs
    # become unary terms of those neighbours, which may then be decided in turn.
    for _ in range(MAX_FIXING_ROUNDS):
        pull = np.bincount(inner.i, swing_i, minlength=n) + np.bincount(inner.j, swing_j, minlength=n)
        new = ~fixed & (np.abs(delta) > pull)
        count = int(new.sum())
        if count == 0:
            break
        labels[new] = delta[new] < 0
        fixed |= new
        new_i, new_j = new[inner.i], new[inner.j]
        one = new_i & ~fixed[inner.j]
        xi = labels[inner.i[one]]
        delta += np.bincount(inner.j[one], np.where(xi, inner.e11[one] - inner.e10[one],
                                                     inner.e01[one] - inner.e00[one]), minlength=n)
        one = new_j & ~fixed[inner.i]
        xj = labels[inner.j[one]]
        delta += np.bincount(inner.i[one], np.where(xj, inner.e11[one] - inner.e01[one],
                                                     inner.e10[one] - inner.e00[one]), minlength=n)
        keep = ~(new_i | new_j)
        inner, swing_i, swing_j = inner.select(keep), swing_i[keep], swing_j[keep]
        # A round costs a pass over the remaining pairs: once it decides few, the cut is cheaper.
        if count < MIN_FIXED_SHARE * (n - int(fixed.sum())):
            break
    free = np.flatnonzero(~fixed)
    if free.size == 0:
        return CutResult(labels, int(fixed.sum()), 0, 0, 0)
    compact = np.full(n, -1, dtype=np.int64)
    compact[free] = np.arange(free.size)
    a, b, c, d = inner.e00, inner.e01, inner.e10, inner.e11
    excess = np.maximum(a + d - b - c, 0.0)
    a, d = a - excess / 2, d - excess / 2
    # E_ij = A + (C - A) x_i + (D - C) x_j + (B + C - A - D) (1 - x_i) x_j.
    node_delta = delta[free]
    node_delta += np.bincount(compact[inner.i], c - a, minlength=free.size)
    node_delta += np.bincount(compact[inner.j], d - c, minlength=free.size)
    capacity = np.maximum(b + c - a - d, 0.0)  # >= 0 up to rounding
    graph = maxflow.Graph[float](free.size, inner.i.size)
    nodes = graph.add_nodes(free.size)
    keep = capacity > 0
    graph.add_edges(compact[inner.i[keep]], compact[inner.j[keep]], capacity[keep], np.zeros(int(keep.sum())))
    # A node in the sink segment takes label 1 and cuts its edge from the source: that edge carries
    # the cost of label 1 over label 0 where it is positive, the edge to the sink the rest.
    graph.add_grid_tedges(nodes, np.maximum(node_delta, 0.0), np.maximum(-node_delta, 0.0))
    graph.maxflow()
    labels[free] = graph.get_grid_segments(nodes)
    return CutResult(labels, int(fixed.sum()), int(free.size), int(inner.i.size), int((excess > 0).sum()))
