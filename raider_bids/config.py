"""The one frozen configuration of a run; every default lives here."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from .estimators import DEFAULT_METHOD, DEFAULT_TRAINING, TRAINING_PRESETS, TrainingSettings
from .fat_spectrum import DEFAULT_SPECTRUM


@dataclass(frozen=True)
class Config:
    bids_dir: Path
    output_dir: Path
    analysis_level: str = "participant"
    work_dir: Path | None = None
    participant_labels: tuple[str, ...] = ()
    session_labels: tuple[str, ...] = ()
    bids_filter_file: Path | None = None
    field_strength_t: float | None = None
    fat_spectrum: str = DEFAULT_SPECTRUM
    sigma: float | None = None
    mask_file: Path | None = None
    roi_datasets: tuple[Path, ...] = ()
    methods: tuple[str, ...] = (DEFAULT_METHOD,)  # the first is the primary
    write_candidates: bool = False
    training: TrainingSettings = field(default_factory=lambda: TRAINING_PRESETS[DEFAULT_TRAINING])
    random_seed: int = 0
    device: str = "auto"
    nprocs: int | None = None
    mem_bytes: int | None = None
    command_line: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                for k, v in asdict(self).items()}

    def result_options(self) -> dict:
        """The options that change the maps, as recorded in the provenance's Configuration."""
        return {k: v for k, v in self.to_dict().items() if k in RESULT_OPTIONS}


# Options that change the maps (threads, device and paths change at most the last bits, or nothing):
# a finished run made with other values of these is recomputed, not skipped.
RESULT_OPTIONS = ("field_strength_t", "fat_spectrum", "sigma", "mask_file", "methods", "write_candidates",
                  "training", "random_seed")
