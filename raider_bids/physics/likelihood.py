"""Rician likelihood of measured magnitudes given predicted noise-free magnitudes, and the
modified Bessel functions it needs.

One quantity, two evaluations: `rician_log_likelihood` / `rician_nll_per_voxel` (voxel-major,
torch's i0e, differentiable: the networks' loss and every candidate's NLL) and
`rician_nll_echo_major` (the solver's: echo-major, large Bessel arguments from their asymptotic
series, with the ratio I1/I0 of the likelihood's gradient). tests/test_physics.py checks that
they agree.
"""

from __future__ import annotations

import math

import torch

# Predicted magnitudes are kept this far above zero (relative to sigma): i0e's autograd is wrong at
# exactly z = 0, and the true gradient there is finite.
MIN_PREDICTED = 1e-6
_SERIES_TERMS = 12  # at most: enough from z = 40 on in float64
# Per dtype of the arguments: the z from which the asymptotic series is used, and the error at
# which it stops, a quarter of the dtype's unit in the last place. float64 (the fit's) needs 12
# terms from z = 40; float32 (the networks' training and validation) 6 from z = 15, 4 from z = 40.
_ASYMPTOTIC = {torch.float64: (40.0, 5e-17), torch.float32: (15.0, 3e-8)}


def rician_log_likelihood(measured: torch.Tensor, predicted: torch.Tensor, sigma: torch.Tensor | float,
                          include_constant: bool = False) -> torch.Tensor:
    """Element-wise log L = log(m/s^2) - (m^2 + nu^2)/(2 s^2) + log I0(m nu / s^2).

    Written as -(m - nu)^2/(2 s^2) + log(i0e(z)) so the large terms cancel analytically. The term
    log(m / s^2) does not depend on the prediction; it is left out unless `include_constant`
    (it is -inf where m = 0, as scanners set the background to zero).
    """
    sigma = torch.as_tensor(sigma, dtype=measured.dtype, device=measured.device)
    var = sigma * sigma
    nu = torch.clamp(predicted, min=MIN_PREDICTED * sigma)
    z = measured * nu / var
    ll = -(measured - nu) ** 2 / (2 * var) + torch.log(torch.special.i0e(z))
    if include_constant:
        ll = ll + torch.log(measured / var)
    return ll


def rician_nll_per_voxel(measured: torch.Tensor, predicted: torch.Tensor,
                         sigma: torch.Tensor | float) -> torch.Tensor:
    """Negative log-likelihood summed over echoes: (N, n_echoes) -> (N,). Constant terms dropped."""
    return -rician_log_likelihood(measured, predicted, sigma).sum(dim=-1)


def rician_nll_echo_major(measured: torch.Tensor, predicted: torch.Tensor, sigma: float | torch.Tensor,
                          score: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """rician_nll_per_voxel for magnitudes of shape (E, ...), summed over the first (echo)
    dimension -> (...); and, if `score`, m I1(z)/I0(z) - nu (E, ...): J' times it is the NLL's
    descent direction (times 1/sigma^2), from the same evaluation of the Bessel functions.
    sigma: one noise level, or one per voxel (a tensor of shape (...))."""
    var = sigma**2
    nu = predicted.clamp_min(MIN_PREDICTED * sigma)
    log_i0e, ratio = log_i0e_and_ratio(measured * nu / var, ratio=score)
    value = (measured - nu).square_().div_(2 * var).sub_(log_i0e).sum(dim=0)
    return value, ratio.mul_(measured).sub_(predicted) if score else None


def _hankel_series(order: int) -> list[float]:
    """c_k of I_order(z) e^-z sqrt(2 pi z) ~ sum_k c_k (8z)^-k (Abramowitz & Stegun 9.7.1)."""
    c = [1.0]
    for k in range(1, _SERIES_TERMS + 2):  # one more than used, for the error estimate
        c.append(c[-1] * ((2 * k - 1) ** 2 - 4 * order**2) / k)
    return c


_I0_SERIES, _I1_SERIES = _hankel_series(0), _hankel_series(1)
# The error of k terms is about twice the first term left out: this coefficient times u^(k + 1).
_NEXT_TERM = [max(abs(a), abs(b)) for a, b in zip(_I0_SERIES[1:], _I1_SERIES[1:])]


def _horner(u: torch.Tensor, coefficients: list[float]) -> torch.Tensor:
    p = torch.full_like(u, coefficients[-1])
    for c in reversed(coefficients[:-1]):
        p.mul_(u).add_(c)
    return p


def log_i0e_and_ratio(z: torch.Tensor, ratio: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log(i0e(z)) and, if `ratio`, I1(z) / I0(z), for z >= 0 of shape (E, ...).

    torch's i0e and i1e sum a Chebyshev series element by element (~50 ns each, one thread);
    from z = 40 (15 in float32) the asymptotic series is exact to z's precision in a few vectorised
    passes, with fewer terms the larger the smallest argument, so only the few smaller arguments go
    through torch."""
    threshold, tolerance = _ASYMPTOTIC.get(z.dtype, _ASYMPTOTIC[torch.float64])
    z_min = float(z.min()) if z.numel() else threshold
    large = z.clamp_min(threshold)
    u = (8 * large).reciprocal_()
    u_max = 1 / (8 * max(z_min, threshold))
    terms = next((k for k in range(1, _SERIES_TERMS) if _NEXT_TERM[k] * u_max ** (k + 1) < tolerance), _SERIES_TERMS)
    p0 = _horner(u, _I0_SERIES[:terms + 1])
    log_i0e = (p0 * p0).div_(2 * math.pi * large).log_().mul_(0.5)
    i1_over_i0 = _horner(u, _I1_SERIES[:terms + 1]).div_(p0) if ratio else None
    if not z_min >= threshold:  # (or NaN) redo the columns (all echoes of a start or candidate) needing it
        z = z.reshape(z.shape[0], -1)
        columns = (z.amin(dim=0) < threshold).nonzero()[:, 0]
        small = z.gather(1, columns.expand(z.shape[0], -1))  # gather: faster than indexing here
        i0e = torch.special.i0e(small)
        log_i0e.view_as(z).index_copy_(1, columns, i0e.log())
        if ratio:
            i1_over_i0.view_as(z).index_copy_(1, columns, torch.special.i1e(small) / i0e)
    return log_i0e, i1_over_i0
