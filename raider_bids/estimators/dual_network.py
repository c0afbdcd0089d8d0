"""The paper's estimator: a 'water' and a 'fat' self-supervised network trained on the run's own
voxels, and per voxel the candidate with the higher Rician likelihood (Sec. 3.1-3.2)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..batching import chunk_slices
from ..likelihood import rician_nll_per_voxel
from ..signal_model import Acquisition
from ..transforms import PDFF_BOUNDARY
from .base import Estimates, ProgressCallback, TrainingSettings, choose_by_likelihood
from .networks import PhysicsAutoencoder, TrainingHistory, inference_chunk, normalise, split_indices, train



class SelfSupervisedDual:
    """Dual constrained self-supervised networks (Minore et al. 2025)."""

    name = "ssl"
    networks = ("water", "fat")
    description = ("dual self-supervised networks, water (PDFF <= 0.58) and fat (PDFF >= 0.58), "
                   "chosen per voxel by Rician likelihood")
    reference = ("Minore GV, Dwyer-Hemmings L, Bray TJP, Zhang H. Resolving quantitative MRI model "
                 "degeneracy in self-supervised machine learning. 2025.")

    def __init__(self, settings: TrainingSettings = TrainingSettings()):
        self.settings = settings

    def fit(self, signals: np.ndarray, acquisition: Acquisition, sigma: float, *, seed: int,
            device: torch.device, progress: ProgressCallback | None = None) -> Estimates:
        kinds = ("water", "fat")
        trained = train_networks(signals, acquisition, sigma, kinds, seed, device, self.settings, progress)
        water, fat = predict(trained.model, trained.x, trained.sigma, trained.scale)
        estimates = choose_by_likelihood(water, fat)
        estimates.weights = {kind: network_file(trained.model, k, acquisition) for k, kind in enumerate(kinds)}
        estimates.provenance = trained.provenance(self)
        estimates.provenance |= {"PDFFBoundary": PDFF_BOUNDARY,
                                 "ShareChoosingFat": float(estimates.chose_fat.mean()),
                                 "ShareChoosingWater": float(1 - estimates.chose_fat.mean())}
        return estimates


@dataclass
class TrainedNetworks:
    model: PhysicsAutoencoder
    histories: list[TrainingHistory]
    x: torch.Tensor  # normalised signals (N, E)
    sigma: torch.Tensor  # normalised sigma (N, 1)
    scale: np.ndarray  # (N,) normalisation factors
    settings: TrainingSettings
    n_train: int
    n_validation: int

    def provenance(self, estimator) -> dict:
        return {"Method": estimator.name, "Description": estimator.description,
                "TrainingSettings": asdict(self.settings), "TrainingVoxels": self.n_train,
                "ValidationVoxels": self.n_validation, "Networks": [h.to_dict() for h in self.histories]}


def train_networks(signals: np.ndarray, acquisition: Acquisition, sigma: float, kinds: tuple[str, ...],
                   seed: int, device: torch.device, settings: TrainingSettings,
                   progress: ProgressCallback | None) -> TrainedNetworks:
    """Normalise, split and train one network per kind on the voxels `signals` (N, E)."""
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    x, sig, scale = normalise(signals, sigma, device)
    train_idx, val_idx = split_indices(x.shape[0], settings.validation_fraction, rng, settings.max_validation_voxels)
    train_t, val_t = torch.as_tensor(train_idx, device=device), torch.as_tensor(val_idx, device=device)
    model = PhysicsAutoencoder(acquisition, kinds, generator).to(device)
    histories = train(model, x[train_t], sig[train_t], x[val_t], sig[val_t], settings, generator,
                      (seed,) * len(kinds), progress)
    return TrainedNetworks(model, histories, x, sig, scale.numpy(), settings, train_idx.size, val_idx.size)


def network_file(model: PhysicsAutoencoder, k: int, acquisition: Acquisition) -> dict:
    """What is saved per network: weights plus what is needed to rebuild it."""
    return {"state_dict": model.network_state(k), "kind": model.kinds[k], "n_echoes": acquisition.n_echoes,
            "echo_times_s": list(acquisition.echo_times_s), "field_strength_t": acquisition.field_strength_t}


def predict(model: PhysicsAutoencoder, x: torch.Tensor, sigma: torch.Tensor,
            scale: np.ndarray | None = None) -> list[dict[str, np.ndarray]]:
    """Per network: candidate parameters and per-voxel NLL for normalised signals x (N, E);
    S0 multiplied back by `scale` (N,) when given."""
    parts: list[list[torch.Tensor]] = [[], [], [], []]
    model.eval()
    with torch.no_grad():
        for sl in chunk_slices(x.shape[0], inference_chunk(model)):
            s0, pdff, r2 = model.parameters_of(x[sl])
            k, n = s0.shape
            predicted = model.decoder(s0.reshape(-1), pdff.reshape(-1), r2.reshape(-1)).reshape(k, n, -1)
            nll = rician_nll_per_voxel(x[sl], predicted, sigma[sl])
            for part, value in zip(parts, (s0, pdff, r2, nll)):
                part.append(value.double().cpu())
    s0, pdff, r2, nll = (torch.cat(p, dim=1).numpy() for p in parts)
    if scale is not None:
        s0 = s0 * scale
    return [{"s0": s0[k], "pdff": pdff[k], "r2star_s": r2[k], "nll": nll[k]} for k in range(len(model.kinds))]


class SingleNetwork:
    """The naive baseline: one self-supervised network with PDFF free in [0, 1] (paper Fig. 4, 5).
    It lands on the water- or the fat-dominant solution unpredictably."""

    name = "single"
    networks = ("full",)
    description = "one self-supervised network, PDFF unconstrained in [0, 1] (the naive baseline)"
    reference = SelfSupervisedDual.reference

    def __init__(self, settings: TrainingSettings = TrainingSettings()):
        self.settings = settings

    def fit(self, signals: np.ndarray, acquisition: Acquisition, sigma: float, *, seed: int,
            device: torch.device, progress: ProgressCallback | None = None) -> Estimates:
        trained = train_networks(signals, acquisition, sigma, ("full",), seed, device, self.settings, progress)
        (single,) = predict(trained.model, trained.x, trained.sigma, trained.scale)
        chose_fat = single["pdff"] >= PDFF_BOUNDARY
        estimates = Estimates(pdff=single["pdff"], r2star_s=single["r2star_s"], s0=single["s0"],
                              log_likelihood_ratio=None, chose_fat=chose_fat)
        estimates.weights = {"full": network_file(trained.model, 0, acquisition)}
        estimates.provenance = trained.provenance(self) | {"ShareFatDominant": float(chose_fat.mean())}
        return estimates
