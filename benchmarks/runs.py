"""What the benchmarks that run the app share: a phantom written as a raw dataset at a protocol, one
participant-level call in a child process, and one fixed-width table row."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from raider_bids.experiments.phantoms import Phantom, Protocol, write_phantom_dataset, write_truth

SUBJECT = "01"


def write_protocol_dataset(directory: Path, phantom: Phantom, protocol: Protocol, seed: int,
                           keep_truth: bool) -> dict[str, np.ndarray]:
    """`phantom` at `protocol` as directory/bids (and its truth maps in directory/truth when
    `keep_truth`); returns the truth maps and sigma (phantoms.write_phantom_dataset)."""
    truth = write_phantom_dataset(directory / "bids", phantom, protocol.echo_times_s, protocol.field_strength_t,
                                  protocol.snr, seed=seed, subject=SUBJECT)
    if keep_truth:
        write_truth(directory / "truth", phantom, SUBJECT)
    return truth


def run_participant(bids: Path, out: Path, options: list[str]) -> float:
    """Wall seconds of `python -m raider_bids bids out participant *options` in a child process;
    exits with the child's last stderr on failure."""
    command = [sys.executable, "-m", "raider_bids", str(bids), str(out), "participant", *options]
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def format_row(columns: tuple[tuple[str, int, str], ...], row: dict | None = None) -> str:
    """One line of a table of `columns` (name, width, format spec; 's' for text); the header for
    None; '-' for a missing or None value."""
    cells = []
    for name, width, spec in columns:
        if row is None:
            cells.append(f"{name:<{width}}" if spec == "s" else f"{name:>{width}}")
        elif spec == "s":
            cells.append(f"{row[name]:<{width}}")
        else:
            cells.append(f"{'-' if row.get(name) is None else format(row[name], spec):>{width}}")
    return " ".join(cells)
