"""The self-supervised physics autoencoder: MLP encoders, a constraining transform at the
bottleneck, the signal model as decoder, and the training loop with early stopping.

Several independent networks (the 'water' and 'fat' pair, or single networks with different
seeds) are held as one stack and trained in the same steps with batched matrix products: each
has its own weights, mini-batch order, Adam state (Adam is element-wise) and early stopping, so
this equals training them one after another, at the cost of one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..batching import chunk_slices
from ..resources import chunk_voxels
from ..likelihood import rician_nll_per_voxel
from ..signal_model import Acquisition, SignalModel
from ..transforms import nonnegative, pdff_transform
from .base import ProgressCallback, TrainingSettings

N_HIDDEN_LAYERS = 4
# The R2* output is in 1/ms (as the paper quotes it) so that typical values are O(0.1).
_R2STAR_OUTPUT_SCALE_S = 1000.0
# Output-layer biases at start: S0 of the max-normalised signal ~ 1, R2* ~ 50 1/s.
_INITIAL_BIAS = (1.0, 0.0, math.sqrt(50.0 / _R2STAR_OUTPUT_SCALE_S))
_EVAL_CHUNK = 32768  # at most, voxels evaluated at once


def inference_chunk(model: "PhysicsAutoencoder") -> int:
    """Voxels evaluated at once without gradients: each holds a few dozen float32 activations per
    network and echo."""
    return chunk_voxels(64 * len(model.kinds) * model.weights[0].shape[1], _EVAL_CHUNK)


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
        return nonnegative(raw[..., 0]), pdff, _R2STAR_OUTPUT_SCALE_S * nonnegative(raw[..., 2])

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


@dataclass
class TrainingHistory:
    kind: str
    seed: int
    epochs: int = 0
    best_epoch: int = 0
    best_validation_loss: float = math.inf
    stop_reason: str = ""
    seconds: float = 0.0
    train_loss: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"Network": self.kind, "Seed": self.seed, "Epochs": self.epochs, "BestEpoch": self.best_epoch,
                "BestValidationLoss": self.best_validation_loss, "StopReason": self.stop_reason,
                "Seconds": round(self.seconds, 3), "TrainLoss": self.train_loss,
                "ValidationLoss": self.validation_loss}


def per_network_nll(model: PhysicsAutoencoder, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-voxel Rician NLL of every network, (K, N), evaluated in chunks without gradients."""
    out = []
    with torch.no_grad():
        for sl in chunk_slices(x.shape[0], inference_chunk(model)):
            out.append(rician_nll_per_voxel(x[sl], model(x[sl]), sigma[sl]))
    return torch.cat(out, dim=1)


def train(model: PhysicsAutoencoder, x_train: torch.Tensor, sigma_train: torch.Tensor,
          x_val: torch.Tensor, sigma_val: torch.Tensor, settings: TrainingSettings,
          generator: torch.Generator, seeds: tuple[int, ...],
          progress: ProgressCallback | None = None) -> list[TrainingHistory]:
    """Self-supervised training on the Rician NLL. x_* are max-normalised signals (N, E) shared by
    the networks, sigma_* the matching (N, 1)."""
    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        return rician_nll_per_voxel(x_train[idx], model(x_train[idx]), sigma_train[idx]).mean(dim=1)

    return early_stopping(model, x_train.shape[0], batch_loss,
                          lambda: per_network_nll(model, x_val, sigma_val).mean(dim=1).tolist(),
                          settings, generator, seeds, progress)


