"""Fat spectra: chemical shifts (ppm relative to water) and relative amplitudes."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputDataError, UsageError

GYROMAGNETIC_RATIO_HZ_PER_T = 42.577478e6  # 1H


@dataclass(frozen=True)
class FatSpectrum:
    """A multi-peak fat model; amplitudes sum to 1."""

    name: str
    ppm: tuple[float, ...]
    amplitudes: tuple[float, ...]

    def frequencies_hz(self, field_strength_t: float,
                       gamma_hz_per_t: float = GYROMAGNETIC_RATIO_HZ_PER_T) -> tuple[float, ...]:
        """Frequency offset of each peak from water, in Hz, at `field_strength_t` tesla."""
        return tuple(p * 1e-6 * gamma_hz_per_t * field_strength_t for p in self.ppm)

    def to_dict(self) -> dict:
        return {"Name": self.name, "ChemicalShiftsPPM": list(self.ppm),
                "RelativeAmplitudes": list(self.amplitudes)}


PRESETS: dict[str, FatSpectrum] = {
    # Six-peak liver spectrum used by MAGORINO and RAIDER ("Hernando multisite").
    "hernando": FatSpectrum("hernando", (-3.90, -3.50, -2.70, -2.04, -0.49, 0.50),
                            (0.087, 0.694, 0.128, 0.004, 0.039, 0.048)),
    # ISMRM fat-water toolbox default: same amplitudes, offsets 0.1 ppm closer to water.
    "ismrm": FatSpectrum("ismrm", (-3.80, -3.40, -2.60, -1.94, -0.39, 0.60),
                         (0.087, 0.694, 0.128, 0.004, 0.039, 0.048)),
}


def load_fat_spectrum(name_or_path: str) -> FatSpectrum:
    """A preset by name, or a JSON file {"ppm": [...], "amplitudes": [...]} (amplitudes are normalised)."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise UsageError(f"--fat-spectrum {name_or_path}: neither a preset "
                         f"({', '.join(sorted(PRESETS))}) nor an existing JSON file")
    try:
        spec = json.loads(path.read_text())
        ppm = [float(v) for v in spec["ppm"]]
        amplitudes = [float(v) for v in spec["amplitudes"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputDataError(f"{path}: not a fat spectrum JSON with numeric lists 'ppm' and "
                             f"'amplitudes' ({exc.__class__.__name__}: {exc})") from None
    total = sum(amplitudes)
    if (not ppm or len(ppm) != len(amplitudes) or any(a < 0 for a in amplitudes) or total <= 0
            or not all(math.isfinite(v) for v in ppm + amplitudes)):
        raise InputDataError(f"{path}: 'ppm' and 'amplitudes' must be non-empty lists of the same "
                             "length with finite values and non-negative amplitudes")
    return FatSpectrum(str(spec.get("name", path.stem)), tuple(ppm),
                       tuple(a / total for a in amplitudes))
