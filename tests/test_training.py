"""The one training loop (estimators.training.early_stopping) and the one split, tested directly:
each network of a stack stops on its own validation loss, keeps training in the stack after it
stopped, and gets back the weights of its best epoch."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from raider_bids.config import TRAINING_PRESETS
from raider_bids.estimators.networks import PhysicsAutoencoder, normalise
from raider_bids.estimators import self_supervised
from raider_bids.estimators.self_supervised import SNR_WEIGHT_FLOOR, snr_weights
from raider_bids.estimators import get_estimator, training
from raider_bids.estimators.training import (autograd_gradient, early_stopping, epoch_budget, split_indices,
                                             validation_size)
from raider_bids.physics.fat_spectrum import PRESETS
from raider_bids.physics.signal_model import Acquisition
from raider_bids.physics.simulation import simulate_magnitude

ACQUISITION = Acquisition(tuple(1.15e-3 * k for k in range(1, 7)), 3.0, PRESETS["hernando"])
SETTINGS = dataclasses.replace(TRAINING_PRESETS["fast"], learning_rate=1e-2, batch_size=8, patience=3,
                               max_epochs=10, steps_per_epoch=2)
# Scripted validation losses: before training, then after each epoch. The water network's best is
# epoch 2, so with patience 3 it stops after epoch 5; the fat network improves to the last epoch.
WATER = [10.0, 5.0, 4.0, 6.0, 7.0, 8.0, 1.0, 1.0, 1.0, 1.0, 1.0]
FAT = [10.0, 9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.5, 1.0]


def _train(validation, settings=SETTINGS, progress=None):
    """Train a water/fat stack on a real loss (so that weights move) with scripted validation
    losses; returns the records, the weights seen at each validation and the final weights."""
    generator = torch.Generator().manual_seed(0)
    model = PhysicsAutoencoder(ACQUISITION, ("water", "fat"), generator)
    x = torch.rand(64, ACQUISITION.n_echoes, generator=torch.Generator().manual_seed(1))
    seen: list[list[dict[str, torch.Tensor]]] = []

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        return ((model(x[idx]) - x[idx]) ** 2).mean(dim=(1, 2))

    def validation_loss() -> list[float]:
        seen.append([model.network_state(k) for k in range(2)])
        return [series[len(seen) - 1] for series in validation]

    records = early_stopping(model, x.shape[0], autograd_gradient(model, batch_loss), validation_loss, settings,
                             generator, (0, 0), "test loss", progress)
    return records, seen, [model.network_state(k) for k in range(2)]


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_each_network_stops_on_its_own_validation_loss():
    (water, fat), _, _ = _train((WATER, FAT))
    assert (water.epochs, water.best_epoch, water.best_validation_loss) == (5, 2, 4.0)
    assert water.stop_reason == "no better validation loss for 3 epochs"
    assert water.validation_loss == WATER[1:6] and len(water.train_loss) == 5
    assert (fat.epochs, fat.best_epoch, fat.best_validation_loss) == (10, 10, 1.0)
    assert fat.stop_reason == "reached its budget of 10 epochs"
    assert fat.validation_loss == FAT[1:] and water.loss == fat.loss == "test loss"


def test_best_weights_are_restored_per_network():
    """The water network keeps training in the stack after it stopped (its weights at the end of
    training differ from those of its best epoch), yet comes back with its best epoch's weights."""
    _, seen, final = _train((WATER, FAT))
    best_water, last_water = seen[2][0], seen[-1][0]
    assert not _equal(best_water, last_water)
    assert _equal(final[0], best_water)
    assert _equal(final[1], seen[-1][1])  # the fat network's best is its last epoch


def test_a_network_that_never_improves_keeps_its_initial_weights():
    (water, _), seen, final = _train(([10.0] + [11.0] * 10, FAT))
    assert (water.epochs, water.best_epoch) == (3, 0)
    assert _equal(final[0], seen[0][0])


def test_a_non_finite_validation_loss_stops_that_network_only():
    (water, fat), seen, final = _train(([10.0, 5.0, float("nan")] + [1.0] * 8, FAT))
    assert water.stop_reason == "validation loss not finite" and water.epochs == 2
    assert _equal(final[0], seen[1][0]) and fat.epochs == 10


