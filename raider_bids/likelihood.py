"""Rician log-likelihood of measured magnitudes given predicted noise-free magnitudes."""

from __future__ import annotations

import torch

# Predicted magnitudes are kept this far above zero (relative to sigma): i0e's autograd is wrong at
# exactly z = 0, and the true gradient there is finite.
_MIN_PREDICTED = 1e-6


def rician_log_likelihood(measured: torch.Tensor, predicted: torch.Tensor, sigma: torch.Tensor | float,
                          include_constant: bool = False) -> torch.Tensor:
    """Element-wise log L = log(m/s^2) - (m^2 + nu^2)/(2 s^2) + log I0(m nu / s^2).

    Written as -(m - nu)^2/(2 s^2) + log(i0e(z)) so the large terms cancel analytically. The term
    log(m / s^2) does not depend on the prediction; it is left out unless `include_constant`
    (it is -inf where m = 0, as scanners set the background to zero).
    """
    sigma = torch.as_tensor(sigma, dtype=measured.dtype, device=measured.device)
    var = sigma * sigma
    nu = torch.clamp(predicted, min=_MIN_PREDICTED * sigma)
    z = measured * nu / var
    ll = -(measured - nu) ** 2 / (2 * var) + torch.log(torch.special.i0e(z))
    if include_constant:
        ll = ll + torch.log(measured / var)
    return ll


def rician_nll_per_voxel(measured: torch.Tensor, predicted: torch.Tensor,
                         sigma: torch.Tensor | float) -> torch.Tensor:
    """Negative log-likelihood summed over echoes: (N, n_echoes) -> (N,). Constant terms dropped."""
    return -rician_log_likelihood(measured, predicted, sigma).sum(dim=-1)
