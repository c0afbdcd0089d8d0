"""Automatic foreground mask: voxels whose echoes hold signal clearly above the noise floor.

The rule is referenced to the noise level sigma (std of each complex channel). Where a voxel holds
noise only, each magnitude m_e is Rayleigh, so m_e^2 / sigma^2 is chi-square with 2 degrees of
freedom, independent across echoes, and the prefix sums S_k = sum_{e <= k} m_e^2 / sigma^2 are
chi-square with 2k. A voxel is kept when S_k exceeds the chi2(2k) quantile at false-alarm
probability NOISE_FALSE_ALARM / E for some k = 1..E (E echoes; Bonferroni over the E tests, so a
noise voxel passes with probability at most NOISE_FALSE_ALARM). The first prefixes keep dark,
fast-decaying tissue (very high R2*: only the early echoes carry signal); the long ones keep
low-SNR tissue whose signal lasts (its evidence adds up over the echoes).

One spatial step, which only adds: voxels face-connected to those kept, through voxels that pass
the same test at the laxer GROW_FALSE_ALARM, are kept too (hysteresis). Dark tissue lies in
regions, noise is independent from voxel to voxel: tissue whose first echo is only 6-10 sigma
(R2* 2000 1/s at 3 T, S0 50 sigma) is kept whole where the strict test alone drops up to one voxel
in twenty, while a voxel of air is only at risk where it touches the mask (and then passes with
probability GROW_FALSE_ALARM). Nothing else: no opening (it removes 1-voxel structures such as skin and thin
fat layers), no hole filling (gas and lungs hold noise and are dropped), no removal of small
components (at NOISE_FALSE_ALARM a volume of air yields about one lone voxel per million, and
a size rule would drop isolated tissue voxels of a grid without background).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy import stats

# Probability that a voxel holding noise only is kept. 1e-6: a million noise voxels (a whole
# 256 x 256 x 16 field of view of air) let about one through, while the first-echo threshold stays
# low (about 5.6 sigma with 6 echoes): tissue 8 sigma above the noise on its first echo passes
# with probability > 0.99. The Bonferroni split over the echoes costs little (the quantile moves
# with log(E)).
NOISE_FALSE_ALARM = 1e-6
# Probability that a noise voxel touching the mask joins it. 1e-3: the first-echo threshold drops
# to about 4.2 sigma (6 echoes), and along a border of 10,000 noise voxels about 10 join (their
# own neighbours in air join with probability 1e-3 again: no chains).
GROW_FALSE_ALARM = 1e-3
RULE = ("noise test: kept where, for some k, the sum over the first k echoes of magnitude^2 / sigma^2 "
        "exceeds the chi-square(2k) quantile at false-alarm probability FalseAlarmProbability / n_echoes; "
        "then grown into face-connected voxels passing the test at GrowFalseAlarmProbability")
# The same rule, with its numbers, as the mask's sidecar and the report name its source.
AUTOMATIC_MASK = ("automatic (voxels standing above the noise: chi-square test of the sum of squared magnitudes "
                  f"over the first k echoes, for each k, false-alarm probability {NOISE_FALSE_ALARM:g} per voxel, "
                  f"grown into neighbours passing it at {GROW_FALSE_ALARM:g})")


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


def provisional_tissue(echoes: np.ndarray, usable: np.ndarray | None = None) -> np.ndarray:
    """A sample of tissue voxels to estimate sigma on before the mask is known: the usable voxels
    in the upper class of Otsu's threshold on the log of the echo-mean magnitude (where there is
    no background, the brighter tissue; the noise estimate needs only some tissue)."""
    usable = usable_voxels(echoes) if usable is None else usable
    if usable.sum() < 2:
        return usable.copy()
    log_mean = np.log(echoes[usable].mean(axis=-1, dtype=np.float64))
    sample = usable.copy()
    sample[usable] = log_mean > otsu_threshold(log_mean)
    return sample


def noise_thresholds(n_echoes: int, false_alarm: float = NOISE_FALSE_ALARM) -> np.ndarray:
    """The thresholds on the prefix sums S_k (in units of sigma^2), k = 1..n_echoes."""
    return stats.chi2.isf(false_alarm / n_echoes, 2 * np.arange(1, n_echoes + 1))


def above_noise(echoes: np.ndarray, sigma: float, *false_alarms: float) -> list[np.ndarray]:
    """Whether each voxel of magnitudes (..., n_echoes) passes the noise test (module docstring), at
    each false-alarm probability given. Non-finite voxels fail. Works one echo at a time: one
    float64 volume besides the input."""
    if not (np.isfinite(sigma) and sigma > 0):
        raise ValueError(f"the noise level must be positive and finite, not {sigma}")
    thresholds = [noise_thresholds(echoes.shape[-1], p) for p in false_alarms]
    prefix = np.zeros(echoes.shape[:-1])
    passed = [np.zeros(echoes.shape[:-1], dtype=bool) for _ in false_alarms]
    for e in range(echoes.shape[-1]):
        prefix += np.square(echoes[..., e], dtype=np.float64) / sigma**2
        for kept, threshold in zip(passed, thresholds):
            kept |= prefix > threshold[e]  # NaN compares False
    return passed


def foreground_mask(echoes: np.ndarray, sigma: float, false_alarm: float = NOISE_FALSE_ALARM,
                    grow_false_alarm: float | None = GROW_FALSE_ALARM,
                    usable: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask of shape echoes.shape[:-1] from magnitudes of shape (X, Y, Z, n_echoes) and the
    noise level `sigma`: the usable voxels (finite, not zero at every echo) that pass the noise test,
    grown into their neighbours that pass it at `grow_false_alarm` (None: not grown)."""
    usable = usable_voxels(echoes) if usable is None else usable
    if grow_false_alarm is None:
        return usable & above_noise(echoes, sigma, false_alarm)[0]
    strict, lax = above_noise(echoes, sigma, false_alarm, grow_false_alarm)
    return ndi.binary_propagation(usable & strict, mask=usable & lax)  # face neighbours


def automatic_mask(echoes: np.ndarray, sigma: float, usable: np.ndarray) -> tuple[np.ndarray, dict]:
    """The default foreground mask (foreground_mask) of magnitudes (X, Y, Z, n_echoes) and what the
    provenance records of it: the rule, its numbers, and how many usable voxels it dropped as noise."""
    mask = foreground_mask(echoes, sigma, usable=usable)
    n_usable = int(usable.sum())
    return mask, {"Rule": RULE, "FalseAlarmProbability": NOISE_FALSE_ALARM,
                  "GrowFalseAlarmProbability": GROW_FALSE_ALARM, "UsableVoxels": n_usable,
                  "DroppedAsNoise": n_usable - int(mask.sum())}
