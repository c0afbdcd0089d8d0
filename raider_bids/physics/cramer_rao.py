"""Cramer-Rao lower bounds of PDFF and R2* at an estimate, from the Rician Fisher information of
the magnitude signal model (signal_model: |S_k| = S0 |1 - p + p c_k| exp(-R2* t_k)).

A magnitude m with amplitude A and noise sigma (per complex channel) has the Rician log-likelihood
log(m / s^2) - (m^2 + A^2) / (2 s^2) + log I0(m A / s^2), whose score in A is
(m I1(z) / I0(z) - A) / s^2, z = m A / s^2. Its variance, the information about A, is
f(A / s) / s^2 with f(a) = E[(x I1(a x) / I0(a x) - a)^2], x ~ Rice(a, 1): 0 at a = 0 (~a^2 there)
and 1 - 1/(2 a^2) - 1/(4 a^4) + O(a^-6) at high SNR, where the noise is Gaussian (the first term
from the score's expansion in 1/a, the second measured by quadrature). The echoes are independent,
so the information about theta = (S0, PDFF, R2*) is F = J' diag(f(A_k / s) / s^2) J with
J = dA/dtheta, and the bounds are sqrt(diag(F^-1)).
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
from scipy import special

from ..resources import map_chunks
from .parameters import R2STAR_MAX_S
from .signal_model import Acquisition
from .solver import MagnitudeJacobian

# f is tabulated up to TABLE_MAX_SNR and given by its asymptotic series above (error < 2e-10 there).
TABLE_MAX_SNR = 40.0
TABLE_STEP = 0.01
_QUADRATURE_NODES = 128  # Gauss-Legendre nodes over a +- 12 (the integrand is analytic there): ~1e-14
_QUADRATURE_HALF_WIDTH = 12.0  # in sigma: beyond it the Rician density is below 1e-30
# Reported where the bound exceeds these (a PDFF SD of a whole fraction, or an R2* SD of the fit's
# whole range, says only that the data do not determine the parameter), or F is singular.
PDFF_SD_MAX = 1.0
R2STAR_SD_MAX_S = R2STAR_MAX_S
# Below this determinant of F's correlation matrix (1 for independent parameters), rounding
# (~1e-16) would leave F^-1 with under 4 digits: such voxels are reported at the caps.
_MIN_CORRELATION_DET = 1e-12
_CHUNK = 65536  # voxels at once, at most: beyond this chunks get no faster (they leave the cache)


def _quadrature_factor(snr: np.ndarray) -> np.ndarray:
    """f(a) by Gauss-Legendre quadrature of the score's square against the Rician density
    x exp(-(x - a)^2 / 2) i0e(a x), float64 (M,) -> (M,); for building the table (and not per voxel)."""
    a = np.asarray(snr, dtype=np.float64)[:, None]
    nodes, weights = np.polynomial.legendre.leggauss(_QUADRATURE_NODES)
    lower, upper = np.maximum(a - _QUADRATURE_HALF_WIDTH, 0.0), a + _QUADRATURE_HALF_WIDTH
    x = (lower + upper) / 2 + (upper - lower) / 2 * nodes
    z = a * x
    i0e = special.i0e(z)
    density = x * np.exp(-(x - a) ** 2 / 2) * i0e  # i0e(z) e^(z) = I0: exp(-(x^2 + a^2)/2) I0(ax), stably
    score = x * special.i1e(z) / i0e - a
    return (upper - lower)[:, 0] / 2 * ((density * score * score) @ weights)


@cache
def _table() -> tuple[torch.Tensor, torch.Tensor]:
    """h(a) = f(a) (1 + a^2) / a^2 on a uniform grid over [0, TABLE_MAX_SNR], and its steps.

    h is smooth and near 1 at both ends (f ~ a^2 at 0, f ~ 1 beyond), so linear interpolation of it
    keeps f's relative error below 3e-6 everywhere, small a included."""
    snr = np.linspace(0.0, TABLE_MAX_SNR, round(TABLE_MAX_SNR / TABLE_STEP) + 1)
    f = _quadrature_factor(snr)
    h = np.ones_like(snr)
    h[1:] = f[1:] * (1 + snr[1:] ** 2) / snr[1:] ** 2  # h(0) = lim f / a^2 = 1
    h = torch.from_numpy(h)
    return h[:-1].contiguous(), torch.diff(h)


