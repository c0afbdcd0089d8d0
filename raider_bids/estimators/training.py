"""The one training loop of every network stack (self-supervised and supervised alike) and the
one train/validation split.

The networks of a stack (the 'water' and 'fat' pair, or single networks with different seeds)
train in the same steps: each has its own weights, mini-batch order, Adam state (Adam is
element-wise) and early stopping, so this equals training them one after another, at the cost of one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch

from ..config import TrainingSettings
from ..provenance import NetworkRecord, TrainingProgress
from ..resources import chunk_slices
from .base import ProgressCallback
from .networks import PhysicsAutoencoder


def validation_size(n: int, fraction: float, max_validation: int | None = None) -> int:
    """How many of n items (n >= 2) are held out for validation: at least 1, at most n - 1."""
    return min(max(1, int(round(fraction * n))), n - 1, max_validation or n)


def split_indices(n: int, validation_fraction: float, rng: np.random.Generator,
                  max_validation: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Random train/validation split of range(n), each part sorted; both non-empty for n >= 2."""
    order = rng.permutation(n)
    n_val = validation_size(n, validation_fraction, max_validation)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


# A training step's tensors (mini-batches through layers a few units wide) are not worth splitting:
# with the hand-written step (analytic_gradient), one thread is as fast as two on an idle 2-core
# machine, from 6 echoes and 1,024 voxels a network (1.0-1.4 against 1.4-1.9 ms) up to 16 echoes
# (2.6 against 4.1 ms) or 8,192 voxels (6.2-6.6 against 6.5-7.4 ms), and beside one CPU-bound
# process two threads take 5x as long (each op waits for the thread that lost its core;
# benchmarks/training_step.py). So on CPU the loop (steps and validation) runs on one thread, and
# the trained weights cannot depend on --nprocs (MKL splits even a step's small products
# differently on two threads).


class StepThreads:
    """torch's intra-op threads during the training loop: one on CPU, the caller's count on other
    devices; restores the caller's count on exit."""

    def __init__(self, device: torch.device):
        self.caller = torch.get_num_threads()
        self.threads = 1 if device.type == "cpu" else self.caller
        self.steps: dict[int, int] = {}  # thread count -> training steps run on it, for the provenance

    def __enter__(self) -> "StepThreads":
        torch.set_num_threads(self.threads)
        return self

    def __exit__(self, *exc) -> None:
        torch.set_num_threads(self.caller)

    def count_step(self) -> None:
        self.steps[self.threads] = self.steps.get(self.threads, 0) + 1


