"""CPU seconds of the identifiability check (physics.identifiability.assess), which runs before
every run: a 16-echo 1.5 T protocol (the real phantom's) at SNR 60 (reliable) and 30 (unreliable,
with the advice's what-ifs), and the paper's protocol at SNR 60. The first call of a process also
builds the Rician table; it is timed apart. Process CPU time, so a busy machine inflates it less
than wall time (torch's spinning threads still count).

    python benchmarks/identifiability_cost.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import time

from raider_bids.physics.fat_spectrum import PRESETS
from raider_bids.physics.identifiability import assess
from raider_bids.physics.signal_model import Acquisition


def protocol(te1_ms: float, spacing_ms: float, n: int, field_t: float) -> Acquisition:
    return Acquisition(tuple(1e-3 * (te1_ms + spacing_ms * k) for k in range(n)), field_t, PRESETS["hernando"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    cases = {"16 echoes, 1.5 T": protocol(2.26, 1.44, 16, 1.5), "paper, 3 T, 6 echoes": protocol(1.15, 1.15, 6, 3.0)}
    start = time.process_time()
    assess(cases["16 echoes, 1.5 T"], 60)
    print(f"first call (with the Rician table): {time.process_time() - start:.3f} s CPU")
    for name, acquisition in cases.items():
        for snr in (60, 30):
            seconds = []
            for _ in range(args.repeat):
                start = time.process_time()
                record = assess(acquisition, snr)
                seconds.append(time.process_time() - start)
            print(f"{name}, SNR {snr}: {record.verdict:10s} median {sorted(seconds)[len(seconds) // 2]:.3f} s CPU "
                  f"(min {min(seconds):.3f}, max {max(seconds):.3f}) over {args.repeat}")


if __name__ == "__main__":
    main()
