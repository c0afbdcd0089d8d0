"""The self-supervised networks' mini-batch loss and its gradient, written out by hand.

Why not autograd: a training step is a few hundred operations on tensors of a few thousand
numbers, so its time is the dispatch of each op, not arithmetic. Autograd records and replays
twice as many ops as the gradient needs, torch's i0e (one element at a time) is a tenth of a
step, and a batched product of 6-wide matrices costs three times one product with a
block-diagonal matrix. Here the stack's layers are block-diagonal (one block per network,
transposed: out x in), the signals echo-major, the Bessel functions from the solver's series
(likelihood.rician_nll_echo_major) and the signal model's Jacobian from the solver's
(solver.MagnitudeJacobian): the same loss as PhysicsAutoencoder + rician_nll_per_voxel, its
gradient equal to autograd's to float32 rounding (tests/test_training.py).
"""

from __future__ import annotations

import torch

from ..physics.likelihood import rician_nll_echo_major
from ..physics.signal_model import Acquisition
from ..physics.solver import MagnitudeJacobian
from ..physics.transforms import pdff_affine
from .networks import N_HIDDEN_LAYERS, R2STAR_OUTPUT_SCALE_S, PhysicsAutoencoder


class BlockStack:
    """A PhysicsAutoencoder's K networks as block-diagonal layers over one buffer.

    `gradient(theta, signals, sigma, weight)` takes the stack's parameters as one flat vector in
    the order of model.parameters() (each flattened) and returns each network's loss and the
    flat gradient in the same order.
    """

    def __init__(self, model: PhysicsAutoencoder, acquisition: Acquisition):
        k, device = len(model.kinds), model.weights[0].device
        self.jacobian = MagnitudeJacobian(acquisition, device, dtype=torch.float32)
        affine = torch.tensor([pdff_affine(kind) for kind in model.kinds], device=device)
        # PDFF = start + span (sin x + 1) / 2 per network, as (K, 1) columns over the mini-batch
        self.pdff_start, self.half_span = affine[:, :1] + affine[:, 1:] / 2, affine[:, 1:] / 2
        # Where each parameter element sits in the block buffer: layer i's matrix (rows x cols)
        # then its bias column. Rows: (network, unit), but (output, network) for the last layer,
        # so that S0, PDFF and R2* each come out as K contiguous rows.
        weight_positions, bias_positions, self._layers, offset = [], [], [], 0
        for i, w in enumerate(model.weights):
            _, n_in, n_out = w.shape
            kk, ii, oo = torch.meshgrid(torch.arange(k), torch.arange(n_in), torch.arange(n_out), indexing="ij")
            row = oo * k + kk if i == N_HIDDEN_LAYERS else kk * n_out + oo  # (K, n_in, n_out)
            rows, cols = k * n_out, k * n_in
            weight_positions.append(offset + row * cols + kk * n_in + ii)
            bias_positions.append(offset + rows * cols + row[:, :1, :])  # biases are (K, 1, n_out)
            self._layers.append((offset, rows, cols, offset + rows * cols))
            offset += rows * cols + rows
        positions = weight_positions + bias_positions  # the order of model.parameters()
        self.positions = torch.cat([p.reshape(-1) for p in positions]).to(device)
        self._blocks = torch.zeros(offset, device=device)  # off-diagonal blocks stay zero
        self._grad_blocks = torch.zeros(offset, device=device)
        # the layers' views, made once: a step is dispatch-bound, and these were 40 ops of its 257
        self._layer_views, self._grad_views = self._views(self._blocks), self._views(self._grad_blocks)

    def _views(self, buffer: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(buffer[w:w + rows * cols].view(rows, cols), buffer[b:b + rows].view(rows, 1))
                for w, rows, cols, b in self._layers]

    def _forward(self, theta: torch.Tensor, signals: torch.Tensor, sigma: torch.Tensor, score: bool):
        """The stack's per-voxel NLL for signals (E, K, B) and sigma (K, B), with what the gradient
        needs when `score`."""
        n_echoes, k, b = signals.shape
        self._blocks.index_copy_(0, self.positions, theta)
        layers = self._layer_views
        h = signals.transpose(0, 1).reshape(k * n_echoes, b)
        inputs = []
        for i, (w, bias) in enumerate(layers):
            inputs.append(h)
            h = torch.addmm(bias, w, h)
            if i < N_HIDDEN_LAYERS:
                h = torch.nn.functional.elu(h)
        raw = h.view(3, k, b)
        theta_voxels = torch.stack([raw[0] * raw[0], torch.addcmul(self.pdff_start, self.half_span, torch.sin(raw[1])),
                                    R2STAR_OUTPUT_SCALE_S * raw[2] * raw[2]]).view(3, k * b)
        predicted, jac = self.jacobian.evaluate(theta_voxels, jacobian=score)
        nll, residual = rician_nll_echo_major(signals.reshape(n_echoes, k * b), predicted, sigma.reshape(k * b),
                                              score=score)
        return nll.view(k, b), (layers, inputs, raw, jac, residual)

    def nll(self, theta: torch.Tensor, signals: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """Every network's per-voxel Rician NLL (K, N) of the same voxels: max-normalised signals
        (N, E) and their sigma (N, 1): the validation loss's terms."""
        k, (n, n_echoes) = len(self.pdff_start), signals.shape
        return self._forward(theta, signals.T[:, None].expand(n_echoes, k, n), sigma.T.expand(k, n), False)[0]

    def gradient(self, theta: torch.Tensor, signals: torch.Tensor, sigma: torch.Tensor,
                 weight: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Each network's (weighted) mean Rician NLL over its mini-batch, (K,), and its gradient
        in theta, for max-normalised signals (E, K, B), their sigma (K, B) and NLL weights (K, B)
        (None: the plain mean)."""
        k, b = sigma.shape
        nll, (layers, inputs, raw, jac, residual) = self._forward(theta, signals, sigma, True)
        sigma = sigma.reshape(k * b)
        raw_s0, raw_pdff, raw_r2 = raw
        if weight is None:
            loss, share = nll.mean(dim=1), torch.full_like(nll, 1.0 / b)
        else:
            total = weight.sum(dim=1, keepdim=True)
            loss, share = (nll * weight).sum(dim=1) / total[:, 0], weight / total
        # dNLL/dnu = -residual / sigma^2, then the chain rule through the signal model and the
        # bottleneck's transforms
        residual.mul_((share.reshape(k * b) / (sigma * sigma)).neg_())
        grad_theta = (jac * residual).sum(dim=1).view(3, k, b)
        grad = torch.stack([grad_theta[0] * (2 * raw_s0),
                            grad_theta[1] * self.half_span * torch.cos(raw_pdff),
                            grad_theta[2] * (2 * R2STAR_OUTPUT_SCALE_S) * raw_r2]).view(3 * k, b)
        grads = self._grad_views
        for i in range(len(layers) - 1, -1, -1):
            torch.mm(grad, inputs[i].T, out=grads[i][0])
            torch.sum(grad, dim=1, keepdim=True, out=grads[i][1])
            if i:  # through the ELU: its slope is 1 above 0, exp(x) = output + 1 below
                grad = torch.mm(layers[i][0].T, grad).mul_(inputs[i].clamp(max=0).add_(1))
        return loss, self._grad_blocks.index_select(0, self.positions)
