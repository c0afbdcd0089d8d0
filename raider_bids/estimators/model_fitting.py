"""Voxel-wise fitting of the magnitude model, batched over voxels (no Python loop per voxel).

A grid over (PDFF, R2*) with S0 profiled out in closed form gives each voxel a start inside a
PDFF range; bounded Levenberg-Marquardt then minimises either the Gaussian residual sum of
squares (where the noise level is not yet known) or the Rician negative log-likelihood.
For the Rician loss the step solves (J'J + damping) d = J' (m r(z) - nu), r = I1/I0: the
Gauss-Newton step of the likelihood, whose stationary point is the Rician ML estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..batching import chunk_slices
from ..likelihood import rician_nll_per_voxel
from ..signal_model import Acquisition, SignalModel
from ..transforms import PDFF_BOUNDARY

R2STAR_MAX_S = 2000.0  # 1/s; MAGORINO's bound (2 ms^-1)
R2STAR_GRID_MAX_S = 1500.0
_CHUNK = 16384
GRID_PDFF_POINTS = 21  # per PDFF range
GRID_R2STAR_POINTS = 31  # over 0..R2STAR_GRID_MAX_S
LM_ITERATIONS = 60
LM_TOLERANCE = 1e-10  # relative loss gain below which a voxel has converged
RICIAN_RERANK = 8  # grid points re-scored with the Rician loss


@dataclass
class FitResult:
    """Per-voxel parameters (N,), the loss at the estimate (N,), and the fitted signals (N, E)."""

    s0: np.ndarray
    pdff: np.ndarray
    r2star_s: np.ndarray
    loss: np.ndarray  # residual sum of squares, or Rician NLL without constant terms
    fitted: np.ndarray


class _Model:
    """Magnitude model with its analytic Jacobian, float64 torch."""

    def __init__(self, acquisition: Acquisition, device: torch.device):
        self.signal = SignalModel(acquisition, dtype=torch.float64).to(device)
        self.cr, self.ci, self.t = self.signal.fat_real, self.signal.fat_imag, self.signal.echo_times_s

    def shape(self, pdff: torch.Tensor, r2star_s: torch.Tensor) -> torch.Tensor:
        """|S| / S0 for parameter vectors of shape (G,) -> (G, n_echoes)."""
        return self.signal(torch.ones_like(pdff), pdff, r2star_s)

    def value_and_jacobian(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """theta (N, 3) = (S0, PDFF, R2*) -> f (N, E), J (N, E, 3). The value repeats SignalModel's
        arithmetic because the Jacobian needs its intermediate terms (tests check they agree)."""
        s0, p, r = theta[:, :1], theta[:, 1:2], theta[:, 2:3]
        re = 1 - p + p * self.cr
        im = p * self.ci
        amp = torch.sqrt(re * re + im * im).clamp_min(1e-12)
        decay = torch.exp(-r * self.t)
        f = s0 * amp * decay
        d_amp_dp = (re * (self.cr - 1) + im * self.ci) / amp
        return f, torch.stack([amp * decay, s0 * decay * d_amp_dp, -self.t * f], dim=-1)


class _Loss:
    """Loss per voxel and the 'residual' whose J' product is its descent direction."""

    def __init__(self, sigma: torch.Tensor | None):
        self.sigma = sigma  # None: Gaussian least squares

    def value(self, m: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        if self.sigma is None:
            return ((m - f) ** 2).sum(dim=-1)
        return rician_nll_per_voxel(m, f, self.sigma)

    def residual(self, m: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        if self.sigma is None:
            return m - f
        z = m * f / self.sigma**2
        return m * torch.special.i1e(z) / torch.special.i0e(z) - f


def fit_voxels(signals: np.ndarray, acquisition: Acquisition, pdff_range: tuple[float, float] = (0.0, 1.0),
               sigma: float | None = None, iterations: int = LM_ITERATIONS, n_pdff: int = GRID_PDFF_POINTS,
               n_r2star: int = GRID_R2STAR_POINTS,
               device: torch.device = torch.device("cpu")) -> FitResult:
    """Fit magnitudes `signals` (N, n_echoes) with PDFF kept in `pdff_range`.

    sigma None: least squares; else the Rician likelihood with that noise level.
    """
    model = _Model(acquisition, device)
    lo, hi = pdff_range
    pdff_values = torch.linspace(lo, hi, n_pdff, dtype=torch.float64, device=device)
    pdff_grid, r2_grid = (g.ravel() for g in torch.meshgrid(
        pdff_values,
        torch.linspace(0, R2STAR_GRID_MAX_S, n_r2star, dtype=torch.float64, device=device), indexing="ij"))
    basis = model.shape(pdff_grid, r2_grid)  # (G, E)
    basis_norm2 = (basis * basis).sum(dim=1)
    lower = torch.tensor([0.0, lo, 0.0], dtype=torch.float64, device=device)
    upper = torch.tensor([float("inf"), hi, R2STAR_MAX_S], dtype=torch.float64, device=device)
    data = torch.as_tensor(np.asarray(signals, dtype=np.float64), device=device)
    loss = _Loss(None if sigma is None else torch.tensor(float(sigma), dtype=torch.float64, device=device))
    results = []
    for sl in chunk_slices(data.shape[0], _CHUNK):
        m = data[sl]
        # Two starts: a half-range can hold two basins near its edge.
        fits = []
        for best in _grid_starts(m, basis, basis_norm2, loss, pdff_values):
            s0 = ((m * basis[best]).sum(1) / basis_norm2[best]).clamp_min(0)
            theta = torch.stack([s0, pdff_grid[best], r2_grid[best]], dim=1)
            theta = _levenberg_marquardt(model, loss, m, theta, lower, upper, iterations)
            f, _ = model.value_and_jacobian(theta)
            fits.append((theta, loss.value(m, f), f))
        (theta_a, value_a, f_a), (theta_b, value_b, f_b) = fits
        keep_a = value_a <= value_b
        results.append((torch.where(keep_a[:, None], theta_a, theta_b), torch.minimum(value_a, value_b),
                        torch.where(keep_a[:, None], f_a, f_b)))
    if not results:
        empty = np.zeros(0)
        return FitResult(empty, empty, empty, empty, np.zeros((0, acquisition.n_echoes)))
    theta, value, fitted = (torch.cat(parts).cpu().numpy() for parts in zip(*results))
    return FitResult(theta[:, 0], theta[:, 1], theta[:, 2], value, fitted)


def _grid_starts(m: torch.Tensor, basis: torch.Tensor, basis_norm2: torch.Tensor, loss: _Loss,
                 pdff_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per voxel, grid indices of two starts: the best grid point, and the best one on the PDFF
    row nearest the water/fat boundary (where a half-range's second basin sits when the truth
    is near 0.58: a coarse grid merges it with the first).

    S0 is profiled by least squares and every grid point scored by the residual sum of squares
    (one matrix product); for the Rician loss the RICIAN_RERANK best points of the grid and of the
    boundary row are scored again with it, since near the noise floor the two basins differ."""
    # Magnitudes and the basis are >= 0, so the profiled S0 = proj / |b|^2 is too, and the residual
    # sum of squares is |m|^2 - proj^2 / |b|^2: ranking needs only the second term (float32 will do).
    proj = m.float() @ basis.float().T  # (n, G), G = n_pdff * n_r2star, PDFF-major
    rss = -(proj * proj) / basis_norm2.float()
    n_r2star = rss.shape[1] // pdff_values.numel()
    boundary_row = int((pdff_values - PDFF_BOUNDARY).abs().argmin())
    row = slice(boundary_row * n_r2star, (boundary_row + 1) * n_r2star)
    if loss.sigma is None:
        return rss.argmin(dim=1), row.start + rss[:, row].argmin(dim=1)
    picks = []
    for candidates in (rss.topk(min(RICIAN_RERANK, rss.shape[1]), dim=1, largest=False).indices,
                       row.start + rss[:, row].topk(min(RICIAN_RERANK, n_r2star), dim=1, largest=False).indices):
        s0 = proj.gather(1, candidates).double() / basis_norm2[candidates]
        nu = s0[..., None] * basis[candidates]  # (n, K, E)
        score = loss.value(m[:, None, :], nu)
        picks.append(candidates.gather(1, score.argmin(dim=1, keepdim=True))[:, 0])
    return picks[0], picks[1]


def _levenberg_marquardt(model: _Model, loss: _Loss, m: torch.Tensor, theta: torch.Tensor,
                         lower: torch.Tensor, upper: torch.Tensor, iterations: int) -> torch.Tensor:
    """Projected LM steps, each accepted per voxel only if it lowers the loss. A voxel leaves the
    iteration once a step gains less than LM_TOLERANCE (relative) or its damping saturates."""
    theta = theta.clone()
    damping = torch.full((m.shape[0],), 1e-3, dtype=m.dtype, device=m.device)
    f, jac = model.value_and_jacobian(theta)
    current = loss.value(m, f)
    eye = torch.eye(3, dtype=m.dtype, device=m.device)
    active = torch.arange(m.shape[0], device=m.device)
    for _ in range(iterations):
        if active.numel() == 0:
            break
        ma, th, fa, ja, cur, dmp = m[active], theta[active], f[active], jac[active], current[active], damping[active]
        jt = ja.transpose(1, 2)
        jtj = jt @ ja
        grad = (jt @ loss.residual(ma, fa)[..., None])[..., 0]
        # Parameters on a bound that the descent direction pushes outward are held fixed, so the
        # others still move (a projected full step would stall voxels whose optimum is PDFF = 0).
        held = ((th <= lower) & (grad < 0)) | ((th >= upper) & (grad > 0))
        free = (~held).to(m.dtype)
        diag = torch.diagonal(jtj, dim1=1, dim2=2).clamp_min(1e-12)
        lhs = (jtj + dmp[:, None, None] * eye * diag[:, None, :]) * free[:, :, None] * free[:, None, :]
        lhs = lhs + eye * (1 - free)[:, None, :]
        step = torch.linalg.solve(lhs, (grad * free)[..., None])[..., 0]
        candidate = torch.maximum(torch.minimum(th + step, upper), lower)
        f_new, jac_new = model.value_and_jacobian(candidate)
        new = loss.value(ma, f_new)
        better = new < cur
        theta[active] = torch.where(better[:, None], candidate, th)
        f[active] = torch.where(better[:, None], f_new, fa)
        jac[active] = torch.where(better[:, None, None], jac_new, ja)
        current[active] = torch.where(better, new, cur)
        dmp = torch.where(better, dmp / 3, dmp * 3).clamp(1e-9, 1e9)
        damping[active] = dmp
        converged = (better & (cur - new <= LM_TOLERANCE * cur.abs().clamp_min(1.0))) | (dmp >= 1e9)
        active = active[~converged]
    return theta
