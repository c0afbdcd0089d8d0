"""Voxel-wise fitting of the magnitude model, batched over voxels (no Python loop per voxel).

A grid over (PDFF, R2*) with S0 profiled out in closed form gives each voxel up to two starts
inside a PDFF range; bounded Levenberg-Marquardt then minimises either the Gaussian residual sum
of squares (where the noise level is not yet known) or the Rician negative log-likelihood. For
the Rician loss, voxels near the noise floor rank a fine grid by that loss; the others (most of
a scan) rank a coarse one by least squares and skip a second start that cannot win.
For the Rician loss the step solves (J'J + damping) d = J' (m r(z) - nu), r = I1/I0: the
Gauss-Newton step of the likelihood, whose stationary point is the Rician ML estimate.

Speed: a start's iterations depend on that start alone, so LM runs on a pool of starts that is
topped up from the grid as starts finish: torch's calls stay large, and slow starts hold nothing up.
Tensors are echo-major, (E, n), so sums over echoes add contiguous rows; the 3 x 3 systems are
solved in closed form and the Bessel functions summed from their asymptotic series (likelihood).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch

from ..resources import chunk_slices, chunk_voxels, map_chunks
from .likelihood import rician_nll_echo_major
from .parameters import PDFF_BOUNDARY, R2STAR_MAX_S
from .signal_model import Acquisition, SignalModel, least_squares_s0

R2STAR_GRID_MAX_S = 1500.0
GRID_PDFF_POINTS = 21  # per PDFF range
GRID_R2STAR_POINTS = 31  # over 0..R2STAR_GRID_MAX_S
COARSE_PDFF_POINTS = 8  # the grid for voxels whose every echo is RICIAN_SNR sigma above the noise floor
COARSE_R2STAR_POINTS = 11
LM_ITERATIONS = 60
LM_TOLERANCE = 1e-10  # relative loss gain below which a voxel has converged
RICIAN_RERANK = 8  # grid points re-scored with the Rician loss
RICIAN_SNR = 10.0  # below this many sigma at some echo, the grid is ranked by the Rician loss
_GRID_CHUNK = 2048  # at most, voxels scored on the grid at once
_POOL = 32768  # at most, starts iterated at once: large calls for torch's threads, small enough for the cache
_BLOCK = 262144  # at most, voxels of fit_voxels fitted together on one thread


@dataclass
class FitResult:
    """Per-voxel parameters (N,), the loss at the estimate (N,), and the fitted signals (N, E)."""

    s0: np.ndarray
    pdff: np.ndarray
    r2star_s: np.ndarray
    loss: np.ndarray  # residual sum of squares, or Rician NLL without constant terms
    fitted: np.ndarray


class MagnitudeJacobian:
    """Magnitude model with its analytic Jacobian (float64 torch for the fit; the networks'
    training step uses float32)."""

    def __init__(self, acquisition: Acquisition, device: torch.device, dtype: torch.dtype = torch.float64):
        self.signal = SignalModel(acquisition, dtype=dtype).to(device)
        cr, ci = self.signal.fat_real[:, None], self.signal.fat_imag[:, None]
        # |1 - p + p c|^2 = 1 + p (2a + p b) and d|.|/dp = (a + p b) / |.|, per echo.
        self.a, self.b = cr - 1, (cr - 1) ** 2 + ci**2
        self.minus_t = -self.signal.echo_times_s[:, None]

    def shape(self, pdff: torch.Tensor, r2star_s: torch.Tensor) -> torch.Tensor:
        """|S| / S0 for parameter vectors of shape (G,) -> (G, n_echoes)."""
        return self.signal(torch.ones_like(pdff), pdff, r2star_s)

    def evaluate(self, theta: torch.Tensor, jacobian: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """theta (3, n) = (S0, PDFF, R2*) -> f (E, n) and, if asked, J (3, E, n): SignalModel's
        magnitude with the amplitude written as a quadratic in PDFF, which the derivative reuses."""
        s0, p, r = theta
        slope = self.a + p * self.b
        amp = (slope + self.a).mul_(p).add_(1).sqrt_().clamp_min_(1e-12)
        decay = torch.exp(r * self.minus_t)
        if not jacobian:
            return amp.mul_(decay).mul_(s0), None
        jac = torch.empty((3, *decay.shape), dtype=decay.dtype, device=decay.device)
        torch.mul(amp, decay, out=jac[0])
        f = jac[0] * s0
        torch.mul(decay, s0, out=jac[1]).mul_(slope).div_(amp)
        torch.mul(f, self.minus_t, out=jac[2])
        return f, jac

    def value_and_jacobian(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """theta (N, 3) -> f (N, E), J (N, E, 3)."""
        f, jac = self.evaluate(theta.T)
        return f.T, jac.permute(2, 1, 0)


class _Loss:
    """Loss per voxel and the 'residual' whose J' product is its descent direction."""

    def __init__(self, sigma: float | None):
        self.sigma = sigma  # None: Gaussian least squares
        self.gain_scale = 1.0 if sigma is None else 1 / (2 * sigma**2)  # near the estimate, loss ~ this x RSS

    def value(self, m: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """(E, ...) magnitudes and predictions -> (...): the residual sum of squares, or the
        Rician NLL without constant terms (likelihood.rician_nll_echo_major)."""
        return self(m, f, residual=False)[0]

    def __call__(self, m: torch.Tensor, f: torch.Tensor,
                 residual: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The loss (...) and the residual (E, ...), from one evaluation of the Bessel functions."""
        if self.sigma is None:
            difference = m - f
            return (difference * difference).sum(dim=0), difference
        return rician_nll_echo_major(m, f, self.sigma, score=residual)


def fit_voxels(signals: np.ndarray, acquisition: Acquisition, pdff_range: tuple[float, float] = (0.0, 1.0),
               sigma: float | None = None, iterations: int = LM_ITERATIONS,
               device: torch.device = torch.device("cpu")) -> FitResult:
    """Fit magnitudes `signals` (N, n_echoes) with PDFF kept in `pdff_range`.

    sigma None: least squares; else the Rician likelihood with that noise level.
    """
    model = MagnitudeJacobian(acquisition, device)
    grid = _Grid(model, pdff_range, GRID_PDFF_POINTS, GRID_R2STAR_POINTS, rescore=sigma is not None)
    # Above the noise floor least squares ranks the grid as the likelihood does, and a coarser
    # grid starts every voxel in its basin (checked on the in silico grid, the clinical benchmark
    # and the real scans: the same answers).
    coarse = None if sigma is None else _Grid(model, pdff_range, COARSE_PDFF_POINTS, COARSE_R2STAR_POINTS)
    problem = _Problem.bounded(model, _Loss(None if sigma is None else float(sigma)), pdff_range, iterations)
    data = torch.as_tensor(np.asarray(signals, dtype=np.float64), device=device)
    n, n_echoes = data.shape
    theta = torch.empty((3, n), dtype=torch.float64, device=device)
    value = torch.empty((n,), dtype=torch.float64, device=device)
    fitted = torch.empty((n, n_echoes), dtype=torch.float64, device=device)

    def run(sl: slice) -> None:  # blocks write disjoint parts of theta, value and fitted
        theta[:, sl], value[sl], fitted[sl] = _fit_block(data[sl], grid, coarse, problem, sigma)

    # Blocks on Python threads, each op on one intra-op thread: beside a busy process an op split
    # over threads waits for the one that lost its core (resources.map_chunks). Each voxel's
    # answer depends on its own starts only, so not on the blocks.
    map_chunks(run, n, 8 * (8 + 3 * n_echoes), _BLOCK, parallel=device.type == "cpu")
    theta, value, fitted = (t.cpu().numpy() for t in (theta, value, fitted))
    return FitResult(theta[0], theta[1], theta[2], value, fitted)


def _fit_block(data: torch.Tensor, grid: _Grid, coarse: _Grid | None, problem: _Problem,
               sigma: float | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fit_voxels on the voxels `data` (n, E): parameters (3, n), losses (n,), fitted signals (n, E)."""
    device = data.device
    n = data.shape[0]
    # Starts i and n + i are voxel i's two; a second start equal to the first is not run (loss inf).
    theta = torch.zeros((3, 2 * n), dtype=torch.float64, device=device)
    value = torch.full((2 * n,), float("inf"), dtype=torch.float64, device=device)
    # Working memory: a grid chunk holds a few (voxels, grid points) float32 scores.
    chunks = chunk_slices(n, chunk_voxels(12 * grid.pdff.numel(), _GRID_CHUNK))
    pool_size = chunk_voxels(_start_bytes(data.shape[1]), _POOL)
    pool = []  # batches of starts, concatenated before each step
    while True:
        while sum(b.index.numel() for b in pool) < pool_size and (sl := next(chunks, None)) is not None:
            m = data[sl].T.contiguous()
            parts = [(grid, torch.arange(m.shape[1], device=device))]
            if coarse is not None:
                above = m.amin(dim=0) >= RICIAN_SNR * sigma
                parts = [(coarse, above.nonzero()[:, 0]), (grid, (~above).nonzero()[:, 0])]
            for part_grid, part in parts:
                if part.numel():
                    pool.append(part_grid.starts(_take(m, part), sl.start + part, n, problem))
        starts = _Starts.cat(pool) if pool else None
        if starts is None or starts.index.numel() == 0:
            break
        pool = [starts.advance(problem, theta, value)]
    keep_first = value[:n] <= value[n:]
    theta = torch.where(keep_first, theta[:, :n], theta[:, n:])
    value = torch.minimum(value[:n], value[n:])
    return theta, value, problem.model.evaluate(theta, jacobian=False)[0].T


def refine_voxels(signals: np.ndarray, acquisition: Acquisition, pdff_range: tuple[float, float], sigma: float,
                  start: tuple[np.ndarray, np.ndarray, np.ndarray], iterations: int = LM_ITERATIONS,
                  device: torch.device = torch.device("cpu")) -> FitResult:
    """The Rician fit of magnitudes `signals` (N, n_echoes) from one given start per voxel, `start` =
    (S0 in image units, PDFF, R2* in 1/s), each (N,), with PDFF kept in `pdff_range`: the local
    maximum of the likelihood nearest the start (the start itself where no step improves on it)."""
    model, problem, data, theta = _from_starts(signals, acquisition, pdff_range, sigma, start, iterations, device)
    value = torch.empty((data.shape[0],), dtype=torch.float64, device=device)

    def run(sl: slice) -> None:  # chunks write disjoint columns of theta and value
        part_theta, part_value = theta[:, sl], value[sl]
        index = torch.arange(sl.stop - sl.start, device=device)
        starts = _Starts.new(index, data[sl].T.contiguous(), part_theta.contiguous(), problem)
        while starts.index.numel():
            starts = starts.advance(problem, part_theta, part_value)

    map_chunks(run, data.shape[0], _start_bytes(data.shape[1]), _POOL, parallel=device.type == "cpu")
    fitted = model.evaluate(theta, jacobian=False)[0].T.contiguous()
    theta, value, fitted = (t.cpu().numpy() for t in (theta, value, fitted))
    return FitResult(theta[0], theta[1], theta[2], value, fitted)


def gauss_newton_gain(signals: np.ndarray, acquisition: Acquisition, pdff_range: tuple[float, float], sigma: float,
                      start: tuple[np.ndarray, np.ndarray, np.ndarray],
                      device: torch.device = torch.device("cpu")) -> np.ndarray:
    """How far (nats) below the Rician NLL at `start` (as in refine_voxels) the Gauss-Newton model
    puts the first Levenberg-Marquardt step of refine_voxels, per voxel (N,): about zero at a local
    maximum of the likelihood, large where the start is far from one."""
    _, problem, data, theta = _from_starts(signals, acquisition, pdff_range, sigma, start, 1, device)
    gain = torch.empty((data.shape[0],), dtype=torch.float64, device=device)

    def run(sl: slice) -> None:
        index = torch.arange(sl.stop - sl.start, device=device)
        gain[sl] = _Starts.planned(index, data[sl].T.contiguous(), theta[:, sl].contiguous(), problem)[1]

    map_chunks(run, data.shape[0], _start_bytes(data.shape[1]), _POOL, parallel=device.type == "cpu")
    return gain.cpu().numpy()


def _start_bytes(n_echoes: int) -> int:
    """Working memory of one Levenberg-Marquardt start: a few dozen float64 (echoes,) columns."""
    return 8 * (16 * n_echoes + 32)


def _from_starts(signals: np.ndarray, acquisition: Acquisition, pdff_range: tuple[float, float], sigma: float,
                 start: tuple[np.ndarray, np.ndarray, np.ndarray], iterations: int, device: torch.device):
    """The model, the bounded Rician problem, the data (N, E) and the starts (3, N) clamped to the bounds."""
    model = MagnitudeJacobian(acquisition, device)
    problem = _Problem.bounded(model, _Loss(float(sigma)), pdff_range, iterations)
    data = torch.as_tensor(np.asarray(signals, dtype=np.float64), device=device)
    theta = torch.as_tensor(np.stack([np.asarray(a, dtype=np.float64) for a in start]), device=device)
    return model, problem, data, theta.clamp(problem.lower, problem.upper)


@dataclass
class _Problem:
    """What the starts of one fit share."""

    model: MagnitudeJacobian
    loss: _Loss
    lower: torch.Tensor  # (3, 1)
    upper: torch.Tensor
    iterations: int

    @classmethod
    def bounded(cls, model: MagnitudeJacobian, loss: _Loss, pdff_range: tuple[float, float],
                iterations: int) -> _Problem:
        """S0 >= 0, PDFF in `pdff_range`, R2* in [0, R2STAR_MAX_S]."""
        lower, upper = torch.tensor([[0.0, pdff_range[0], 0.0], [float("inf"), pdff_range[1], R2STAR_MAX_S]],
                                    dtype=torch.float64, device=model.a.device)[..., None]
        return cls(model, loss, lower, upper, iterations)


def _take(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """table[..., index] for a 1-D index, by the fastest of torch's kernels for it (indexing is slow)."""
    if table.dim() == 1:
        return table.index_select(0, index)
    return table.gather(-1, index.expand(*table.shape[:-1], -1))


class _Grid:
    """(PDFF, R2*) grid over one PDFF range, PDFF-major, and the starts it gives.

    Its points are ranked by least squares with S0 profiled. For the Rician loss, either they are
    scored again with it (`rescore`, for voxels near the noise floor, where the two losses rank
    basins differently), or the ranking is kept and a second start dropped where it cannot win."""

    def __init__(self, model: MagnitudeJacobian, pdff_range: tuple[float, float], n_pdff: int, n_r2star: int,
                 rescore: bool = False):
        device = model.a.device
        pdff_values = torch.linspace(*pdff_range, n_pdff, dtype=torch.float64, device=device)
        self.pdff, self.r2star = (g.ravel() for g in torch.meshgrid(
            pdff_values, torch.linspace(0, R2STAR_GRID_MAX_S, n_r2star, dtype=torch.float64, device=device),
            indexing="ij"))
        basis = model.shape(self.pdff, self.r2star)  # (G, E)
        self.norm = basis.norm(dim=1)
        self.unit = (basis / self.norm[:, None]).float().T  # float32 will do for ranking
        self.basis = basis.T.contiguous()  # (E, G)
        boundary_row = int((pdff_values - PDFF_BOUNDARY).abs().argmin())
        self.row = slice(boundary_row * n_r2star, (boundary_row + 1) * n_r2star)
        self.cell_loss = _cell_loss(basis.view(n_pdff, n_r2star, -1))
        self.rescore = rescore

    def starts(self, m: torch.Tensor, index: torch.Tensor, n: int, problem: _Problem) -> _Starts:
        """Starts for voxels `index` with magnitudes m (E, n_chunk): each voxel's best grid point
        (answer index i) and its best one on the boundary row (answer index n + i) if different,
        S0 fitted by least squares."""
        a, b = self._best(m, problem.loss)
        second = (b != a).nonzero()[:, 0]
        m, point = torch.cat([m, _take(m, second)], dim=1), torch.cat([a, _take(b, second)])
        basis = _take(self.basis, point)
        s0 = least_squares_s0(m, basis, axis=0, energy=_take(self.norm, point) ** 2)
        theta = torch.stack([s0, _take(self.pdff, point), _take(self.r2star, point)])
        return _Starts.new(torch.cat([index, n + _take(index, second)]), m, theta, problem)

    def _best(self, m: torch.Tensor, loss: _Loss) -> tuple[torch.Tensor, torch.Tensor]:
        """Per voxel of m (E, n), grid indices of the best grid point, and the best one on the PDFF row nearest
        the water/fat boundary (where a half-range's second basin sits when the truth is near 0.58:
        a coarse grid merges it with the first).

        Without `rescore`, for the Rician loss the boundary row's point is dropped (returned equal
        to the first) where its loss is worse than the first's by more than LM could gain from a
        grid point (`cell_loss`): then it cannot end better."""
        # Magnitudes and the basis are >= 0, so the profiled S0 is the projection on the unit basis
        # over |b|, and the residual sum of squares |m|^2 - projection^2 falls as the projection rises.
        proj = m.T.float() @ self.unit  # (n, G)
        if self.rescore:  # only ever set where the loss is the Rician one
            return self._rescored(m, proj, slice(0, None), loss), self._rescored(m, proj, self.row, loss)
        a, b = proj.argmax(dim=1), self.row.start + proj[:, self.row].argmax(dim=1)
        if loss.sigma is None:
            return a, b
        projections = proj.gather(1, torch.stack([a, b], dim=1)).double()
        gap = (projections[:, 0] ** 2 - projections[:, 1] ** 2) * loss.gain_scale
        return a, torch.where(gap > self.cell_loss * loss.gain_scale * _dot(m, m), a, b)

    def _rescored(self, m: torch.Tensor, proj: torch.Tensor, points: slice, loss: _Loss) -> torch.Tensor:
        """Of the RICIAN_RERANK best grid points within `points` (the whole grid, or the boundary
        row), the best by the loss."""
        scores = proj[:, points]
        candidates = points.start + scores.topk(min(RICIAN_RERANK, scores.shape[1]), dim=1).indices
        s0 = proj.gather(1, candidates).double() / _take(self.norm, candidates.flatten()).view_as(candidates)
        nu = s0 * _take(self.basis, candidates.flatten()).view(-1, *candidates.shape)
        return candidates.gather(1, loss.value(m[..., None], nu).argmin(dim=1, keepdim=True))[:, 0]


@dataclass
class _Starts:
    """Levenberg-Marquardt state of a batch of starts, which run along every tensor's last dimension."""

    index: torch.Tensor  # where each start's answer goes
    m: torch.Tensor  # (E, n)
    theta: torch.Tensor  # (3, n)
    residual: torch.Tensor  # (E, n)
    value: torch.Tensor  # the loss at theta
    damping: torch.Tensor
    steps: torch.Tensor
    increment: torch.Tensor  # (3, n): the next step to try

    @classmethod
    def new(cls, index: torch.Tensor, m: torch.Tensor, theta: torch.Tensor, problem: _Problem) -> _Starts:
        return cls.planned(index, m, theta, problem)[0]

    @classmethod
    def planned(cls, index: torch.Tensor, m: torch.Tensor, theta: torch.Tensor,
                problem: _Problem) -> tuple[_Starts, torch.Tensor]:
        """New starts with their first step planned, and the loss gain the Gauss-Newton model
        predicts for that step."""
        value, residual = problem.loss(m, problem.model.evaluate(theta, jacobian=False)[0])
        starts = cls(index, m, theta, residual, value, torch.full_like(value, 1e-3), torch.zeros_like(index),
                     torch.empty_like(theta))
        return starts, starts.plan(problem)

    @staticmethod
    def cat(batches: list[_Starts]) -> _Starts:
        if len(batches) == 1:
            return batches[0]
        return _Starts(*(torch.cat([getattr(b, k.name) for b in batches], dim=-1) for k in fields(_Starts)))

    def select(self, keep: torch.Tensor) -> _Starts:
        index = keep.nonzero()[:, 0]
        return _Starts(*(_take(getattr(self, k.name), index) for k in fields(self)))

    def step(self, problem: _Problem) -> torch.Tensor:
        """Try the planned step, accepted per start only if it lowers the loss, and plan the next.
        Returns which starts are done: the step gained, or the next would gain by the Gauss-Newton
        model, less than LM_TOLERANCE (relative); the damping saturated; or all iterations are used."""
        candidate = (self.theta + self.increment).clamp_(problem.lower, problem.upper)
        value, residual = problem.loss(self.m, problem.model.evaluate(candidate, jacobian=False)[0])
        better = value < self.value
        tolerance = LM_TOLERANCE * self.value.abs().clamp_min(1.0)
        converged = better & (self.value - value <= tolerance)
        self.theta = torch.where(better, candidate, self.theta)
        self.residual = torch.where(better, residual, self.residual)
        self.value = torch.minimum(value, self.value)
        self.damping = torch.where(better, self.damping / 3, self.damping * 3).clamp_(1e-9, 1e9)
        self.steps += 1
        predicted = self.plan(problem)
        return converged | (predicted <= tolerance) | (self.damping >= 1e9) | (self.steps >= problem.iterations)

    def advance(self, problem: _Problem, theta: torch.Tensor, value: torch.Tensor) -> _Starts:
        """One step; the finished starts' parameters and losses written into theta (3, N) and value
        (N,) at their `index`; returns the starts still running."""
        done = self.step(problem)
        finished = self.select(done)
        theta.index_copy_(1, finished.index, finished.theta)
        value.index_copy_(0, finished.index, finished.value)
        return self.select(~done)

    def plan(self, problem: _Problem) -> torch.Tensor:
        """Set the increment solving (J'J + damping diag(J'J)) d = J' residual over the free parameters
        (in closed form) and return the loss gain the Gauss-Newton model predicts for it.

        Parameters on a bound that the descent direction pushes outward are held fixed, so the others
        still move (a projected full step would stall voxels whose optimum is PDFF = 0). Scaling the
        free columns of J to unit norm (held ones to zero) makes the system's diagonal 1 + damping."""
        j0, j1, j2 = problem.model.evaluate(self.theta)[1]  # recomputed: cheaper than carrying it along
        norm2 = torch.stack([_dot(j0, j0), _dot(j1, j1), _dot(j2, j2)])  # diag(J'J)
        grad = torch.stack([_dot(j0, self.residual), _dot(j1, self.residual), _dot(j2, self.residual)])
        held = ((self.theta <= problem.lower) & (grad < 0)) | ((self.theta >= problem.upper) & (grad > 0))
        scale = torch.where(held, 0.0, norm2.clamp_min(1e-12).rsqrt())
        x, y, w = (_dot(j0, j1) * scale[0] * scale[1], _dot(j0, j2) * scale[0] * scale[2],
                   _dot(j1, j2) * scale[1] * scale[2])
        q = 1 + self.damping
        b = grad * scale
        b0, b1, b2 = b
        # Cramer's rule for the symmetric [[q, x, y], [x, q, w], [y, w, q]].
        c00, c01, c02 = q * q - w * w, y * w - x * q, x * w - y * q
        c11, c12, c22 = q * q - y * y, x * y - q * w, q * q - x * x
        det = q * c00 + x * c01 + y * c02
        solution = torch.stack([c00 * b0 + c01 * b1 + c02 * b2, c01 * b0 + c11 * b1 + c12 * b2,
                                c02 * b0 + c12 * b1 + c22 * b2]).div_(det)
        self.increment = solution * scale
        # The model's gain: (d'J'r + damping d'diag(J'J) d) times the loss's scale of |residual|^2.
        return (_dot(solution, b) + self.damping * _dot(solution, solution)) * problem.loss.gain_scale


def _cell_loss(shapes: torch.Tensor) -> float:
    """The largest share of a signal's energy |m|^2 that S0-profiled least squares leaves when one
    grid point's shape stands for its neighbour's (along either axis or diagonal), over a grid of
    shapes (P, R, E). A start's loss exceeds its local minimum's by about |m|^2 / (2 sigma^2) times
    the share between it and the minimum, which lies within the cell around it: this bounds that,
    with a margin of about 4 (the minimum is at most half a cell away and the share is quadratic)."""
    unit = shapes / shapes.norm(dim=-1, keepdim=True)
    pairs = ((unit[1:], unit[:-1]), (unit[:, 1:], unit[:, :-1]), (unit[1:, 1:], unit[:-1, :-1]),
             (unit[1:, :-1], unit[:-1, 1:]))
    return max(float((1 - (a * b).sum(dim=-1) ** 2).max()) for a, b in pairs)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Sums over the first dimension (echoes, or parameters) of a * b."""
    return (a * b).sum(dim=0)