def early_stopping(model: PhysicsAutoencoder, n_train: int, batch_loss: Callable[[torch.Tensor], torch.Tensor],
                   validation_loss: Callable[[], list[float]], settings: TrainingSettings,
                   generator: torch.Generator, seeds: tuple[int, ...],
                   progress: ProgressCallback | None = None) -> list[TrainingHistory]:
    """The training loop of every network stack: Adam on `batch_loss` (mini-batch indices (K, B)
    into the n_train training items -> per-network mean loss (K,)); each network stops after
    `patience` epochs without a better `validation_loss()` (per network) and gets its best weights back."""
    k_nets = len(model.kinds)
    histories = [TrainingHistory(kind, seed) for kind, seed in zip(model.kinds, seeds)]
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    schedule = _cosine_schedule(optimiser, settings)
    best_loss = validation_loss()
    best_state = [model.network_state(k) for k in range(k_nets)]
    waited = [0] * k_nets
    active = [True] * k_nets
    start = time.perf_counter()
    device = next(model.parameters()).device
    for h in histories:
        h.stop_reason = f"reached --max-epochs {settings.max_epochs}"
    for epoch in range(1, settings.max_epochs + 1):
        running = torch.zeros(k_nets, dtype=torch.float64)
        seen = 0
        for idx in _epoch_batches(n_train, k_nets, settings, generator):
            idx = idx.to(device)
            per_network = batch_loss(idx)
            optimiser.zero_grad(set_to_none=True)
            per_network.sum().backward()
            optimiser.step()
            if schedule is not None:
                schedule.step()
            running += per_network.detach().cpu().double() * idx.shape[1]
            seen += idx.shape[1]
        val = validation_loss()
        for k, h in enumerate(histories):
            if not active[k]:
                continue
            h.train_loss.append(float(running[k]) / seen)
            h.validation_loss.append(val[k])
            h.epochs = epoch
            h.seconds = time.perf_counter() - start
            if not math.isfinite(val[k]):
                h.stop_reason, active[k] = "validation loss not finite", False
            elif val[k] < best_loss[k]:
                best_loss[k], waited[k], h.best_epoch = val[k], 0, epoch
                best_state[k] = model.network_state(k)
            else:
                waited[k] += 1
            if active[k] and waited[k] >= settings.patience:
                h.stop_reason, active[k] = f"no better validation loss for {settings.patience} epochs", False
        if progress is not None:
            progress(epoch, {h.kind: h.validation_loss[-1] for h in histories if h.epochs == epoch})
        if not any(active):
            break
    for k, h in enumerate(histories):
        model.load_network_state(k, best_state[k])
        h.best_validation_loss = best_loss[k]
    return histories


def _cosine_schedule(optimiser: torch.optim.Optimizer, settings: TrainingSettings):
    """Learning rate annealed along a half cosine to `final_lr_fraction` of its start over the
    whole step budget (max_epochs x steps_per_epoch); None when there is no such budget."""
    if settings.final_lr_fraction is None or settings.steps_per_epoch is None:
        return None
    total, final = settings.max_epochs * settings.steps_per_epoch, settings.final_lr_fraction
    return torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda step: final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))


def _epoch_batches(n: int, k_nets: int, settings: TrainingSettings, generator: torch.Generator):
    """Mini-batch indices (K, B) of one epoch; each network draws its own."""
    if settings.steps_per_epoch is None:
        order = torch.stack([torch.randperm(n, generator=generator) for _ in range(k_nets)])
        for sl in chunk_slices(n, settings.batch_size):
            yield order[:, sl]
    else:
        batch = min(settings.batch_size, n)
        for _ in range(settings.steps_per_epoch):
            yield torch.randint(n, (k_nets, batch), generator=generator)


def normalise(signals: np.ndarray, sigma: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Divide each voxel by its largest echo; sigma is divided by the same factor so the Rician
    likelihood is unchanged up to a constant. Returns (x (N, E), sigma (N, 1), scale (N,))."""
    scale = np.max(signals, axis=1)
    scale = np.where(scale > 0, scale, 1.0)
    x = torch.as_tensor(signals / scale[:, None], dtype=torch.float32, device=device)
    s = torch.as_tensor((sigma / scale)[:, None], dtype=torch.float32, device=device)
    return x, s, torch.as_tensor(scale, dtype=torch.float64)


def split_indices(n: int, validation_fraction: float, rng: np.random.Generator,
                  max_validation: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Random train/validation split of range(n); both parts non-empty for n >= 2."""
    order = rng.permutation(n)
    n_val = min(max(1, int(round(validation_fraction * n))), n - 1, max_validation or n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])
