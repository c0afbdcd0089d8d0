"""What a run's provenance record is filled with: library versions, each method's record from
its estimates, and the agreement between methods."""

from __future__ import annotations

import platform
from dataclasses import asdict
from importlib import metadata

import numpy as np

from .. import __version__
from ..estimators import Estimates, Estimator
from ..physics.parameters import PARAMETERS, PDFF_BOUNDARY
from ..provenance import ComparisonRecord, EstimationRecord
from ..reports.comparison import agreement


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "raider-bids": __version__}
    for dist in ("torch", "numpy", "scipy", "nibabel", "pybids", "PyMaxflow"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "unknown"
    return versions


def estimation_record(estimator: Estimator, estimates: Estimates, seconds: float) -> EstimationRecord:
    method = estimator.method
    return EstimationRecord(
        method=method.name, description=method.description, reference=method.reference, seconds=seconds,
        share_choosing_fat=float(estimates.chose_fat.mean()), pdff_boundary=PDFF_BOUNDARY,
        training_settings=asdict(estimates.training) if estimates.training else None,
        networks=estimates.networks, details=estimates.details)


def comparison_record(parameters: dict[str, dict[str, np.ndarray]]) -> ComparisonRecord | None:
    """With several methods (name -> parameters(...) over the mask), each other method's
    agreement with the first; None for one."""
    if len(parameters) < 2:
        return None
    (reference, first), *others = parameters.items()
    return ComparisonRecord(reference, {name: agreement(first, values) for name, values in others})


def parameters(estimates: Estimates) -> dict[str, np.ndarray]:
    """The parameter maps over the mask, by key (pdff, r2star_s, s0)."""
    return {p.key: getattr(estimates, p.key) for p in PARAMETERS}
