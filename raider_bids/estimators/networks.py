"""The self-supervised physics autoencoder: an MLP encoder, a constraining transform at the
bottleneck, the signal model as decoder, and the training loop with early stopping."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..batching import chunk_slices
from ..likelihood import rician_nll_per_voxel
from ..signal_model import Acquisition, SignalModel
from ..transforms import nonnegative, pdff_transform
from .base import ProgressCallback, TrainingSettings

# The network's R2* output is in 1/ms (as the paper quotes it) so that typical values are O(0.1).
_R2STAR_OUTPUT_SCALE_S = 1000.0
# Output-layer biases at start: S0 of the max-normalised signal ~ 1, R2* ~ 50 1/s.
_INITIAL_BIAS = (1.0, 0.0, math.sqrt(50.0 / _R2STAR_OUTPUT_SCALE_S))
_EVAL_CHUNK = 65536


class PhysicsAutoencoder(torch.nn.Module):
    """Encoder (n_echoes -> 4 x n_echoes ELU -> 3) + transforms + signal model.

    Works on signals divided per voxel by their largest echo; S0 comes out in the same units.
    """

    def __init__(self, acquisition: Acquisition, kind: str, generator: torch.Generator):
        super().__init__()
        n = acquisition.n_echoes
        layers: list[torch.nn.Module] = []
        for _ in range(4):
            layers += [torch.nn.Linear(n, n), torch.nn.ELU()]
        layers.append(torch.nn.Linear(n, 3))
        self.encoder = torch.nn.Sequential(*layers)
        self.kind = kind
        self.decoder = SignalModel(acquisition)
        self._initialise(generator)

    def _initialise(self, generator: torch.Generator) -> None:
        # PyTorch's default Linear init, drawn from an explicit generator for reproducibility.
        linears = [m for m in self.encoder if isinstance(m, torch.nn.Linear)]
        with torch.no_grad():
            for layer in linears:
                bound = 1.0 / math.sqrt(layer.in_features)
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)
            linears[-1].bias.copy_(torch.tensor(_INITIAL_BIAS))

    def parameters_of(self, normalised: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, n_echoes) -> S0 (normalised units), PDFF, R2* (1/s), each (N,)."""
        x = self.encoder(normalised)
        s0 = nonnegative(x[:, 0])
        pdff = pdff_transform(x[:, 1], self.kind)
        r2star_s = _R2STAR_OUTPUT_SCALE_S * nonnegative(x[:, 2])
        return s0, pdff, r2star_s

    def forward(self, normalised: torch.Tensor) -> torch.Tensor:
        return self.decoder(*self.parameters_of(normalised))


@dataclass
class TrainingHistory:
    kind: str
    epochs: int = 0
    best_epoch: int = 0
    best_validation_loss: float = math.inf
    stop_reason: str = ""
    seconds: float = 0.0
    train_loss: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"Network": self.kind, "Epochs": self.epochs, "BestEpoch": self.best_epoch,
                "BestValidationLoss": self.best_validation_loss, "StopReason": self.stop_reason,
                "Seconds": round(self.seconds, 3), "TrainLoss": self.train_loss,
                "ValidationLoss": self.validation_loss}


def mean_nll(model: PhysicsAutoencoder, x: torch.Tensor, sigma: torch.Tensor) -> float:
    """Mean per-voxel Rician NLL over a data set, evaluated in chunks without gradients."""
    total = 0.0
    with torch.no_grad():
        for sl in chunk_slices(x.shape[0], _EVAL_CHUNK):
            total += float(rician_nll_per_voxel(x[sl], model(x[sl]), sigma[sl]).sum())
    return total / max(x.shape[0], 1)


def train(model: PhysicsAutoencoder, x_train: torch.Tensor, sigma_train: torch.Tensor,
          x_val: torch.Tensor, sigma_val: torch.Tensor, settings: TrainingSettings,
          generator: torch.Generator, progress: ProgressCallback | None = None) -> TrainingHistory:
    """Adam on the Rician NLL; stops after `patience` epochs without a better validation loss and
    restores the best weights. x_* are max-normalised signals (N, E); sigma_* the matching (N, 1)."""
    history = TrainingHistory(model.kind)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    best_state = copy.deepcopy(model.state_dict())
    best_loss = mean_nll(model, x_val, sigma_val)
    waited = 0
    start = time.perf_counter()
    n = x_train.shape[0]
    history.stop_reason = f"reached --max-epochs {settings.max_epochs}"
    for epoch in range(1, settings.max_epochs + 1):
        model.train()
        order = torch.randperm(n, generator=generator, device="cpu").to(x_train.device)
        running = 0.0
        for sl in chunk_slices(n, settings.batch_size):
            idx = order[sl]
            loss = rician_nll_per_voxel(x_train[idx], model(x_train[idx]), sigma_train[idx]).mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            running += float(loss.detach()) * (sl.stop - sl.start)
        model.eval()
        val_loss = mean_nll(model, x_val, sigma_val)
        history.train_loss.append(running / n)
        history.validation_loss.append(val_loss)
        history.epochs = epoch
        if not math.isfinite(val_loss):
            history.stop_reason = "validation loss not finite"
            break
        if val_loss < best_loss:
            best_loss, waited = val_loss, 0
            history.best_epoch = epoch
            best_state = copy.deepcopy(model.state_dict())
        else:
            waited += 1
        if progress is not None:
            progress(model.kind, epoch, running / n, val_loss)
        if waited >= settings.patience:
            history.stop_reason = f"no better validation loss for {settings.patience} epochs"
            break
    model.load_state_dict(best_state)
    history.best_validation_loss = best_loss
    history.seconds = time.perf_counter() - start
    return history


def normalise(signals: np.ndarray, sigma: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Divide each voxel by its largest echo; sigma is divided by the same factor so the Rician
    likelihood is unchanged up to a constant. Returns (x (N, E), sigma (N, 1), scale (N,))."""
    scale = np.max(signals, axis=1)
    scale = np.where(scale > 0, scale, 1.0)
    x = torch.as_tensor(signals / scale[:, None], dtype=torch.float32, device=device)
    s = torch.as_tensor((sigma / scale)[:, None], dtype=torch.float32, device=device)
    return x, s, torch.as_tensor(scale, dtype=torch.float64)


def split_indices(n: int, validation_fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random train/validation split of range(n); both parts non-empty for n >= 2."""
    order = rng.permutation(n)
    n_val = min(max(1, int(round(validation_fraction * n))), n - 1)
    return np.sort(order[n_val:]), np.sort(order[:n_val])
