"""Speed ratios of the participant level on a machine shared with other work, measured in one run.

Writes the clinical-size synthetic subject (240 x 240 x 50 voxels, the paper's 3 T six-echo protocol,
SNR 60, demo tissues) and one 256 x 256 slice of the same phantom, then times end-to-end
participant-level calls in child processes, with the default threads (the CPUs this process may
use) unless options after -- say otherwise:

- fit and ssl on the volume, alone: ssl / fit;
- ssl and fit on the volume beside one CPU-bound process (`python3 -c "while True: pass"`): busy /
  alone;
- ssl on the slice: its estimation time / the volume's.

Each ratio comes from runs made one after the other in this one call (a shared machine's speed
drifts by tens of percent from minute to minute); --repeat takes the median of several.

    python benchmarks/shared_machine.py [--repeat 1] [--dir DIR] [-- extra raider-bids options]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from runs import SUBJECT, run_participant  # noqa: E402

from raider_bids.experiments.demo import write_dataset  # noqa: E402

VOLUME, SLICE = (240, 240, 50), (256, 256, 1)


def timed(bids: Path, out: Path, options: list[str], repeat: int) -> tuple[float, float]:
    """Median wall and estimation seconds of `repeat` fresh runs."""
    walls, estimations = [], []
    for _ in range(repeat):
        shutil.rmtree(out, ignore_errors=True)  # the app skips runs finished before
        walls.append(run_participant(bids, out, options))
        provenance = json.loads((out / f"sub-{SUBJECT}/anat/sub-{SUBJECT}_provenance.json").read_text())
        estimations.append(provenance["Timings"]["EstimationSeconds"])
    return float(np.median(walls)), float(np.median(estimations))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1, help="runs per measurement (median)")
    parser.add_argument("--dir", type=Path, help="keep the datasets and outputs here (default: a temp dir)")
    parser.add_argument("extra", nargs="*", help="after --: options passed to raider-bids")
    args = parser.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="raider-bids-shared-"))
    for name, shape in (("volume", VOLUME), ("slice", SLICE)):
        write_dataset(root / name, shape=shape, snr=60, seed=0)
    print(f"{len(os.sched_getaffinity(0))} CPUs in this process's affinity; datasets in {root}")
    rows = {}
    for label, dataset, method, busy in (("fit, volume", "volume", "fit", False),
                                         ("ssl, volume", "volume", "ssl", False),
                                         ("ssl, volume, beside a busy process", "volume", "ssl", True),
                                         ("fit, volume, beside a busy process", "volume", "fit", True),
                                         ("ssl, slice", "slice", "ssl", False)):
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            rows[label] = timed(root / dataset, root / f"out-{len(rows)}", ["--method", method, *args.extra],
                                args.repeat)
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
        print(f"{label:<38} {rows[label][0]:6.1f} s end to end, estimation {rows[label][1]:6.1f} s", flush=True)
    (fit, _), (ssl, ssl_estimation) = rows["fit, volume"], rows["ssl, volume"]
    print(f"\nssl / fit end to end (volume):                 {ssl / fit:.2f}  (target <= 1.5)")
    print(f"ssl beside a busy process / alone (volume):    {rows['ssl, volume, beside a busy process'][0] / ssl:.2f}"
          "  (target <= 1.3)")
    print(f"fit beside a busy process / alone (volume):    {rows['fit, volume, beside a busy process'][0] / fit:.2f}")
    print(f"ssl estimation, slice / volume:                {rows['ssl, slice'][1] / ssl_estimation:.2f}"
          "  (target <= 0.25)")


if __name__ == "__main__":
    main()