def test_training_stops_when_every_network_has_stopped():
    calls = []
    records, seen, _ = _train(([10.0, 5.0] + [6.0] * 9, [10.0, 5.0] + [6.0] * 9),
                              progress=lambda state: calls.append((state.epoch, sorted(state.validation_loss),
                                                                   state.finished)))
    assert [r.epochs for r in records] == [4, 4] and len(seen) == 5
    assert calls == [(e, ["fat", "water"], False) for e in range(5)] + [(4, ["fat", "water"], True)]


@pytest.mark.parametrize("n, fraction, cap, expected", [(2, 0.1, None, 1), (100, 0.1, None, 10),
                                                         (100, 0.99, None, 99), (10**6, 0.1, 20000, 20000)])
def test_validation_size(n, fraction, cap, expected):
    assert validation_size(n, fraction, cap) == expected


@pytest.mark.parametrize("n_train, expected", [
    (500, 25),  # a batch is every voxel: the floor
    (58_000, 25),  # a 256 x 256 slice: 6 draws need 4 epochs of 100 x 1,024; the floor
    (1_000_000, 59),  # 6e6 draws / 102,400 a epoch = 58.6
    (1_360_000, 80),  # the clinical-size volume: 79.7 epochs
    (5_000_000, 80),  # the cap
])
def test_the_fast_budget_draws_each_voxel_six_times_within_its_bounds(n_train, expected):
    assert epoch_budget(TRAINING_PRESETS["fast"], n_train) == expected


def test_the_paper_and_an_explicit_budget_do_not_follow_the_voxels():
    assert epoch_budget(TRAINING_PRESETS["paper"], 10**6) == epoch_budget(TRAINING_PRESETS["paper"], 100) == 1000
    fixed = dataclasses.replace(TRAINING_PRESETS["fast"], max_epochs=7, budget_passes=None)
    assert epoch_budget(fixed, 10**6) == epoch_budget(fixed, 100) == 7


def test_a_small_run_trains_and_anneals_over_its_own_budget():
    """A 2,000-voxel run trains the fast preset's floor of epochs, records that budget, and its
    learning rate ends annealed over it (not over the preset's 80 epochs)."""
    acquisition = Acquisition((1.15e-3 * np.arange(1, 7)).tolist(), 3.0, PRESETS["hernando"])
    rng = np.random.default_rng(0)
    signals = simulate_magnitude(acquisition, np.full(2000, 100.0), rng.uniform(0, 1, 2000),
                                 rng.uniform(20, 200, 2000), 2.0, rng)
    settings = dataclasses.replace(TRAINING_PRESETS["fast"], min_epochs=3, patience=100)
    trained = self_supervised.train_networks(signals, acquisition, 2.0, ("water", "fat"), 0, torch.device("cpu"),
                                             settings, None)
    assert trained.settings.max_epochs == 3 and all(h.epochs == 3 for h in trained.histories)
    fast = TRAINING_PRESETS["fast"]
    start = fast.learning_rate * math.sqrt(80 / 3)  # the short budget's larger steps (power 0.5)
    assert trained.settings.learning_rate == pytest.approx(start)
    assert training.learning_rate(trained.settings, 300) == pytest.approx(start * fast.final_lr_fraction)


@pytest.mark.parametrize("n_train, epochs, rate", [
    (58_000, 25, 1e-2 * math.sqrt(80 / 25)),  # a slice: the floor, 1.79e-2
    (1_000_000, 59, 1e-2 * math.sqrt(80 / 59)),
    (1_360_000, 80, 1e-2),  # the clinical-size volume: the preset's own rate
])
def test_a_short_budget_takes_larger_steps(n_train, epochs, rate):
    settings = training.for_voxels(TRAINING_PRESETS["fast"], n_train)
    assert settings.max_epochs == epochs and settings.learning_rate == pytest.approx(rate)
    # the paper preset, an explicit budget and an explicit rate are used as given
    assert training.for_voxels(TRAINING_PRESETS["paper"], n_train) == TRAINING_PRESETS["paper"]
    fixed = dataclasses.replace(TRAINING_PRESETS["fast"], max_epochs=7, budget_passes=None)
    assert training.for_voxels(fixed, n_train).learning_rate == 1e-2
    given = dataclasses.replace(TRAINING_PRESETS["fast"], learning_rate=3e-3, budget_lr_power=None)
    assert training.for_voxels(given, n_train) == dataclasses.replace(given, max_epochs=epochs)


