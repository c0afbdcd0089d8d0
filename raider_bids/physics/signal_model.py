"""The magnitude CSE-MRI signal model (paper Eq. 5), written once for every estimator.

Units everywhere in this package: echo times in seconds, R2* in 1/s, PDFF as a fraction 0-1,
S0 in the image's own units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .fat_spectrum import GYROMAGNETIC_RATIO_HZ_PER_T, FatSpectrum


@dataclass(frozen=True)
class Acquisition:
    """What the signal model needs to know about a protocol."""

    echo_times_s: tuple[float, ...]
    field_strength_t: float
    fat_spectrum: FatSpectrum

    @property
    def n_echoes(self) -> int:
        return len(self.echo_times_s)

    def fat_basis(self, gamma_hz_per_t: float = GYROMAGNETIC_RATIO_HZ_PER_T) -> np.ndarray:
        """Complex fat signal relative to water, sum_k a_k exp(i 2 pi f_k t); shape (n_echoes,)."""
        t = np.asarray(self.echo_times_s, dtype=np.float64)[:, None]
        f = np.asarray(self.fat_spectrum.frequencies_hz(self.field_strength_t, gamma_hz_per_t))
        a = np.asarray(self.fat_spectrum.amplitudes, dtype=np.float64)
        return (a * np.exp(2j * math.pi * f * t)).sum(axis=1)


class SignalModel(torch.nn.Module):
    """Noise-free magnitude signal |S(t)| for batches of (S0, PDFF, R2*); no learnable weights."""

    def __init__(self, acquisition: Acquisition, dtype: torch.dtype = torch.float32):
        super().__init__()
        basis = acquisition.fat_basis()
        self.register_buffer("fat_real", torch.tensor(basis.real, dtype=dtype), persistent=False)
        self.register_buffer("fat_imag", torch.tensor(basis.imag, dtype=dtype), persistent=False)
        self.register_buffer("echo_times_s", torch.tensor(acquisition.echo_times_s, dtype=dtype), persistent=False)

    def forward(self, s0: torch.Tensor, pdff: torch.Tensor, r2star_s: torch.Tensor) -> torch.Tensor:
        """Parameters of shape (N,) -> magnitudes of shape (N, n_echoes)."""
        p = pdff[:, None]
        real = 1.0 - p + p * self.fat_real
        imag = p * self.fat_imag
        return s0[:, None] * torch.sqrt(real * real + imag * imag) * torch.exp(-r2star_s[:, None] * self.echo_times_s)


def magnitude_signal(acquisition: Acquisition, s0: np.ndarray, pdff: np.ndarray,
                     r2star_s: np.ndarray) -> np.ndarray:
    """Float64 NumPy front end of SignalModel: arrays of shape (N,) -> (N, n_echoes)."""
    model = SignalModel(acquisition, dtype=torch.float64)
    as_t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64).ravel())  # noqa: E731
    with torch.no_grad():
        return model(as_t(s0), as_t(pdff), as_t(r2star_s)).numpy()


def complex_signal(acquisition: Acquisition, s0: np.ndarray, pdff: np.ndarray, r2star_s: np.ndarray) -> np.ndarray:
    """The model's complex signal before the magnitude, S0 ((1 - PDFF) + PDFF F(t)) exp(-R2* t), with
    water at phase 0 (complex128, (N, n_echoes)): what tissues sharing a voxel add up."""
    t = np.asarray(acquisition.echo_times_s, dtype=np.float64)
    s0, pdff, r2 = (np.asarray(a, dtype=np.float64).ravel()[:, None] for a in (s0, pdff, r2star_s))
    return s0 * np.exp(-r2 * t) * ((1 - pdff) + pdff * acquisition.fat_basis())


def least_squares_s0(m, shapes, axis: int = -1, energy=None):
    """argmin_S0 |m - S0 b|^2 = <m, b> / <b, b> for magnitudes m and shapes b (|S| / S0) along
    `axis` (the echoes), clamped at 0, and 0 where b vanishes; `energy` is <b, b> when known.
    NumPy arrays and torch tensors alike (only operators, so both give the same bits)."""
    mb = (m * shapes).sum(axis)
    bb = (shapes * shapes).sum(axis) if energy is None else energy
    # (x + |x|) / 2 is max(x, 0) exactly; bb + (bb == 0) keeps 0 / 0 away where b = 0 (then mb = 0).
    return (mb + abs(mb)) / 2 / (bb + (bb == 0))
