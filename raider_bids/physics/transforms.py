"""Constraining transforms applied to the encoder's bottleneck (paper Eq. 7)."""

from __future__ import annotations

import torch

from .parameters import PDFF_BOUNDARY, PDFF_RANGES


def pdff_transform(x: torch.Tensor, kind: str, boundary: float = PDFF_BOUNDARY) -> torch.Tensor:
    """Map an unbounded bottleneck output to PDFF in the kind's range (PDFF_RANGES)."""
    s = (torch.sin(x) + 1.0) / 2.0  # in [0, 1]
    if kind == "water":
        return boundary * s
    if kind == "fat":
        return 1.0 - (1.0 - boundary) * s
    if kind == "full":
        return s
    raise ValueError(f"unknown network kind {kind!r}; expected one of {sorted(PDFF_RANGES)}")


def nonnegative(x: torch.Tensor) -> torch.Tensor:
    """Squaring transform for S0 and R2*."""
    return x * x
