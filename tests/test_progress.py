"""Training progress (cli.progress.EpochReporter): `epoch N/M` with the time elapsed and the most
left, the first and every 10th epoch at INFO without a terminal, a bar on one, and one line per
training that states the networks' shared time once (water and fat train together)."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch

from raider_bids.cli.progress import EpochReporter, format_duration
from raider_bids.config import TRAINING_PRESETS
from raider_bids.estimators import get_estimator, training
from raider_bids.provenance import TrainingProgress
from raider_bids.estimators.networks import PhysicsAutoencoder
from raider_bids.estimators.supervised import SupervisedDual
from raider_bids.estimators.training import autograd_gradient, early_stopping
from raider_bids.physics.fat_spectrum import PRESETS
from raider_bids.physics.signal_model import Acquisition
from raider_bids.physics.simulation import simulate_magnitude
from raider_bids.provenance import NetworkRecord

ACQUISITION = Acquisition(tuple(1.15e-3 * k for k in range(1, 7)), 3.0, PRESETS["hernando"])
CPU = torch.device("cpu")
TINY = dataclasses.replace(TRAINING_PRESETS["fast"], batch_size=64, patience=10, max_epochs=3, steps_per_epoch=2)


class Records(logging.Handler):
    """The records of logger 'raider_bids' (which the command line stops propagating to the root)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self, level: int = logging.INFO) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno == level]


@pytest.fixture
def logged():
    logger = logging.getLogger("raider_bids")
    handler, level = Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


