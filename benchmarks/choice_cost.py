"""The spatial water/fat choice's cost on a clinical volume, against the estimation it follows.

The abdomen phantom (raider_bids.experiments.phantoms) at 240 x 240 x 50 (1.5 M foreground voxels)
at each protocol: the estimation's seconds for each method (the run's true sigma, in-process, the
machine's threads), then choose_sides on its candidates, on one thread and on two (the cut and the
marginals side by side; the app passes --nprocs), as the first call after the estimation (as in a
run: the first call pays for fresh memory) and then again. Then the peak of the choice's own arrays
(tracemalloc; the run's memory estimate allows 40 bytes per image value, 240 per voxel of a
six-echo run) and the share of the estimation time. Numbers only; nothing is asserted.

    python benchmarks/choice_cost.py [--protocols paper hard] [--methods fit ssl] [--size 240 240 50]

About a minute per protocol and method on 2 cores.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np
import torch

from raider_bids.choice import choose_sides
from raider_bids.config import DEFAULT_TRAINING, TRAINING_PRESETS
from raider_bids.estimators import get_estimator
from raider_bids.experiments.phantoms import PROTOCOLS, abdomen
from raider_bids.physics.fat_spectrum import PRESETS
from raider_bids.physics.signal_model import Acquisition
from raider_bids.physics.simulation import simulate_magnitude


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocols", nargs="+", choices=sorted(PROTOCOLS), default=["paper", "hard"])
    parser.add_argument("--methods", nargs="+", default=["fit", "ssl"])
    parser.add_argument("--size", nargs=3, type=int, default=[240, 240, 50])
    args = parser.parse_args()
    phantom = abdomen(tuple(args.size), 0)
    mask = phantom.labels > 0
    print(f"# abdomen phantom {tuple(args.size)}: {mask.sum()} foreground voxels; "
          f"{torch.get_num_threads()} threads for the estimation")
    for name in args.protocols:
        protocol = PROTOCOLS[name]
        acquisition = Acquisition(protocol.echo_times_s, protocol.field_strength_t, PRESETS["hernando"])
        sigma = phantom.reference_s0 / protocol.snr
        signals = simulate_magnitude(acquisition, phantom.s0[mask], phantom.pdff[mask], phantom.r2star_s[mask], sigma,
                                     np.random.default_rng(0))
        for method in args.methods:
            start = time.perf_counter()
            estimates = get_estimator(method, TRAINING_PRESETS[DEFAULT_TRAINING]).fit(
                signals, acquisition, sigma, seed=0, device=torch.device("cpu"))
            estimation = time.perf_counter() - start
            water, fat = estimates.candidates["water"], estimates.candidates["fat"]

            def choice(threads: int):
                start = time.perf_counter()
                sides = choose_sides("spatial", water, fat, mask, phantom.voxel_size_mm, signals, sigma, acquisition,
                                     threads)
                return time.perf_counter() - start, sides

            first, sides = choice(2)
            seconds = {threads: choice(threads)[0] for threads in (1, 2)}
            tracemalloc.start()
            for threads in (1, 2):
                tracemalloc.reset_peak()
                choice(threads)
                peak = tracemalloc.get_traced_memory()[1]
                print(f"{name} {method}: peak of the choice's arrays on {threads} thread(s) "
                      f"{peak / mask.sum():.0f} bytes per voxel")
            tracemalloc.stop()
            details = sides.details
            print(f"{name} {method}: estimation {estimation:.1f} s; choice {first:.2f} s first call "
                  f"({100 * first / estimation:.1f} %), then {seconds[2]:.2f} s on 2 threads, {seconds[1]:.2f} s "
                  f"on 1 ({100 * seconds[1] / estimation:.1f} %); {details['CutVoxels']} voxels cut, "
                  f"{details['BeliefIterations']} belief iterations", flush=True)


if __name__ == "__main__":
    main()