def _information_factor(snr: torch.Tensor) -> torch.Tensor:
    """f of float64 amplitudes in sigma units (any shape, signs ignored as f is even)."""
    a = snr.abs()
    a2 = a * a
    inverse = a2.reciprocal()
    asymptotic = 1 - inverse * (0.5 + 0.25 * inverse)
    start, steps = _table()
    position = a * (1 / TABLE_STEP)
    # Clamped (and NaN sent to 0) only so that the lookup stays in the table: f is taken from
    # the asymptotic series wherever the index had to be clamped.
    index = position.clamp(max=start.numel() - 1).nan_to_num_(0.0).long()
    h = torch.take(steps, index).mul_(position - index).add_(torch.take(start, index))
    tabulated = h.mul_(a2).div_(a2 + 1)
    return torch.where(a < TABLE_MAX_SNR, tabulated, asymptotic)


def rician_information_factor(snr: np.ndarray) -> np.ndarray:
    """f(a): Fisher information about a Rician amplitude a (in sigma units), per sigma^-2; 0..1.

    Any shape (float64 result of the same shape); from a table (relative error < 3e-6) up to
    a = 40, the asymptotic series 1 - 1/(2 a^2) - 1/(4 a^4) above."""
    a = np.asarray(snr, dtype=np.float64)
    return _information_factor(torch.from_numpy(np.ascontiguousarray(a).reshape(-1))).numpy().reshape(a.shape)


def cramer_rao_sd(acquisition: Acquisition, s0: np.ndarray, pdff: np.ndarray, r2star_s: np.ndarray,
                  sigma: float) -> dict[str, np.ndarray]:
    """-> {"pdff": SD (fraction), "r2star_s": SD (1/s)}, each (N,).

    The smallest standard deviations an unbiased estimator can have at (S0, PDFF, R2*) (N,) each
    (broadcast together, S0 in image units) under Rician noise `sigma` (the same units), with all
    three parameters unknown. Maps take finite values only: a bound above PDFF_SD_MAX (1.0) or
    R2STAR_SD_MAX_S (the fit's R2* bound, 1/s) is reported as that cap, as are voxels where the
    bound does not exist (F singular or nearly so: S0 = 0, fewer than 3 echoes) or a parameter
    is not finite."""
    sigma = float(sigma)
    if not (np.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be positive and finite, got {sigma}")
    s0, pdff, r2star_s = (np.asarray(a, dtype=np.float64).ravel() for a in np.broadcast_arrays(s0, pdff, r2star_s))
    n = s0.shape[0]
    out = {"pdff": np.empty(n), "r2star_s": np.empty(n)}
    if n == 0:
        return out
    model = MagnitudeJacobian(acquisition, torch.device("cpu"))
    theta_all = torch.from_numpy(np.stack([s0, pdff, r2star_s]))
    outputs = {k: torch.from_numpy(v) for k, v in out.items()}

    def bound(sl: slice) -> None:
        theta = theta_all[:, sl]
        finite = theta.isfinite().all(dim=0)
        theta = torch.where(finite, theta, 0.0)  # S0 = 0: no information, reported at the caps
        amplitude, (j0, j1, j2) = model.evaluate(theta)
        weight = _information_factor(amplitude.mul_(1 / sigma)).mul_(1 / sigma**2)
        w0, w1, w2 = weight * j0, weight * j1, weight * j2
        f00, f11, f22 = _dot(w0, j0), _dot(w1, j1), _dot(w2, j2)
        scale0, scale1, scale2 = f00.rsqrt(), f11.rsqrt(), f22.rsqrt()
        # F's correlation matrix [[1, x, y], [x, 1, w], [y, w, 1]]: its inverse's diagonal by cofactors,
        # free of the parameters' very different scales; (F^-1)_ii = (C^-1)_ii / F_ii.
        x, y, w = _dot(w0, j1) * scale0 * scale1, _dot(w0, j2) * scale0 * scale2, _dot(w1, j2) * scale1 * scale2
        det = 1 - x * x - y * y - w * w + 2 * x * y * w
        exists = finite & (det > _MIN_CORRELATION_DET)  # NaN (a zero F_ii) fails too
        for key, cofactor, information, cap in (("pdff", 1 - y * y, f11, PDFF_SD_MAX),
                                                ("r2star_s", 1 - x * x, f22, R2STAR_SD_MAX_S)):
            variance = cofactor / (det * information)
            sd = torch.where(exists & (variance >= 0), variance, torch.inf).sqrt_().clamp_max_(cap)
            outputs[key][sl] = sd

    # Per voxel: J (3E), A, the weights and their products with J (5E), F and its scalars (~24).
    map_chunks(bound, n, 8 * (9 * acquisition.n_echoes + 24), _CHUNK)
    return out


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sum over echoes (the first dimension) of a * b."""
    return (a * b).sum(dim=0)
