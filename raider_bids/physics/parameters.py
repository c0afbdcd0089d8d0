"""The parameters every method estimates: names, units, bounds and the BIDS suffix of their maps,
and the PDFF boundary that splits the water- and fat-dominant solutions (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass

PDFF_BOUNDARY = 0.58  # b: splits water- and fat-dominant solutions of a degenerate pair
# Which sub-space of PDFF each kind of network (or side of the fit) may take.
PDFF_RANGES: dict[str, tuple[float, float]] = {
    "water": (0.0, PDFF_BOUNDARY),
    "fat": (PDFF_BOUNDARY, 1.0),
    "full": (0.0, 1.0),  # the naive, unconstrained baseline
}
# Log-likelihood ratios (nats) between a voxel's two candidates: below AMBIGUOUS the data barely
# prefer one side; from RELIABLE on, the per-voxel choice is right (measured on synthetic truth).
AMBIGUOUS_LLR_NATS = 1.0
RELIABLE_LLR_NATS = 5.0
R2STAR_MAX_S = 2000.0  # 1/s: the fit's upper bound (MAGORINO's 2 ms^-1)


@dataclass(frozen=True)
class Parameter:
    name: str  # as in the group table's 'map' column
    key: str  # in the package: the estimators' results and candidates
    suffix: str  # BIDS suffix of its map
    description: str
    units: str
    bounds: tuple[float, float | None]  # None: unbounded


PDFF = Parameter("PDFF", "pdff", "PDFFmap", "Proton density fat fraction, rho_F / (rho_W + rho_F)", "fraction (0-1)",
                 (0.0, 1.0))
R2STAR = Parameter("R2star", "r2star_s", "R2starmap", "Transverse relaxation rate R2*", "1/s", (0.0, R2STAR_MAX_S))
S0 = Parameter("S0", "s0", "S0map", "Signal at echo time 0 given by the fitted model", "arbitrary", (0.0, None))
PARAMETERS = (PDFF, R2STAR, S0)