class FakeClock:
    """Seconds since the training started; advanced by hand."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _train(reporter, epochs: int, *, max_epochs: int = 80, patience: int = 10, first_epoch_s: float = 2.0,
           epoch_s: float = 1.0, stop_reason: str = "no better validation loss for 10 epochs",
           method: str = "ssl", kinds=("water", "fat"), clock: FakeClock | None = None) -> FakeClock:
    """Tell `reporter` a stack's training as early_stopping does: epoch 0, `epochs` epochs on a fake
    clock (the first `first_epoch_s`, each other `epoch_s`), then the end."""
    clock = clock or FakeClock()
    records = tuple(NetworkRecord(kind, 0) for kind in kinds)

    def tell(epoch: int, finished: bool = False) -> None:
        reporter(TrainingProgress(epoch, max_epochs, patience, clock(), {r.network: 1.5 + k for k, r in
                                                                         enumerate(records)},
                                  records, finished, method))

    tell(0)
    for epoch in range(1, epochs + 1):
        clock.now += first_epoch_s if epoch == 1 else epoch_s
        for r in records:
            r.epochs, r.seconds = epoch, clock()
        tell(epoch)
    for r in records:
        r.stop_reason = stop_reason
    tell(epochs, finished=True)
    return clock


@pytest.mark.parametrize("seconds, text", [
    (0.0, "0.0 s"), (3.44, "3.4 s"), (9.94, "9.9 s"), (9.96, "10 s"), (41.2, "41 s"), (59.4, "59 s"),
    (59.6, "1 min"), (85.0, "1 min 25 s"), (600.0, "10 min"), (3599.4, "59 min 59 s"), (3599.6, "1 h"),
    (3600 + 5 * 60 + 10, "1 h 5 min"), (2 * 3600 + 59 * 60 + 40, "3 h"), (-1.0, "0.0 s")])
def test_durations_read_as_s_min_h(seconds, text):
    assert format_duration(seconds) == text


def test_epoch_lines_say_how_far_and_how_long(logged):
    _train(EpochReporter("sub-01_MEGRE", interactive=False), 34)
    info = logged.lines()
    assert info[0] == ("sub-01_MEGRE: ssl: training the water and fat networks together: at most 80 epochs "
                       "(each stops after 10 epochs without a better validation loss)")
    # epoch 1 took 2 s: 79 more such at most; later the mean epoch after the first (1 s) counts
    assert info[1] == ("sub-01_MEGRE: ssl: epoch 1/80, 2.0 s elapsed, at most 2 min 38 s left; "
                       "validation loss water 1.5, fat 2.5")
    assert info[2] == ("sub-01_MEGRE: ssl: epoch 10/80, 11 s elapsed, at most 1 min 10 s left; "
                       "validation loss water 1.5, fat 2.5")
    assert info[4].startswith("sub-01_MEGRE: ssl: epoch 30/80, 31 s elapsed, at most 50 s left;")


def test_without_a_terminal_only_the_first_and_every_tenth_epoch_is_info(logged):
    _train(EpochReporter("sub-01", interactive=False), 34)
    epochs = [int(line.split("epoch ")[1].split("/")[0]) for line in logged.lines() if ": epoch " in line]
    assert epochs == [1, 10, 20, 30]
    debug = [line for line in logged.lines(logging.DEBUG) if ": epoch " in line]
    assert len(debug) == 34 - 4 and "sub-01: ssl: epoch 2/80, 3.0 s elapsed" in debug[0]


def test_the_last_epoch_has_no_time_left(logged):
    _train(EpochReporter("sub-01", interactive=False), 20, max_epochs=20, stop_reason="reached its budget of 20 epochs")
    assert logged.lines()[-2] == "sub-01: ssl: epoch 20/20, 21 s elapsed; validation loss water 1.5, fat 2.5"


def test_the_end_states_the_shared_time_once(logged):
    clock = FakeClock()
    clock.now = 7.0  # the end's time is what the training says, whatever the reporter's history
    _train(EpochReporter("sub-01_MEGRE", interactive=False), 34, first_epoch_s=1.0, epoch_s=1.0, clock=clock)
    end = [line for line in logged.lines() if "trained" in line]
    assert end == ["sub-01_MEGRE: ssl: the water and fat networks trained together: 34 epochs in 41 s "
                   "(stopped: no better validation loss for 10 epochs)"]
    assert end[0].count(" s ") == 1 and "water" not in end[0].split("together")[1]


def test_networks_that_stopped_apart_say_so_each(logged):
    reporter = EpochReporter("sub-01", interactive=False)
    records = (NetworkRecord("water", 0, epochs=20, stop_reason="no better validation loss for 10 epochs",
                             seconds=20.0),
               NetworkRecord("fat", 0, epochs=34, stop_reason="reached its budget of 34 epochs", seconds=34.5))
    reporter(TrainingProgress(34, 34, 10, 34.5, {"fat": 1.0}, records, finished=True, method="supervised"))
    assert logged.lines() == [
        "sub-01: supervised: the water and fat networks trained together: 34 epochs in 34 s (water stopped "
        "after epoch 20: no better validation loss for 10 epochs; fat stopped after epoch 34: reached "
        "its budget of 34 epochs)"]


def test_a_single_network_is_not_trained_together(logged):
    _train(EpochReporter("sub-01", interactive=False), 1, kinds=("full",), method="single")
    assert logged.lines()[0].startswith("sub-01: single: training the full network: at most 80 epochs (it stops")
    assert logged.lines()[-1] == ("sub-01: single: the full network trained: 1 epoch in 2.0 s "
                                  "(stopped: no better validation loss for 10 epochs)")


def test_on_a_terminal_a_bar_says_it(logged, capsys):
    reporter = EpochReporter("sub-01", interactive=True)
    shown = []
    original = reporter.__call__

    def watch(state):
        original(state)
        if reporter.bar is not None and state.epoch == 10:
            shown.append(str(reporter.bar))

    _train(watch, 34)
    assert "epoch 10/80, 11 s elapsed, at most 1 min 10 s left; validation loss water 1.5, fat 2.5" in shown[0]
    assert reporter.bar is None  # closed at the end
    assert not [line for line in logged.lines() if ": epoch " in line]  # the bar, not INFO lines
    assert len([line for line in logged.lines(logging.DEBUG) if ": epoch " in line]) == 34
    assert [line for line in logged.lines() if "trained together: 34 epochs in 35 s" in line]
    assert "epoch 10/80" in capsys.readouterr().err


def test_real_training_reports_on_the_training_clock(logged, monkeypatch):
    """early_stopping's own clock (here a fake one that each step moves on by 0.5 s) gives the
    elapsed time, the time left and the shared time of the end, the same as the records' seconds."""
    clock = FakeClock()
    monkeypatch.setattr(training.time, "perf_counter", clock)
    generator = torch.Generator().manual_seed(0)
    model = PhysicsAutoencoder(ACQUISITION, ("water", "fat"), generator)
    x = torch.rand(64, ACQUISITION.n_echoes, generator=torch.Generator().manual_seed(1))

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        clock.now += 0.5
        return ((model(x[idx]) - x[idx]) ** 2).mean(dim=(1, 2))

    settings = dataclasses.replace(TINY, batch_size=8, max_epochs=12)
    reporter = EpochReporter("sub-01", interactive=False)
    records = early_stopping(model, 64, autograd_gradient(model, batch_loss), lambda: [1.0, 1.0], settings,
                             generator, (0, 0), "test", reporter)
    info = logged.lines()
    assert info[1].startswith("sub-01: epoch 1/12, 1.0 s elapsed, at most 11 s left; validation loss water 1,")
    assert info[2].startswith("sub-01: epoch 10/12, 10 s elapsed, at most 2.0 s left;")
    # neither network ever improves: both stop after `patience` (10) epochs, 1 s each
    assert [(r.epochs, r.seconds) for r in records] == [(10, 10.0), (10, 10.0)]
    assert info[3:] == ["sub-01: the water and fat networks trained together: 10 epochs in 10 s "
                        "(stopped: no better validation loss for 10 epochs)"]


