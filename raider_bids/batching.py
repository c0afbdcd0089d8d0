"""The one helper that splits voxel batches into chunks (bounded memory for any image size)."""

from __future__ import annotations

from collections.abc import Iterator


def chunk_slices(n_items: int, chunk_size: int) -> Iterator[slice]:
    """Consecutive slices of at most `chunk_size` covering range(n_items)."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    for start in range(0, n_items, chunk_size):
        yield slice(start, min(start + chunk_size, n_items))
