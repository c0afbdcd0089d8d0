"""Constraining transforms applied to the encoder's bottleneck (paper Eq. 7)."""

from __future__ import annotations

import torch

from .parameters import PDFF_BOUNDARY, PDFF_RANGES


def pdff_affine(kind: str, boundary: float = PDFF_BOUNDARY) -> tuple[float, float]:
    """(start, span) of the kind's PDFF transform: PDFF = start + span (sin(x) + 1) / 2, which
    sweeps the kind's range (PDFF_RANGES); its slope in x is span cos(x) / 2."""
    affine = {"water": (0.0, boundary), "fat": (1.0, boundary - 1.0), "full": (0.0, 1.0)}
    if kind not in affine:
        raise ValueError(f"unknown network kind {kind!r}; expected one of {sorted(PDFF_RANGES)}")
    return affine[kind]


def pdff_transform(x: torch.Tensor, kind: str, boundary: float = PDFF_BOUNDARY) -> torch.Tensor:
    """Map an unbounded bottleneck output to PDFF in the kind's range (PDFF_RANGES)."""
    start, span = pdff_affine(kind, boundary)
    return start + span * ((torch.sin(x) + 1.0) / 2.0)


def nonnegative(x: torch.Tensor) -> torch.Tensor:
    """Squaring transform for S0 and R2*."""
    return x * x