@pytest.mark.parametrize("method", ["ssl", "supervised"])
def test_a_short_real_training_logs_epoch_1_of_m(logged, method):
    rng = np.random.default_rng(0)
    n = 400
    signals = simulate_magnitude(ACQUISITION, np.ones(n), rng.uniform(0, 1, n), rng.uniform(0, 300, n), 1 / 60, rng)
    estimator = (SupervisedDual(TINY, simulated_samples=2000) if method == "supervised"
                 else get_estimator(method, TINY))
    estimates = estimator.fit(signals, ACQUISITION, 1 / 60, seed=0, device=CPU,
                              progress=EpochReporter("sub-01_MEGRE", interactive=False))
    info = logged.lines()
    assert info[0].startswith(f"sub-01_MEGRE: {method}: training the water and fat networks together: "
                              "at most 3 epochs")
    assert info[1].startswith(f"sub-01_MEGRE: {method}: epoch 1/3, ") and " left; validation loss water " in info[1]
    seconds = max(r.seconds for r in estimates.networks)
    assert info[2] == (f"sub-01_MEGRE: {method}: the water and fat networks trained together: 3 epochs in "
                       f"{format_duration(seconds)} (stopped: reached its budget of 3 epochs)")
    assert len(info) == 3


def test_the_fit_trains_nothing_and_says_nothing(logged):
    rng = np.random.default_rng(0)
    signals = simulate_magnitude(ACQUISITION, np.ones(20), rng.uniform(0, 1, 20), rng.uniform(0, 300, 20), 1 / 60,
                                 rng)
    get_estimator("fit", TINY).fit(signals, ACQUISITION, 1 / 60, seed=0, device=CPU,
                                   progress=EpochReporter("sub-01", interactive=False))
    assert not [r for r in logged.records if "epoch" in r.getMessage()]


def test_early_stopping_tells_the_start_each_epoch_and_the_end():
    """The protocol: epoch 0 (every network's loss before training), each epoch (the networks that
    trained in it), then `finished` once with the stack's epochs and time (the last network's)."""
    generator = torch.Generator().manual_seed(0)
    model = PhysicsAutoencoder(ACQUISITION, ("water", "fat"), generator)
    x = torch.rand(64, ACQUISITION.n_echoes, generator=torch.Generator().manual_seed(1))
    water = iter([10.0, 5.0, 6.0, 6.0, 6.0])  # stops after epoch 4 (patience 3)
    fat = iter([10.0, 9.0, 8.0, 7.0, 6.0, 5.0])  # improves to --max-epochs 5
    states: list[TrainingProgress] = []
    settings = dataclasses.replace(TINY, batch_size=8, patience=3, max_epochs=5)
    gradient = autograd_gradient(model, lambda idx: ((model(x[idx]) - x[idx]) ** 2).mean(dim=(1, 2)))
    records = early_stopping(model, 64, gradient, lambda: [next(water, 6.0), next(fat)], settings, generator,
                             (0, 0), "test", states.append)
    assert [(s.epoch, sorted(s.validation_loss), s.finished) for s in states] == (
        [(0, ["fat", "water"], False)] + [(e, ["fat", "water"], False) for e in range(1, 5)]
        + [(5, ["fat"], False), (5, ["fat"], True)])
    assert states[0].validation_loss == {"water": 10.0, "fat": 10.0} and states[0].elapsed_s == 0.0
    assert all((s.max_epochs, s.patience, s.method) == (5, 3, "") for s in states)
    end = states[-1]
    assert end.elapsed_s == max(r.seconds for r in records) == records[1].seconds > records[0].seconds
    assert [r.network for r in end.networks] == ["water", "fat"] and end.networks[0].epochs == 4
