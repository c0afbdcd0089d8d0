"""Gaussian least-squares fit of the magnitude model: a grid over (PDFF, R2*) with S0 profiled out
in closed form, refined by bounded Levenberg-Marquardt. Used where the noise level is not yet
known (the sigma estimate); the Rician-likelihood estimators live beside it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..batching import chunk_slices
from ..signal_model import Acquisition

R2STAR_MAX_S = 2000.0  # 1/s; MAGORINO's bound (2 ms^-1)


@dataclass
class LeastSquaresFit:
    """Per-voxel parameters and residual sum of squares, each of shape (N,)."""

    s0: np.ndarray
    pdff: np.ndarray
    r2star_s: np.ndarray
    rss: np.ndarray
    fitted: np.ndarray  # (N, n_echoes) noise-free magnitudes at the estimate


class _Model:
    """Magnitude model with its analytic Jacobian, float64 torch."""

    def __init__(self, acquisition: Acquisition):
        basis = acquisition.fat_basis()
        self.cr = torch.tensor(basis.real)
        self.ci = torch.tensor(basis.imag)
        self.t = torch.tensor(acquisition.echo_times_s, dtype=torch.float64)

    def shape(self, pdff: torch.Tensor, r2star_s: torch.Tensor) -> torch.Tensor:
        """|S| / S0 for parameter vectors of shape (G,) -> (G, n_echoes)."""
        p = pdff[:, None]
        re = 1 - p + p * self.cr
        im = p * self.ci
        return torch.sqrt(re * re + im * im) * torch.exp(-r2star_s[:, None] * self.t)

    def value_and_jacobian(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """theta (N, 3) = (S0, PDFF, R2*) -> f (N, E), J (N, E, 3)."""
        s0, p, r = theta[:, :1], theta[:, 1:2], theta[:, 2:3]
        re = 1 - p + p * self.cr
        im = p * self.ci
        amp = torch.sqrt(re * re + im * im).clamp_min(1e-12)
        decay = torch.exp(-r * self.t)
        f = s0 * amp * decay
        d_amp_dp = (re * (self.cr - 1) + im * self.ci) / amp
        jac = torch.stack([amp * decay, s0 * decay * d_amp_dp, -self.t * f], dim=-1)
        return f, jac


def fit_least_squares(signals: np.ndarray, acquisition: Acquisition, n_pdff: int = 51,
                      n_r2star: int = 51, r2star_grid_max_s: float = 1500.0, iterations: int = 30,
                      chunk_size: int = 4096) -> LeastSquaresFit:
    """Least-squares estimates for magnitudes `signals` of shape (N, n_echoes)."""
    model = _Model(acquisition)
    pdff_grid, r2_grid = torch.meshgrid(torch.linspace(0, 1, n_pdff, dtype=torch.float64),
                                        torch.linspace(0, r2star_grid_max_s, n_r2star, dtype=torch.float64),
                                        indexing="ij")
    pdff_grid, r2_grid = pdff_grid.ravel(), r2_grid.ravel()
    basis = model.shape(pdff_grid, r2_grid)  # (G, E)
    basis_norm2 = (basis * basis).sum(dim=1)
    data = torch.as_tensor(np.asarray(signals, dtype=np.float64))
    thetas = []
    for sl in chunk_slices(data.shape[0], chunk_size):
        m = data[sl]
        proj = m @ basis.T  # (n, G)
        s0 = (proj / basis_norm2).clamp_min(0)
        rss = (m * m).sum(1, keepdim=True) - 2 * s0 * proj + s0 * s0 * basis_norm2
        best = rss.argmin(dim=1)
        theta = torch.stack([s0.gather(1, best[:, None])[:, 0], pdff_grid[best], r2_grid[best]], dim=1)
        thetas.append(_levenberg_marquardt(model, m, theta, iterations))
    theta = torch.cat(thetas) if thetas else torch.zeros((0, 3), dtype=torch.float64)
    fitted, _ = model.value_and_jacobian(theta)
    rss = ((data - fitted) ** 2).sum(dim=1)
    return LeastSquaresFit(theta[:, 0].numpy(), theta[:, 1].numpy(), theta[:, 2].numpy(),
                           rss.numpy(), fitted.numpy())


def _project(theta: torch.Tensor) -> torch.Tensor:
    lower = torch.tensor([0.0, 0.0, 0.0], dtype=theta.dtype)
    upper = torch.tensor([float("inf"), 1.0, R2STAR_MAX_S], dtype=theta.dtype)
    return torch.maximum(torch.minimum(theta, upper), lower)


def _levenberg_marquardt(model: _Model, m: torch.Tensor, theta: torch.Tensor, iterations: int) -> torch.Tensor:
    """Bounded (projected) LM steps, each accepted per voxel only if it lowers the RSS."""
    damping = torch.full((m.shape[0],), 1e-3, dtype=m.dtype)
    f, jac = model.value_and_jacobian(theta)
    rss = ((m - f) ** 2).sum(1)
    eye = torch.eye(3, dtype=m.dtype)
    for _ in range(iterations):
        jtj = jac.transpose(1, 2) @ jac
        jtr = (jac.transpose(1, 2) @ (m - f)[..., None])[..., 0]
        diag = torch.diagonal(jtj, dim1=1, dim2=2).clamp_min(1e-12)
        lhs = jtj + damping[:, None, None] * eye * diag[:, None, :]
        step = torch.linalg.solve(lhs, jtr[..., None])[..., 0]
        candidate = _project(theta + step)
        f_new, jac_new = model.value_and_jacobian(candidate)
        rss_new = ((m - f_new) ** 2).sum(1)
        better = rss_new < rss
        theta = torch.where(better[:, None], candidate, theta)
        f = torch.where(better[:, None], f_new, f)
        jac = torch.where(better[:, None, None], jac_new, jac)
        rss = torch.where(better, rss_new, rss)
        damping = torch.where(better, damping / 3, damping * 3).clamp(1e-9, 1e9)
    return theta
