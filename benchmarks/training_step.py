"""Time of one training step of the dual self-supervised networks, measured in one run: the
hand-written loss and gradient (estimators.analytic_gradient, what training uses) against
autograd on the same loss (PhysicsAutoencoder's forward, rician_nll_per_voxel, the SNR-weighted
mean), each followed by the same Adam update, on one thread and on two, alone and beside one
CPU-bound process (`python3 -c "while True: pass"`).

The fast preset's step: a mini-batch of 1,024 voxels per network, six echoes (3 T, TE1 = dTE =
1.15 ms), signals at SNR 20-80. Printed: milliseconds per step (median of --repeat blocks of
--steps steps) and the ratio autograd / hand-written.

    python benchmarks/training_step.py [--steps 300] [--repeat 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import numpy as np
import torch

from raider_bids.config import TRAINING_PRESETS
from raider_bids.estimators.analytic_gradient import BlockStack
from raider_bids.estimators.networks import PhysicsAutoencoder
from raider_bids.estimators.self_supervised import snr_weights, voxel_mean
from raider_bids.estimators.training import Adam, autograd_gradient, flatten_parameters
from raider_bids.physics.fat_spectrum import PRESETS
from raider_bids.physics.likelihood import rician_nll_per_voxel
from raider_bids.physics.signal_model import Acquisition
from raider_bids.physics.simulation import simulate_magnitude

N_VOXELS = 100_000


def steppers(batch: int) -> dict[str, callable]:
    """name -> one training step (mini-batch drawn, gradient, Adam update)."""
    acquisition = Acquisition(tuple(1.15e-3 * (i + 1) for i in range(6)), 3.0, PRESETS["hernando"])
    rng = np.random.default_rng(0)
    s0 = rng.uniform(20, 80, N_VOXELS)
    signals = simulate_magnitude(acquisition, s0, rng.uniform(0, 1, N_VOXELS), rng.uniform(0, 300, N_VOXELS), 1.0, rng)
    scale = signals.max(axis=1, keepdims=True)
    x = torch.as_tensor(signals / scale, dtype=torch.float32)
    sigma = torch.as_tensor(1.0 / scale, dtype=torch.float32)
    weight = snr_weights(sigma, TRAINING_PRESETS["fast"].nll_snr_power)
    rows = torch.cat([x, sigma, weight], dim=1)
    columns = rows.T.contiguous()
    generator = torch.Generator().manual_seed(0)
    out = {}
    for name in ("hand-written", "autograd"):
        model = PhysicsAutoencoder(acquisition, ("water", "fat"), torch.Generator().manual_seed(0))
        theta = flatten_parameters(model)
        adam = Adam(theta)
        if name == "hand-written":
            stack = BlockStack(model, acquisition)

            def gradient(theta, idx, stack=stack):
                b = columns.index_select(1, idx.reshape(-1)).view(-1, *idx.shape)
                return stack.gradient(theta, b[:6], b[6], b[7])
        else:
            def loss(idx, model=model):
                b = rows[idx]
                return voxel_mean(rician_nll_per_voxel(b[..., :6], model(b[..., :6]), b[..., 6:7]), b[..., 7])
            gradient = autograd_gradient(model, loss)

        def step(gradient=gradient, theta=theta, adam=adam):
            idx = torch.randint(N_VOXELS, (2, batch), generator=generator)
            _, grad = gradient(theta, idx)
            adam.step(grad, 1e-3)
        out[name] = step
    return out


def per_step_ms(step, steps: int, repeat: int) -> float:
    for _ in range(20):
        step()
    blocks = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        blocks.append((time.perf_counter() - start) / steps * 1e3)
    return float(np.median(blocks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    batch = TRAINING_PRESETS["fast"].batch_size
    runs = steppers(batch)
    print(f"training step, water + fat, batch {batch} per network, six echoes; ms per step "
          f"(median of {args.repeat} x {args.steps} steps)")
    print("| machine | threads | hand-written | autograd | autograd / hand-written |\n|---|---|---|---|---|")
    for machine in ("alone", "beside a busy process"):
        busy = (subprocess.Popen([sys.executable, "-c", "while True: pass"]) if machine != "alone" else None)
        try:
            for threads in (1, 2):
                torch.set_num_threads(threads)
                ms = {name: per_step_ms(step, args.steps, args.repeat) for name, step in runs.items()}
                print(f"| {machine} | {threads} | {ms['hand-written']:.2f} | {ms['autograd']:.2f} | "
                      f"{ms['autograd'] / ms['hand-written']:.2f} |", flush=True)
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()


if __name__ == "__main__":
    main()
