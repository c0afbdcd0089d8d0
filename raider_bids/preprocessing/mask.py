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


def usable_voxels(echoes: np.ndarray) -> np.ndarray:
    """Voxels of magnitudes (X, Y, Z, n_echoes) that can be fitted: finite at every echo (load_run
    keeps NaN/Inf as NaN so that they are excluded here, not fitted as zeros) and nonzero at some
    echo (zero everywhere: a scanner-zeroed background, which cannot be normalised). Every mask,
    automatic or the user's, is restricted to these."""
    return np.isfinite(echoes).all(axis=-1) & (echoes > 0).any(axis=-1)


def foreground_mask(echoes: np.ndarray) -> np.ndarray:
    """Boolean mask of shape echoes.shape[:-1] from magnitudes of shape (X, Y, Z, n_echoes).

    Otsu's threshold on the log of the echo-averaged magnitude separates noise from tissue over
    orders of magnitude (a linear threshold would cut dark tissue); only usable voxels (finite,
    not zero at every echo) count. An in-plane opening and the removal of specks clean the edges.
    """
    usable = usable_voxels(echoes)
    if usable.sum() < 2:
        return usable
    log_mean = np.log(echoes[usable].mean(axis=-1, dtype=np.float64))
    mask = usable.copy()
    mask[usable] = log_mean > otsu_threshold(log_mean)
    mask = ndi.binary_opening(mask, structure=np.ones((3, 3, 1), dtype=bool))
    labels, n = ndi.label(mask)
    if n > 1:
        sizes = ndi.sum(mask, labels, index=np.arange(1, n + 1))
        keep = np.flatnonzero(sizes >= MIN_COMPONENT_FRACTION * sizes.sum()) + 1
        mask = np.isin(labels, keep)
    return mask
