"""Self-supervised networks trained on the run's own voxels with the Rician likelihood: the
paper's 'water' and 'fat' pair, chosen per voxel by likelihood (Sec. 3.1-3.2), and the naive
single network with PDFF free in [0, 1]."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import METHODS, TrainingSettings
from ..physics.likelihood import rician_nll_per_voxel
from ..physics.parameters import PDFF_BOUNDARY
from ..physics.signal_model import Acquisition
from ..provenance import DEFAULT_NETWORK_LOSS, NetworkRecord
from .analytic_gradient import BlockStack
from .base import Estimates, Estimator, ProgressCallback, choose_by_likelihood
from .networks import PhysicsAutoencoder, evaluate_in_chunks, normalise
from .training import early_stopping, for_voxels, parameter_vector, split_indices


class _SelfSupervised(Estimator):
    """Networks of `method.networks` trained on the run's voxels; `_choose` makes the estimates
    from their candidates."""

    def __init__(self, training: TrainingSettings):
        self.training = training

    def fit(self, signals: np.ndarray, acquisition: Acquisition, sigma: float, *, seed: int,
            device: torch.device, progress: ProgressCallback | None = None) -> Estimates:
        trained = train_networks(signals, acquisition, sigma, self.method.networks, seed, device, self.training,
                                 self._progress(progress))
        estimates = self._choose(predict(trained.model, trained.x, trained.sigma, trained.scale))
        trained.describe(estimates, acquisition)
        return estimates

    def _choose(self, candidates: list[dict[str, np.ndarray]]) -> Estimates:
        raise NotImplementedError


class SelfSupervisedDual(_SelfSupervised):
    """Dual constrained self-supervised networks (Minore et al. 2025): per voxel, the water or
    the fat network's candidate, whichever is the more likely."""

    method = METHODS["ssl"]

    def _choose(self, candidates: list[dict[str, np.ndarray]]) -> Estimates:
        water, fat = candidates
        return choose_by_likelihood(water, fat)


class SingleNetwork(_SelfSupervised):
    """The naive baseline: one self-supervised network with PDFF free in [0, 1] (paper Fig. 4, 5).
    It lands on the water- or the fat-dominant solution unpredictably."""

    method = METHODS["single"]

    def _choose(self, candidates: list[dict[str, np.ndarray]]) -> Estimates:
        (single,) = candidates
        return Estimates(pdff=single["pdff"], r2star_s=single["r2star_s"], s0=single["s0"],
                         log_likelihood_ratio=None, chose_fat=single["pdff"] >= PDFF_BOUNDARY)


@dataclass
class TrainedNetworks:
    model: PhysicsAutoencoder
    histories: list[NetworkRecord]
    x: torch.Tensor  # normalised signals (N, E)
    sigma: torch.Tensor  # normalised sigma (N, 1)
    scale: np.ndarray  # (N,) normalisation factors
    settings: TrainingSettings
    n_train: int
    n_validation: int

    def describe(self, estimates: Estimates, acquisition: Acquisition) -> None:
        """Put the weights and the training's record into `estimates`."""
        estimates.weights = {kind: network_file(self.model, k, acquisition) for k, kind in enumerate(self.model.kinds)}
        estimates.training, estimates.networks = self.settings, self.histories
        estimates.details = {"TrainingVoxels": self.n_train, "ValidationVoxels": self.n_validation}


