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
# Above every MRI scanner's field (21.1 T preclinical): a larger MagneticFieldStrength is a unit mistake.
MAX_FIELD_STRENGTH_T = 25.0
# A PDFF whose Cramer-Rao standard deviation exceeds this (fraction) is poorly determined by the
# voxel's data (a tenth of the range: low signal, or high R2* leaving only the first echoes); a run
# with more than UNCERTAIN_PDFF_SHARE of its mask so gets a WARNING (the real scans' dark rims
# make 3-6 %; the liver is 18 % of the iron phantom's).
UNCERTAIN_PDFF_SD = 0.1
UNCERTAIN_PDFF_SHARE = 0.10
# 1/s: the fit's R2* bound and the caps of the Cramer-Rao maps. Above the clinical range (severe
# iron overload: about 1000 1/s at 1.5 T, 2000 1/s at 3 T) so that its top is estimated, not pinned
# at the bound (MAGORINO's 2000 1/s pinned half of a 2000 1/s liver there).
R2STAR_MAX_S = 3000.0


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
R2STAR = Parameter("R2star", "r2star_s", "R2starmap",
                   f"Transverse relaxation rate R2* (the fit estimates it within 0-{R2STAR_MAX_S:g} 1/s; the "
                   "networks' output is >= 0 and unbounded; the supervised networks' training range is in the "
                   "provenance)",
                   "1/s", (0.0, R2STAR_MAX_S))
S0 = Parameter("S0", "s0", "S0map", "Signal at echo time 0 given by the fitted model", "arbitrary", (0.0, None))
PARAMETERS = (PDFF, R2STAR, S0)