def test_split_is_a_seeded_partition():
    train, val = split_indices(1000, 0.1, np.random.default_rng(3))
    assert val.size == 100 and np.array_equal(np.sort(np.concatenate([train, val])), np.arange(1000))
    again = split_indices(1000, 0.1, np.random.default_rng(3))
    assert np.array_equal(again[0], train) and np.array_equal(again[1], val)


def test_the_training_loop_runs_on_one_thread_on_cpu():
    """On CPU the loop runs on one thread (the caller's count comes back at the end); on other
    devices on the caller's count."""
    caller = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with training.StepThreads(torch.device("cpu")) as threads:
            assert torch.get_num_threads() == 1
            threads.count_step()
            threads.count_step()
        assert threads.steps == {1: 2} and torch.get_num_threads() == 2
        with training.StepThreads(torch.device("meta")):
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(caller)


def test_training_gives_the_same_bits_whatever_the_thread_count():
    """The trained weights do not depend on --nprocs: the loop runs on one thread, and says so in
    the record. (The maps predicted from them after training, on the caller's count, may differ in
    the last bit from one --nprocs to another: a split op's chunks end on other elements, where the
    vectorised and scalar paths of exp round differently.)"""
    rng = np.random.default_rng(0)
    n = 3000
    signals = simulate_magnitude(ACQUISITION, np.ones(n), rng.uniform(0, 1, n), rng.uniform(0, 300, n), 1 / 60, rng)
    settings = dataclasses.replace(TRAINING_PRESETS["fast"], max_epochs=2)
    caller = torch.get_num_threads()
    maps = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            estimates = get_estimator("ssl", settings).fit(signals, ACQUISITION, 1 / 60, seed=0,
                                                           device=torch.device("cpu"))
            maps.append(estimates.weights)
            steps = settings.max_epochs * settings.steps_per_epoch
            assert [n.step_threads for n in estimates.networks] == [{"1": steps}] * 2  # as recorded
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(caller)
    for kind in ("water", "fat"):
        one, two = maps[0][kind]["state_dict"], maps[1][kind]["state_dict"]
        assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)


def test_the_fast_loss_weighs_each_voxel_by_its_snr_to_the_minus_two():
    """The weight is SNR^-2 of the voxel's largest echo (floored at SNR_WEIGHT_FLOOR), from the raw
    signals, whatever the normalisation."""
    rng = np.random.default_rng(1)
    sigma = 2.0
    signals = rng.uniform(0.5, 200.0, (500, 6))
    signals[0] = 1.0  # below the floor: SNR 0.5
    _, normalised_sigma, _ = normalise(signals, sigma, torch.device("cpu"))
    snr = signals.max(axis=1) / sigma
    expected = 1 / np.maximum(snr, SNR_WEIGHT_FLOOR) ** TRAINING_PRESETS["fast"].nll_snr_power
    got = snr_weights(normalised_sigma, TRAINING_PRESETS["fast"].nll_snr_power)[:, 0].double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert got[0] == pytest.approx(SNR_WEIGHT_FLOOR ** -2, rel=1e-6)