def train_networks(signals: np.ndarray, acquisition: Acquisition, sigma: float, kinds: tuple[str, ...],
                   seed: int, device: torch.device, settings: TrainingSettings,
                   progress: ProgressCallback | None) -> TrainedNetworks:
    """Normalise, split and train one network per kind on the voxels `signals` (N, E) by the
    Rician NLL (voxels shared by the networks)."""
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    x, sig, scale = normalise(signals, sigma, device)
    train_idx, val_idx = split_indices(x.shape[0], settings.validation_fraction, rng, settings.max_validation_voxels)
    train_t, val_t = torch.as_tensor(train_idx, device=device), torch.as_tensor(val_idx, device=device)
    # the budget and learning rate for these voxels (recorded as max_epochs, which the learning rate
    # anneals over, and learning_rate)
    settings = for_voxels(settings, train_idx.size)
    model = PhysicsAutoencoder(acquisition, kinds, generator).to(device)
    power, n_echoes = settings.nll_snr_power, x.shape[1]
    weight = None if power is None else snr_weights(sig, power)
    columns = [x, sig] if weight is None else [x, sig, weight]
    # echo-major (rows: echoes, sigma, weight), so that a mini-batch is one gather of columns
    train = torch.cat(columns, dim=1)[train_t].T.contiguous()
    x_val, sigma_val = x[val_t], sig[val_t]
    # Validation weighs its voxels as training does: early stopping watches the objective trained on.
    val_weight = None if weight is None else weight[val_t, 0]
    stack = BlockStack(model, acquisition)

    def batch_gradient(theta: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = train.index_select(1, idx.reshape(-1)).view(-1, *idx.shape)
        return stack.gradient(theta, batch[:n_echoes], batch[n_echoes], None if weight is None else batch[-1])

    def validation_loss() -> list[float]:
        theta = parameter_vector(model)  # the loop's weights now
        nll = evaluate_in_chunks(model, x_val.shape[0], lambda sl: stack.nll(theta, x_val[sl], sigma_val[sl]))
        return voxel_mean(torch.cat(nll, dim=1), val_weight).tolist()

    histories = early_stopping(model, train.shape[1], batch_gradient, validation_loss, settings, generator,
                               (seed,) * len(kinds), network_loss(settings), progress)
    return TrainedNetworks(model, histories, x, sig, scale.numpy(), settings, train_idx.size, val_idx.size)


# Below this SNR (largest echo over sigma) a voxel's NLL weight stops growing. A floor of 5 also
# fixed cortical bone (SNR ~9), but the liver-derived phantom at 1.5 T swapped 5.45 / 6.42 %
# (phantom seeds 0 / 1) against 4.90 / 4.22 with the plain NLL; at 20 it swaps 4.81 / 4.85, and an
# iron-loaded liver (first echo 18-30 sigma at 500-1000 1/s) still gains its weight.
SNR_WEIGHT_FLOOR = 20.0


def snr_weights(normalised_sigma: torch.Tensor, power: float) -> torch.Tensor:
    """Each voxel's NLL weight SNR^-power (N, 1), from its sigma in max-normalised units (N, 1),
    which is 1 / SNR of its largest echo; SNR floored at SNR_WEIGHT_FLOOR."""
    return normalised_sigma.clamp(max=1 / SNR_WEIGHT_FLOOR) ** power


def voxel_mean(nll: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Each network's mean of its per-voxel NLLs (K, N) -> (K,), weighted by `weight` ((K, N) or
    (N,)) when given: the loss of a mini-batch and of the validation set alike."""
    if weight is None:
        return nll.mean(dim=-1)
    return (nll * weight).sum(dim=-1) / weight.sum(dim=-1)


def network_loss(settings: TrainingSettings) -> str:
    """The self-supervised loss as the provenance names it."""
    if settings.nll_snr_power is None:
        return DEFAULT_NETWORK_LOSS
    return (f"{DEFAULT_NETWORK_LOSS}, weighted by SNR^-{settings.nll_snr_power:g} (SNR: largest echo / sigma, "
            f"at least {SNR_WEIGHT_FLOOR:g}), in training and validation")


def network_file(model: PhysicsAutoencoder, k: int, acquisition: Acquisition) -> dict:
    """What is saved per network: weights plus what is needed to rebuild it."""
    return {"state_dict": model.network_state(k), "kind": model.kinds[k], "n_echoes": acquisition.n_echoes,
            "echo_times_s": list(acquisition.echo_times_s), "field_strength_t": acquisition.field_strength_t}


def predict(model: PhysicsAutoencoder, x: torch.Tensor, sigma: torch.Tensor,
            scale: np.ndarray | None = None) -> list[dict[str, np.ndarray]]:
    """Per network: candidate parameters and per-voxel NLL for normalised signals x (N, E);
    S0 multiplied back by `scale` (N,) when given."""
    def evaluate(sl: slice) -> tuple[torch.Tensor, ...]:
        s0, pdff, r2 = model.parameters_of(x[sl])
        k, n = s0.shape
        predicted = model.decoder(s0.reshape(-1), pdff.reshape(-1), r2.reshape(-1)).reshape(k, n, -1)
        nll = rician_nll_per_voxel(x[sl], predicted, sigma[sl])
        return tuple(value.double().cpu() for value in (s0, pdff, r2, nll))

    chunks = evaluate_in_chunks(model, x.shape[0], evaluate)
    s0, pdff, r2, nll = (torch.cat(part, dim=1).numpy() for part in zip(*chunks))
    if scale is not None:
        s0 = s0 * scale
    return [{"s0": s0[k], "pdff": pdff[k], "r2star_s": r2[k], "nll": nll[k]} for k in range(len(model.kinds))]
