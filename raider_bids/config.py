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
    method: str = DEFAULT_METHOD
    write_candidates: bool = False
    training: TrainingSettings = field(default_factory=lambda: TRAINING_PRESETS[DEFAULT_TRAINING])
    random_seed: int = 0
    device: str = "auto"
    nprocs: int | None = None
    command_line: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                for k, v in asdict(self).items()}
