"""Every choice a user has, with its default, in one torch-free place: the training presets, the
estimation methods, the frozen configuration of a call and which of its options change the maps.

The command line, the library (estimators take their settings explicitly) and README read the
defaults from here; tests/test_config.py pins that they agree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True, kw_only=True)
class TrainingSettings:
    """Options of the network training loop (self-supervised and supervised alike)."""

    learning_rate: float
    batch_size: int
    patience: int  # epochs without a better validation loss before a network stops
    max_epochs: int
    # Self-supervised networks with steps_per_epoch only. None: max_epochs. A number: the budget is
    # the epochs needed to draw every training voxel this many times on average, at least
    # min_epochs and at most max_epochs, so a slice trains for seconds and a volume as long as it
    # needs (an explicit --max-epochs is the budget itself). The supervised networks train on a
    # simulated set of fixed size, so their budget is max_epochs.
    budget_passes: float | None
    min_epochs: int
    # With budget_passes: the learning rate is multiplied by (max_epochs / the run's budget) to this
    # power, so a short budget takes larger steps (None: the learning rate as given; an explicit
    # --learning-rate is used as given).
    budget_lr_power: float | None
    validation_fraction: float  # share of the voxels held out for early stopping
    # None: an epoch is one pass over the training voxels in shuffled mini-batches (the paper).
    # A number: an epoch is that many mini-batches drawn at random, so the work per epoch and the
    # number of steps no longer grow with the number of voxels.
    steps_per_epoch: int | None
    max_validation_voxels: int | None
    # With steps_per_epoch: anneal the learning rate along a half cosine to this fraction of it
    # over max_epochs x steps_per_epoch steps (None: constant, as in the paper).
    final_lr_fraction: float | None
    # Self-supervised networks only. None: every voxel's Rician NLL counts alike in a mini-batch's
    # loss (the paper). A number p: each voxel's NLL is weighted by SNR^-p (SNR = its largest echo
    # over sigma, floored at estimators.self_supervised.SNR_WEIGHT_FLOOR). The NLL's curvature grows
    # as SNR^2, so with p = 2 a dark voxel (an iron-loaded liver) pulls on the networks
    # as much as a bright one, instead of getting what capacity the bright voxels leave; each
    # voxel's best answer, its ML estimate, is unchanged (docs/shared-machine.md).
    nll_snr_power: float | None


# The paper's exact settings, and the fast default: larger random mini-batches with a higher
# learning rate annealed to 1% over a budget of 6 draws of each training voxel, between 2,500
# steps (with 2,000 the grid's swaps left the fit's by more than a point for a seed with the
# refinement's first rule; with both rules 2,500 and 3,000 leave every seed +0.10) and 8,000
# (the clinical-size volume, 1.49 M training voxels, trains that, as before), validation on
# <= 20k voxels, and each voxel's NLL weighted by SNR^-2 (swaps even across seeds, and dark tissue
# such as an iron-loaded liver fitted closer to its ML estimate). 1e-2 rather than 5e-3: closer
# to ML on the grid, every seed within a point of the fit's swaps; scaled up with the square root
# of the budget's shortness (1.79e-2 at the floor), which keeps the networks alone as close to ML
# in 2,500 steps as 1e-2 in 3,000 (docs/shared-machine.md).
TRAINING_PRESETS = {
    "paper": TrainingSettings(learning_rate=1e-3, batch_size=128, patience=10, max_epochs=1000,
                              budget_passes=None, min_epochs=1, budget_lr_power=None,
                              validation_fraction=0.1, steps_per_epoch=None, max_validation_voxels=None,
                              final_lr_fraction=None, nll_snr_power=None),
    "fast": TrainingSettings(learning_rate=1e-2, batch_size=1024, patience=10, max_epochs=80,
                             budget_passes=6.0, min_epochs=25, budget_lr_power=0.5,
                             validation_fraction=0.1, steps_per_epoch=100, max_validation_voxels=20000,
                             final_lr_fraction=0.01, nll_snr_power=2.0),
}
DEFAULT_TRAINING = "fast"


@dataclass(frozen=True)
class Method:
    """An estimation method as users see it (the estimator itself is in raider_bids.estimators)."""

    name: str
    summary: str  # for --help
    description: str  # for sidecars, provenance and descriptions.tsv
    reference: str
    networks: tuple[str, ...]  # the networks it trains ("water", "fat", "full"); () for none


_MINORE = ("Minore GV, Dwyer-Hemmings L, Bray TJP, Zhang H. Resolving quantitative MRI model "
           "degeneracy in self-supervised machine learning. 2025.")
METHODS = {m.name: m for m in (
    Method("ssl", "the paper's dual self-supervised networks",
           "dual self-supervised networks, water (PDFF <= 0.58) and fat (PDFF >= 0.58), "
           "chosen per voxel by Rician likelihood", _MINORE, ("water", "fat")),
    Method("fit", "conventional two-start Rician maximum-likelihood fit (MAGORINO)",
           "conventional voxel-wise Rician maximum-likelihood fit from a water-dominant "
           "(PDFF <= 0.58) and a fat-dominant (PDFF >= 0.58) start, the higher likelihood kept",
           "Bray TJP, Bainbridge A, Lim E, Hall-Craggs MA, Zhang H. MAGORINO: Magnitude-only fat "
           "fraction and R2* estimation with Rician noise modeling. Magn Reson Med 2023;89:1173-1192.", ()),
    Method("single", "one unconstrained network (the naive baseline)",
           "one self-supervised network, PDFF unconstrained in [0, 1] (the naive baseline)", _MINORE, ("full",)),
    Method("supervised", "dual networks trained on simulated signals (RAIDER)",
           "dual supervised networks (RAIDER), water (PDFF <= 0.58) and fat (PDFF >= 0.58), trained on "
           "signals simulated for the run's echo times and field strength with an MSE loss on PDFF and "
           "R2*; S0 refitted by least squares; chosen per voxel by Rician likelihood",
           "Bray TJP, Minore GV, Bainbridge A, Dwyer-Hemmings L, Taylor SA, Hall-Craggs MA, Zhang H. "
           "RAIDER: Rapid, anatomy-independent, deep learning-based PDFF and R2* estimation using "
           "magnitude-only signals. arXiv:2403.01178, 2024.", ("water", "fat")),
)}
DEFAULT_METHOD = "ssl"
DEFAULT_SPECTRUM = "hernando"  # a preset of raider_bids.physics.fat_spectrum
DEVICES = ("auto", "cpu", "cuda")  # auto: cuda when available
# How each voxel's water or fat candidate is chosen: "spatial", a graph cut over the run's grid
# that also weighs the neighbours (choice.spatial); "voxel", the paper's per-voxel likelihood.
CHOICES = ("spatial", "voxel")
DEFAULT_CHOICE = "spatial"
# Whether trained networks' water and fat candidates are refined to their side's maximum likelihood
# where the side is not settled (close, or the loser within a step's reach of the winner), before the
# choice (estimators.refinement): "ambiguous", or "none" (the networks' own candidates, as in the paper).
REFINEMENTS = ("ambiguous", "none")
DEFAULT_REFINEMENT = "ambiguous"


@dataclass(frozen=True)
class Config:
    """The one frozen configuration of a call."""

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
    choice: str = DEFAULT_CHOICE
    refine: str = DEFAULT_REFINEMENT
    write_candidates: bool = False
    training: TrainingSettings = field(default_factory=lambda: TRAINING_PRESETS[DEFAULT_TRAINING])
    random_seed: int = 0
    device: str = DEVICES[0]
    nprocs: int | None = None
    mem_bytes: int | None = None
    # Replace finished outputs made with other options, another version or from changed inputs
    # (without it such a run is refused, never removed).
    overwrite: bool = False
    command_line: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                for k, v in asdict(self).items()}

    def result_options(self) -> dict:
        """The options that change the maps, as recorded in the provenance's Configuration."""
        return {k: v for k, v in self.to_dict().items() if k in RESULT_OPTIONS}


# Options that change the maps (threads, device and paths change at most the last bits, or nothing):
# a finished run made with other values of these is recomputed, not skipped. For mask_file and a
# fat_spectrum file, their content counts, not their path (the provenance's OptionFiles).
RESULT_OPTIONS = ("field_strength_t", "fat_spectrum", "sigma", "mask_file", "methods", "choice", "refine",
                  "write_candidates", "training", "random_seed")
