"""Resources: the CPUs this process may use; memory: reading --mem, the working-memory budget that
sizes voxel chunks, the one helper that splits voxels into chunks, and what the check that refuses
a run before loading needs."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

_UNITS = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
DEFAULT_WORKING_BYTES = 256 * 2**20  # per chunked computation, when --mem is not given
MIN_WORKING_BYTES = 4 * 2**20
# Peak memory per value of a run's (X, Y, Z, n_echoes) magnitudes beyond the program itself: the
# float32 magnitudes, the foreground voxels in float64 for the estimators and their copies there
# (the fit holds them once more, with its fitted signals and both starts' parameters). Measured
# with benchmarks/clinical_subject.py (240 x 240 x 50 x 6, 52 % foreground, program 0.33 GB):
# peak RSS 0.82 GB for ssl (28 bytes per value), 0.98 GB for fit (38); rounded up.
BYTES_PER_IMAGE_VALUE = 40


_CGROUP_QUOTAS = (("/sys/fs/cgroup/cpu.max", None),  # v2: "QUOTA PERIOD" or "max PERIOD"
                  ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us"))  # v1


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask (taskset, SLURM, Docker --cpuset-cpus),
    capped by a cgroup CPU quota (Docker --cpus, Kubernetes limits), which os.cpu_count() and
    torch's default thread count ignore. At least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    for quota_file, period_file in _CGROUP_QUOTAS:
        try:
            with open(quota_file) as f:
                fields = f.read().split()
            if period_file:
                with open(period_file) as f:
                    fields.append(f.read().strip())
            quota, period = float(fields[0]), float(fields[1])
        except (OSError, ValueError, IndexError):
            continue  # absent, or "max": no quota
        if quota > 0 and period > 0:
            cpus = min(cpus, max(1, math.ceil(quota / period)))
    return max(1, cpus)


def parse_memory(text: str) -> int:
    """'8GB', '500M', '1.5 GiB' -> bytes. A unit is required: fMRIPrep reads a bare number as MB,
    MRIQC as GB, so a bare number would mean different things to different users."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?\s*", text, flags=re.I)
    if not match:
        raise ValueError(f"{text!r} is not a memory size such as 8GB or 500MB")
    value, unit = float(match.group(1)), match.group(2).lower()
    if not unit:
        raise ValueError(f"{text!r}: give a unit (e.g. {text}GB or {text}MB); fMRIPrep reads a bare number "
                         "as MB, MRIQC as GB")
    if value <= 0:
        raise ValueError(f"{text!r} must be positive")
    return int(value * _UNITS[unit])


def format_bytes(n: float) -> str:
    return f"{n / 2**30:.2f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


def resident_bytes() -> int:
    """This process's resident memory now (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def run_bytes(n_values: int) -> int:
    """Memory the whole-image arrays of a run with `n_values` = X*Y*Z*n_echoes need at their peak."""
    return BYTES_PER_IMAGE_VALUE * n_values


_working_bytes = DEFAULT_WORKING_BYTES


def set_working_memory(nbytes: int) -> None:
    """The memory one chunked computation may use (process-wide, like torch's thread count)."""
    global _working_bytes
    _working_bytes = max(MIN_WORKING_BYTES, int(nbytes))


def chunk_voxels(bytes_per_voxel: int, largest: int) -> int:
    """How many voxels a chunked computation takes at once: what fits the working memory, at most
    `largest` (beyond which chunks no longer get faster), at least 256."""
    return max(256, min(largest, _working_bytes // max(1, bytes_per_voxel)))


T = TypeVar("T")


def map_chunks(fn: Callable[[slice], T], n_items: int, bytes_per_item: int, largest: int,
               parallel: bool = True) -> list[T]:
    """`fn` on consecutive slices covering range(n_items), results in order, on as many Python
    threads as torch's thread count, each op on one intra-op thread.

    An op split over intra-op threads waits at the end for every thread: beside a busy process the
    one that lost its core holds up every op (1.5 M voxels' Cramer-Rao bounds: 3.2-3.8 s on two
    threads against 0.3 s alone). Here a worker that loses its core delays only its own chunks
    (0.55 s beside a busy process, 0.34-0.41 s alone). Each chunk runs on one thread, so its bits
    do not depend on the load. The chunks share the working memory (their size is set by it and
    the worker count), and `fn` writing disjoint slices of one output is safe. `parallel` False:
    one chunk after the other (a GPU's ops are queued on one stream anyway)."""
    import torch  # this module is torch-free for the command line's --help

    workers = torch.get_num_threads() if parallel else 1
    slices = list(chunk_slices(n_items, chunk_voxels(bytes_per_item * workers, largest)))
    if workers == 1 or len(slices) < 2:
        return [fn(sl) for sl in slices]
    grad = torch.is_grad_enabled()  # thread-local in torch: carried into the workers

    def run(sl: slice) -> T:
        with torch.set_grad_enabled(grad):
            return fn(sl)

    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(min(workers, len(slices))) as pool:
            return list(pool.map(run, slices))
    finally:
        torch.set_num_threads(workers)


def chunk_slices(n_items: int, chunk_size: int) -> Iterator[slice]:
    """Consecutive slices of at most `chunk_size` covering range(n_items)."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    for start in range(0, n_items, chunk_size):
        yield slice(start, min(start + chunk_size, n_items))