@pytest.mark.parametrize("n_echoes", [4, 6, 12])
def test_the_mini_batch_loss_and_gradient_are_the_snr_weighted_mean_nll_and_its_autograd_gradient(
        monkeypatch, n_echoes):
    """The loss train_networks hands the training loop, against the weighted mean computed here
    from the raw signals (SNR = largest echo / sigma, floored) and the Rician NLL of
    PhysicsAutoencoder's forward; its hand-written gradient against autograd's of that mean; the
    paper preset's against the plain mean. Echo counts from 4 to 12, the water/fat pair and the
    single network."""
    from raider_bids.physics.likelihood import rician_nll_per_voxel

    acquisition = Acquisition(tuple(1.2e-3 + 1.0e-3 * i for i in range(n_echoes)), 1.5, PRESETS["hernando"])
    captured = {}

    def capture(model, n_train, batch_gradient, validation_loss, settings, generator, seeds, loss_name, progress):
        captured.update(model=model, batch_gradient=batch_gradient, loss_name=loss_name)
        return [training.NetworkRecord(kind, seed, loss_name) for kind, seed in zip(model.kinds, seeds)]

    monkeypatch.setattr(self_supervised, "early_stopping", capture)
    rng = np.random.default_rng(0)
    n, sigma = 300, 2.0
    s0 = rng.uniform(10, 200, n)  # first echoes from about 4 to 100 sigma: the floor binds on some
    signals = simulate_magnitude(acquisition, s0, rng.uniform(0, 1, n), rng.uniform(10, 300, n), sigma, rng)
    for kinds in (("water", "fat"), ("full",)):
        idx = torch.arange(6 * len(kinds)).reshape(len(kinds), 6)
        for name in ("fast", "paper"):
            settings = TRAINING_PRESETS[name]
            self_supervised.train_networks(signals, acquisition, sigma, kinds, 0, torch.device("cpu"), settings, None)
            # the training voxels, as train_networks splits them (its generator's first use)
            train_idx, _ = split_indices(n, settings.validation_fraction, np.random.default_rng(0),
                                         settings.max_validation_voxels)
            m = torch.as_tensor(signals[train_idx][idx.numpy()], dtype=torch.float32)  # (K, 6, E)
            scale = m.amax(dim=-1, keepdim=True)
            model = captured["model"]
            nll = rician_nll_per_voxel(m / scale, model(m / scale), sigma / scale)
            if settings.nll_snr_power is None:
                expected = nll.mean(dim=1)
            else:
                w = torch.clamp(scale[..., 0] / sigma, min=SNR_WEIGHT_FLOOR) ** -settings.nll_snr_power
                expected = (w * nll).sum(dim=1) / w.sum(dim=1)
            expected_grad = torch.cat([g.reshape(-1) for g in torch.autograd.grad(expected.sum(),
                                                                                  list(model.parameters()))])
            theta = training.flatten_parameters(model)
            loss, grad = captured["batch_gradient"](theta, idx)
            torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-5 * float(expected_grad.abs().max()))
            assert ("weighted by SNR^-2" in captured["loss_name"]) == (name == "fast")


def test_the_validation_nll_is_the_networks_rician_nll():
    """BlockStack.nll (the validation loss's terms) against PhysicsAutoencoder's forward and
    rician_nll_per_voxel, for the water/fat pair on the same voxels."""
    from raider_bids.estimators.analytic_gradient import BlockStack
    from raider_bids.physics.likelihood import rician_nll_per_voxel

    rng = np.random.default_rng(1)
    n = 500
    signals = simulate_magnitude(ACQUISITION, rng.uniform(5, 100, n), rng.uniform(0, 1, n), rng.uniform(0, 600, n),
                                 1.0, rng)
    x, sigma, _ = normalise(signals, 1.0, torch.device("cpu"))
    model = PhysicsAutoencoder(ACQUISITION, ("water", "fat"), torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = rician_nll_per_voxel(x, model(x), sigma)
    theta = training.parameter_vector(model)
    torch.testing.assert_close(BlockStack(model, ACQUISITION).nll(theta, x, sigma), expected, rtol=1e-5, atol=1e-4)


def test_adam_on_the_flat_vector_is_torchs_adam():
    """training.Adam with the fast preset's annealed learning rate against torch.optim.Adam with
    LambdaLR on the same gradients, parameter by parameter."""
    settings = dataclasses.replace(TRAINING_PRESETS["fast"], max_epochs=2, steps_per_epoch=10)
    generator = torch.Generator().manual_seed(0)
    model = PhysicsAutoencoder(ACQUISITION, ("water", "fat"), generator)
    reference = [p.detach().clone().requires_grad_() for p in model.parameters()]
    theta = training.flatten_parameters(model)
    ours = training.Adam(theta)
    torch_adam = torch.optim.Adam(reference, lr=settings.learning_rate)
    final, total = settings.final_lr_fraction, 20
    schedule = torch.optim.lr_scheduler.LambdaLR(
        torch_adam, lambda step: final + (1 - final) * 0.5 * (1 + np.cos(np.pi * min(step, total) / total)))
    for step in range(25):
        grads = [torch.randn(p.shape, generator=generator) for p in reference]
        for p, g in zip(reference, grads):
            p.grad = g
        torch_adam.step()
        schedule.step()
        ours.step(torch.cat([g.reshape(-1) for g in grads]), training.learning_rate(settings, step))
    for p, r in zip(model.parameters(), reference):
        torch.testing.assert_close(p.detach(), r.detach(), rtol=1e-5, atol=1e-7)
    assert training.learning_rate(settings, 0) == settings.learning_rate
    assert training.learning_rate(settings, 20) == pytest.approx(settings.learning_rate * final)