BatchGradient = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def parameter_vector(model: torch.nn.Module) -> torch.Tensor:
    """A copy of the model's parameters as one flat vector, in the order of model.parameters(),
    each flattened: the layout of the training loop's theta."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def flatten_parameters(model: torch.nn.Module) -> torch.Tensor:
    """Make the model's parameters views of one flat vector (parameter_vector's layout) and return
    it: the optimiser updates every weight in one kernel per operation."""
    parameters = list(model.parameters())
    theta = parameter_vector(model)
    offset = 0
    for p in parameters:
        p.data = theta[offset:offset + p.numel()].view_as(p)
        offset += p.numel()
    return theta


def autograd_gradient(model: torch.nn.Module, batch_loss: Callable[[torch.Tensor], torch.Tensor]) -> BatchGradient:
    """A BatchGradient from a differentiable `batch_loss` (mini-batch indices (K, B) -> per-network
    loss (K,)) of the model's parameters, which must be views of theta (flatten_parameters)."""
    parameters = list(model.parameters())

    def gradient(theta: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss = batch_loss(idx)
        grads = torch.autograd.grad(loss.sum(), parameters)
        return loss.detach(), torch.cat([g.reshape(-1) for g in grads])
    return gradient


class Adam:
    """torch.optim.Adam's update (its default betas and eps, no weight decay) on one flat vector:
    six kernels for every weight of the stack, where torch's optimiser spent 0.4 ms a step on
    its bookkeeping (a step is 1-4 ms)."""

    BETAS, EPS = (0.9, 0.999), 1e-8

    def __init__(self, theta: torch.Tensor):
        self.theta, self.steps = theta, 0
        self.mean, self.square = torch.zeros_like(theta), torch.zeros_like(theta)

    def step(self, grad: torch.Tensor, learning_rate: float) -> None:
        (b1, b2), self.steps = self.BETAS, self.steps + 1
        self.mean.lerp_(grad, 1 - b1)
        self.square.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denominator = (self.square.sqrt() / math.sqrt(1 - b2 ** self.steps)).add_(self.EPS)
        self.theta.addcdiv_(self.mean, denominator, value=-learning_rate / (1 - b1 ** self.steps))


def early_stopping(model: PhysicsAutoencoder, n_train: int, batch_gradient: BatchGradient,
                   validation_loss: Callable[[], list[float]], settings: TrainingSettings,
                   generator: torch.Generator, seeds: tuple[int, ...], loss_name: str,
                   progress: ProgressCallback | None = None) -> list[NetworkRecord]:
    """The training loop of every network stack: Adam on `batch_gradient(theta, idx)` (the
    stack's parameters as one flat vector, from flatten_parameters, and mini-batch indices (K, B)
    into the n_train training items -> per-network mean loss (K,) and its gradient in theta); each
    network stops after `patience` epochs without a better `validation_loss()` (per network) and
    gets its best weights back. Returns each network's record (`loss_name` names the loss).
    `progress` is told where the training stands before the first epoch, after each and when it
    has stopped (TrainingProgress)."""
    k_nets = len(model.kinds)
    histories = [NetworkRecord(kind, seed, loss_name) for kind, seed in zip(model.kinds, seeds)]
    theta = flatten_parameters(model)
    optimiser = Adam(theta)
    best_loss = validation_loss()
    best_state = [model.network_state(k) for k in range(k_nets)]
    waited = [0] * k_nets
    active = [True] * k_nets
    start = time.perf_counter()
    device = next(model.parameters()).device
    for h in histories:
        h.stop_reason = f"reached its budget of {settings.max_epochs} epochs"

    def tell(epoch: int, elapsed_s: float, finished: bool = False) -> None:
        if progress is not None:  # the losses of the networks that trained this epoch (all before the first)
            losses = {h.network: h.validation_loss[-1] if epoch else best_loss[k]
                      for k, h in enumerate(histories) if h.epochs == epoch}
            progress(TrainingProgress(epoch, settings.max_epochs, settings.patience, elapsed_s, losses,
                                      tuple(histories), finished))

    tell(0, 0.0)
    with StepThreads(device) as threads:
        for epoch in range(1, settings.max_epochs + 1):
            running = torch.zeros(k_nets, dtype=torch.float64, device=device)
            seen = 0
            for idx in _epoch_batches(n_train, k_nets, settings, generator):
                idx = idx.to(device)
                per_network, grad = batch_gradient(theta, idx)
                optimiser.step(grad, learning_rate(settings, optimiser.steps))
                running += per_network.double() * idx.shape[1]  # on the device: no sync per step
                seen += idx.shape[1]
                threads.count_step()
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
            tell(epoch, time.perf_counter() - start)
            if not any(active):
                break
    for k, h in enumerate(histories):
        model.load_network_state(k, best_state[k])
        h.best_validation_loss = best_loss[k]
        h.step_threads = {str(t): n for t, n in sorted(threads.steps.items())}
    # the networks trained together: the stack's time is the last network's (each record's seconds
    # run from the joint start to that network's last epoch)
    tell(max(h.epochs for h in histories), max(h.seconds for h in histories), finished=True)
    return histories


def epoch_budget(settings: TrainingSettings, n_train: int) -> int:
    """The most epochs for n_train training voxels: max_epochs, or with `budget_passes` (and
    steps_per_epoch) the epochs that draw each voxel that many times on average, within
    [min_epochs, max_epochs]."""
    if settings.budget_passes is None or settings.steps_per_epoch is None:
        return settings.max_epochs
    per_epoch = settings.steps_per_epoch * min(settings.batch_size, n_train)
    return min(settings.max_epochs, max(settings.min_epochs, math.ceil(settings.budget_passes * n_train / per_epoch)))


def for_voxels(settings: TrainingSettings, n_train: int) -> TrainingSettings:
    """`settings` for a run of n_train training voxels: max_epochs set to its epoch_budget, and
    with `budget_lr_power` the learning rate scaled by (max_epochs / budget) to that power (1
    where the budget does not follow the voxels)."""
    budget = epoch_budget(settings, n_train)
    rate = settings.learning_rate
    if settings.budget_lr_power is not None:
        rate *= (settings.max_epochs / budget) ** settings.budget_lr_power
    return replace(settings, max_epochs=budget, learning_rate=rate)


def learning_rate(settings: TrainingSettings, step: int) -> float:
    """The learning rate of optimiser step `step` (0 first): constant, or annealed along a half
    cosine to `final_lr_fraction` of its start over the whole step budget (max_epochs x
    steps_per_epoch) when there is one."""
    if settings.final_lr_fraction is None or settings.steps_per_epoch is None:
        return settings.learning_rate
    total, final = settings.max_epochs * settings.steps_per_epoch, settings.final_lr_fraction
    return settings.learning_rate * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(step, total) / total)))


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
