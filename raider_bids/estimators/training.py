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


# A training step's tensors (a mini-batch through layers a few units wide) are barely worth splitting:
# on an idle 2-core machine two threads are 10-20 % faster than one, but beside one CPU-bound process
# they are 4x slower (each op waits for the thread that lost its core). So on CPU the step runs on
# whichever is faster now, the caller's count or one thread, probed on PROBE_STEPS steps of each at
# the start and every PROBE_EVERY_EPOCHS epochs (benchmarks/shared_machine.py). Below torch's grain
# size (at::internal::GRAIN_SIZE elements per op) ops are not split, so the count does not change a
# bit of the result; above it the caller's count is kept, for reproducibility. The validation loss
# (tens of thousands of voxels, reduced to one number) always runs on one thread, for the same reason.
PROBE_STEPS = 10
PROBE_EVERY_EPOCHS = 5
_GRAIN_SIZE = 32768


class StepThreads:
    """torch's intra-op threads during training steps; restores the caller's count on exit."""

    def __init__(self, device: torch.device, largest_op_elements: int):
        self.caller = torch.get_num_threads()
        self.options = ((self.caller, 1) if device.type == "cpu" and self.caller > 1
                        and largest_op_elements < _GRAIN_SIZE else (self.caller,))
        self.chosen = self.options[-1]
        self._seconds: dict[int, float] = {}
        self.steps: dict[int, int] = {}  # thread count -> training steps run on it, for the provenance

    def __enter__(self) -> "StepThreads":
        return self

    def __exit__(self, *exc) -> None:
        torch.set_num_threads(self.caller)

    def before_step(self, epoch: int, step: int) -> None:
        probing = len(self.options) > 1 and (epoch - 1) % PROBE_EVERY_EPOCHS == 0 and step < 2 * PROBE_STEPS
        threads = self.options[step // PROBE_STEPS] if probing else self.chosen
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        self._probing, self._start = probing, time.perf_counter()

    def before_validation(self) -> None:
        if len(self.options) > 1:
            torch.set_num_threads(1)

    def after_step(self, epoch: int, step: int) -> None:
        threads = torch.get_num_threads()
        self.steps[threads] = self.steps.get(threads, 0) + 1
        if not self._probing:
            return
        self._seconds[threads] = self._seconds.get(threads, 0.0) + time.perf_counter() - self._start
        if step == 2 * PROBE_STEPS - 1:
            self.chosen = min(self.options, key=lambda t: self._seconds[t])
            self._seconds = {}


def early_stopping(model: PhysicsAutoencoder, n_train: int, batch_loss: Callable[[torch.Tensor], torch.Tensor],
                   validation_loss: Callable[[], list[float]], settings: TrainingSettings,
                   generator: torch.Generator, seeds: tuple[int, ...], loss_name: str,
                   progress: ProgressCallback | None = None) -> list[NetworkRecord]:
    """The training loop of every network stack: Adam on `batch_loss` (mini-batch indices (K, B)
    into the n_train training items -> per-network mean loss (K,)); each network stops after
    `patience` epochs without a better `validation_loss()` (per network) and gets its best weights
    back. Returns each network's record (`loss_name` names the loss). `progress` is told where the
    training stands before the first epoch, after each and when it has stopped (TrainingProgress)."""
    k_nets = len(model.kinds)
    histories = [NetworkRecord(kind, seed, loss_name) for kind, seed in zip(model.kinds, seeds)]
    # fused: one kernel for all the small weight tensors (345 -> 72 us, a tenth of a step)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate, fused=True)
    schedule = _cosine_schedule(optimiser, settings)
    best_loss = validation_loss()
    best_state = [model.network_state(k) for k in range(k_nets)]
    waited = [0] * k_nets
    active = [True] * k_nets
    start = time.perf_counter()
    device = next(model.parameters()).device
    for h in histories:
        h.stop_reason = f"reached --max-epochs {settings.max_epochs}"
    batch = min(settings.batch_size, n_train)

    def tell(epoch: int, elapsed_s: float, finished: bool = False) -> None:
        if progress is not None:  # the losses of the networks that trained this epoch (all before the first)
            losses = {h.network: h.validation_loss[-1] if epoch else best_loss[k]
                      for k, h in enumerate(histories) if h.epochs == epoch}
            progress(TrainingProgress(epoch, settings.max_epochs, settings.patience, elapsed_s, losses,
                                      tuple(histories), finished))

    tell(0, 0.0)
    with StepThreads(device, k_nets * batch * max(max(w.shape[1:]) for w in model.weights)) as threads:
        for epoch in range(1, settings.max_epochs + 1):
            running = torch.zeros(k_nets, dtype=torch.float64, device=device)
            seen = 0
            for step, idx in enumerate(_epoch_batches(n_train, k_nets, settings, generator)):
                threads.before_step(epoch, step)
                idx = idx.to(device)
                per_network = batch_loss(idx)
                optimiser.zero_grad(set_to_none=True)
                per_network.sum().backward()
                optimiser.step()
                if schedule is not None:
                    schedule.step()
                running += per_network.detach().double() * idx.shape[1]  # on the device: no sync per step
                seen += idx.shape[1]
                threads.after_step(epoch, step)
            threads.before_validation()
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
