"""Agreement between two methods' maps of one run (the paper's Fig. 6 without a pseudo ground
truth): on the same voxels, how often they fall on the same side of the water/fat boundary and
how far apart their PDFF, R2* and S0 are."""

from __future__ import annotations

import numpy as np

from ..physics.parameters import PARAMETERS, PDFF_BOUNDARY

# statistic -> (description, units): the keys of agreement(), in the order reports show them.
AGREEMENT = {
    "Voxels": ("foreground voxels where both methods' maps are finite", "voxels"),
    "SameSide": ("share of voxels on the same side of PDFF 0.58 (both water- or both fat-dominant)", "fraction"),
    "PDFFMedianAbsDifference": ("median of |PDFF_other - PDFF_reference|", "fraction"),
    "PDFFMedianAbsDifferenceSameSide": ("the same, over the voxels on the same side only", "fraction"),
    "R2starMedianDifference": ("median of R2*_other - R2*_reference", "1/s"),
    "R2starMedianAbsDifference": ("median of |R2*_other - R2*_reference|", "1/s"),
    "S0MedianRelativeDifference": ("median of S0_other / S0_reference - 1, where S0_reference > 0", "fraction"),
}


def agreement(reference: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> dict[str, float | int | None]:
    """The AGREEMENT statistics of `other` against `reference`, each a dict of 'pdff', 'r2star_s'
    and 's0' arrays over the same voxels; None where a statistic has no voxels."""
    keys = [p.key for p in PARAMETERS]
    ref = {k: np.asarray(reference[k], dtype=np.float64).ravel() for k in keys}
    oth = {k: np.asarray(other[k], dtype=np.float64).ravel() for k in keys}
    finite = np.logical_and.reduce([np.isfinite(v) for v in (*ref.values(), *oth.values())])
    ref = {k: v[finite] for k, v in ref.items()}
    oth = {k: v[finite] for k, v in oth.items()}
    same = (ref["pdff"] >= PDFF_BOUNDARY) == (oth["pdff"] >= PDFF_BOUNDARY)
    dpdff = np.abs(oth["pdff"] - ref["pdff"])
    dr2 = oth["r2star_s"] - ref["r2star_s"]
    positive = ref["s0"] > 0

    def median(values: np.ndarray) -> float | None:
        return float(np.median(values)) if values.size else None

    return {"Voxels": int(finite.sum()),
            "SameSide": float(same.mean()) if same.size else None,
            "PDFFMedianAbsDifference": median(dpdff),
            "PDFFMedianAbsDifferenceSameSide": median(dpdff[same]),
            "R2starMedianDifference": median(dr2),
            "R2starMedianAbsDifference": median(np.abs(dr2)),
            "S0MedianRelativeDifference": median(oth["s0"][positive] / ref["s0"][positive] - 1)}
