"""The physics autoencoder: MLP encoders, a constraining transform at the bottleneck, the signal
model as decoder; the max-normalisation of its inputs; and the one loop that evaluates it over
many voxels in chunks.

Several independent networks (the 'water' and 'fat' pair, or single networks with different
seeds) are held as one stack and evaluated with batched matrix products: each has its own
weights, so one stack costs what one network does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch

from ..physics.signal_model import Acquisition, SignalModel
from ..physics.transforms import nonnegative, pdff_transform
from ..resources import map_chunks

T = TypeVar("T")

N_HIDDEN_LAYERS = 4
# The R2* output is in 1/ms (as the paper quotes it) so that typical values are O(0.1).
R2STAR_OUTPUT_SCALE_S = 1000.0
# Output-layer biases at start: S0 of the max-normalised signal ~ 1, R2* ~ 50 1/s.
_INITIAL_BIAS = (1.0, 0.0, math.sqrt(50.0 / R2STAR_OUTPUT_SCALE_S))
_EVAL_CHUNK = 32768  # at most, voxels evaluated at once


def evaluate_in_chunks(model: "PhysicsAutoencoder", n_voxels: int, evaluate: Callable[[slice], T]) -> list[T]:
    """`evaluate` on consecutive slices of range(n_voxels), without gradients, sized so that each
    chunk's activations (a few dozen float32 per voxel, network and echo) fit the working memory:
    the one inference loop of every network."""
    with torch.no_grad():
        return map_chunks(evaluate, n_voxels, 64 * len(model.kinds) * model.weights[0].shape[1], _EVAL_CHUNK,
                          parallel=model.weights[0].device.type == "cpu")


class PhysicsAutoencoder(torch.nn.Module):
    """K encoders (n_echoes -> 4 hidden ELU layers of n_echoes units -> 3) + transforms + signal model.

    Input: signals divided per voxel by their largest echo, shape (K, N, n_echoes) or (N, n_echoes)
    (then the same voxels go to every network). S0 comes out in the same normalised units.
    """

    def __init__(self, acquisition: Acquisition, kinds: tuple[str, ...], generator: torch.Generator):
        super().__init__()
        n, k = acquisition.n_echoes, len(kinds)
        sizes = [n] * (N_HIDDEN_LAYERS + 1) + [3]
        self.weights = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.empty(k, a, b)) for a, b in zip(sizes[:-1], sizes[1:])])
        self.biases = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.empty(k, 1, b)) for b in sizes[1:]])
        self.kinds = tuple(kinds)
        self.decoder = SignalModel(acquisition)
        self._initialise(generator)

    def _initialise(self, generator: torch.Generator) -> None:
        # PyTorch's default Linear init, network after network, from an explicit generator.
        with torch.no_grad():
            for k in range(len(self.kinds)):
                for w, b in zip(self.weights, self.biases):
                    bound = 1.0 / math.sqrt(w.shape[1])
                    w[k].uniform_(-bound, bound, generator=generator)
                    b[k].uniform_(-bound, bound, generator=generator)
            self.biases[-1][:, 0, :] = torch.tensor(_INITIAL_BIAS)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(K, N, E) -> raw bottleneck (K, N, 3)."""
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(b, x, w)
            if i < N_HIDDEN_LAYERS:
                x = torch.nn.functional.elu(x)
        return x

    def parameters_of(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Signals -> S0 (normalised units), PDFF, R2* (1/s), each (K, N)."""
        if x.dim() == 2:
            x = x.expand(len(self.kinds), *x.shape)
        raw = self.encode(x)
        pdff = torch.stack([pdff_transform(raw[k, :, 1], kind) for k, kind in enumerate(self.kinds)])
        return nonnegative(raw[..., 0]), pdff, R2STAR_OUTPUT_SCALE_S * nonnegative(raw[..., 2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Signals -> predicted noise-free signals (K, N, E)."""
        s0, pdff, r2 = self.parameters_of(x)
        k, n = s0.shape
        return self.decoder(s0.reshape(-1), pdff.reshape(-1), r2.reshape(-1)).reshape(k, n, -1)

    def network_state(self, k: int) -> dict[str, torch.Tensor]:
        """Weights of network k alone, loadable into PhysicsAutoencoder(acquisition, (kind,), ...)."""
        return {name: value[k:k + 1].detach().cpu().clone() for name, value in self.state_dict().items()}

    def load_network_state(self, k: int, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, value in self.named_parameters():
                value[k:k + 1].copy_(state[name])


def normalise(signals: np.ndarray, sigma: float,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Divide each voxel by its largest echo; sigma is divided by the same factor so the Rician
    likelihood is unchanged up to a constant. Returns (x (N, E), sigma (N, 1), scale (N,))."""
    scale = np.max(signals, axis=1)
    scale = np.where(scale > 0, scale, 1.0)
    x = torch.as_tensor(signals / scale[:, None], dtype=torch.float32, device=device)
    s = torch.as_tensor((sigma / scale)[:, None], dtype=torch.float32, device=device)
    return x, s, torch.as_tensor(scale, dtype=torch.float64)
