"""Training progress at the command line: a bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("raider_bids")


class EpochReporter:
    """Training progress: a bar on a terminal, plain log lines (every 10th epoch) otherwise."""

    def __init__(self, run_name: str, max_epochs: int):
        self.run_name = run_name
        self.max_epochs = max_epochs
        self.bar = None
        self.interactive = sys.stderr.isatty()

    def __call__(self, epoch: int, validation_loss: dict[str, float]) -> None:
        losses = ", ".join(f"{name} {loss:.5g}" for name, loss in validation_loss.items())
        if self.interactive:
            from tqdm import tqdm

            if self.bar is None or epoch == 1:
                self.bar = tqdm(total=self.max_epochs, desc=f"{self.run_name} training", unit="epoch",
                                leave=False, file=sys.stderr)
            self.bar.update(1)
            self.bar.set_postfix_str(f"validation loss {losses}")
        level = logging.INFO if (epoch == 1 or epoch % 10 == 0) and not self.interactive else logging.DEBUG
        log.log(level, "%s: epoch %d, validation loss %s", self.run_name, epoch, losses)
