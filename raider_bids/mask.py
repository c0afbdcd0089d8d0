"""Automatic foreground mask: voxels that hold signal rather than air or a zeroed background."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

MIN_COMPONENT_FRACTION = 0.001  # components smaller than this share of the mask are noise specks


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Threshold maximising the between-class variance of a 1-D sample."""
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(hist)
    weight_high = weight_low[-1] - weight_low
    cum_mass = np.cumsum(hist * centres)
    mean_low = cum_mass / np.maximum(weight_low, 1)
    mean_high = (cum_mass[-1] - cum_mass) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(centres[np.argmax(between)])


def foreground_mask(echoes: np.ndarray) -> np.ndarray:
    """Boolean mask of shape echoes.shape[:-1] from magnitudes of shape (X, Y, Z, n_echoes).

    Otsu's threshold on the log of the echo-averaged magnitude separates noise from tissue over
    orders of magnitude (a linear threshold would cut dark tissue); exactly-zero voxels (a
    scanner-zeroed background) never count. An in-plane opening and the removal of specks
    clean the edges.
    """
    mean = echoes.mean(axis=-1)
    positive = mean > 0
    if positive.sum() < 2:
        return positive
    log_mean = np.log(mean[positive])
    mask = positive.copy()
    mask[positive] = log_mean > otsu_threshold(log_mean)
    mask = ndi.binary_opening(mask, structure=np.ones((3, 3, 1), dtype=bool))
    labels, n = ndi.label(mask)
    if n > 1:
        sizes = ndi.sum(mask, labels, index=np.arange(1, n + 1))
        keep = np.flatnonzero(sizes >= MIN_COMPONENT_FRACTION * sizes.sum()) + 1
        mask = np.isin(labels, keep)
    return mask
