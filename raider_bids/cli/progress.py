"""Training progress at the command line: a bar on a terminal, plain log lines otherwise.

Per training (one per method that trains, per run): one line saying how long it may take, then
`epoch N/M, T elapsed, at most R left; validation loss ...` (on a terminal a bar says it; elsewhere,
as in a SLURM log, the first and every 10th epoch at INFO, every epoch at DEBUG), then one line
saying the time the networks took together, once: they train in the same steps, so water and fat
share one time, not one each.
"""

from __future__ import annotations

import logging
import sys

from ..provenance import NetworkRecord, TrainingProgress

log = logging.getLogger("raider_bids")

LOG_EVERY = 10  # without a terminal: epoch 1 and every LOG_EVERY-th at INFO


def format_duration(seconds: float) -> str:
    """A compact human duration: '3.4 s', '41 s', '1 min 25 s', '2 h 5 min'."""
    seconds = max(0.0, seconds)
    if seconds < 9.95:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        minutes, rest = divmod(whole, 60)
        return f"{minutes} min {rest} s" if rest else f"{minutes} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def _networks(records: tuple[NetworkRecord, ...]) -> str:
    names = [r.network for r in records]
    return " and ".join(names) + (" networks" if len(names) > 1 else " network")


def _stopped(records: tuple[NetworkRecord, ...]) -> str:
    """Why the training stopped: one reason if every network stopped alike, else each one's."""
    if len({(r.epochs, r.stop_reason) for r in records}) == 1:
        return f"stopped: {records[0].stop_reason}"
    return "; ".join(f"{r.network} stopped after epoch {r.epochs}: {r.stop_reason}" for r in records)


def epoch_text(state: TrainingProgress, first_epoch_s: float | None = None) -> str:
    """'12 s elapsed, at most 1 min 25 s left; validation loss water 0.1, fat 0.2' after epoch N of M.
    The time left takes every epoch to M as long as the mean epoch after the first, which took
    `first_epoch_s` (the first also warms up and times the thread counts, so it is slower); after
    the first epoch, its own time. Training stops earlier when no network improves for `patience`
    epochs: hence 'at most'."""
    text = f"{format_duration(state.elapsed_s)} elapsed"
    if 0 < state.epoch < state.max_epochs:
        if state.epoch > 1 and first_epoch_s is not None:
            per_epoch = (state.elapsed_s - first_epoch_s) / (state.epoch - 1)
        else:
            per_epoch = state.elapsed_s / state.epoch
        text += f", at most {format_duration(per_epoch * (state.max_epochs - state.epoch))} left"
    losses = ", ".join(f"{name} {loss:.5g}" for name, loss in state.validation_loss.items())
    return f"{text}; validation loss {losses}" if losses else text


class EpochReporter:
    """Training progress of one run (a ProgressCallback): a bar on a terminal, plain log lines
    (epoch 1 and every 10th at INFO) otherwise; one line per training at its start and its end."""

    def __init__(self, run_name: str, *, interactive: bool | None = None):
        self.run_name = run_name
        self.bar = None
        self.first_epoch_s: float | None = None  # the current training's first epoch
        self.interactive = sys.stderr.isatty() if interactive is None else interactive

    def __call__(self, state: TrainingProgress) -> None:
        prefix = f"{self.run_name}: {state.method}: " if state.method else f"{self.run_name}: "
        together = len(state.networks) > 1
        if state.finished:
            self._close()
            log.info("%sthe %s trained%s: %d epoch%s in %s (%s)", prefix, _networks(state.networks),
                     " together" if together else "", state.epoch, "" if state.epoch == 1 else "s",
                     format_duration(state.elapsed_s), _stopped(state.networks))
            return
        if state.epoch == 0:
            self._close()
            self.first_epoch_s = None
            log.info("%straining the %s%s: at most %d epochs (%s after %d epochs without a better validation "
                     "loss)", prefix, _networks(state.networks), " together" if together else "",
                     state.max_epochs, "each stops" if together else "it stops", state.patience)
            if self.interactive:
                self._open(prefix, state.max_epochs)
            return
        if state.epoch == 1:
            self.first_epoch_s = state.elapsed_s
        text = epoch_text(state, self.first_epoch_s)
        if self.interactive:
            if self.bar is None:
                self._open(prefix, state.max_epochs)
            self.bar.n = state.epoch
            self.bar.set_postfix_str(text)  # draws the bar: its epoch and this text at once
        level = (logging.INFO if not self.interactive and (state.epoch == 1 or state.epoch % LOG_EVERY == 0)
                 else logging.DEBUG)
        log.log(level, "%sepoch %d/%d, %s", prefix, state.epoch, state.max_epochs, text)

    def _open(self, prefix: str, total: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=f"{prefix}training", leave=False, file=sys.stderr,
                        bar_format="{desc} {percentage:3.0f}%|{bar:20}| epoch {n_fmt}/{total_fmt}{postfix}")

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
