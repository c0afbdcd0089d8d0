"""The provenance record of a run (`*_provenance.json`): how its maps were made.

The one schema shared by everyone who touches it: the estimators describe their training in it,
the participant workflow fills and writes it, and the reports, the group level and the rerun
check read its fields. Torch-free and stdlib-only, so that any layer may use it.

`to_json` writes schema version SCHEMA_VERSION; `from_json` also reads files written before the
schema had a version (version 1: no SchemaVersion key, each method's own keys beside the common
ones, `ShareFatDominant` for the single network) and version 2 (no Identifiability, no Choice).
Mask.Details (the automatic mask's rule and numbers, issue 16) is optional: absent for a user's
mask and in records written before it; so is a method's AddedBy (a method added by a later call).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 3
DEFAULT_NETWORK_LOSS = "Rician NLL per voxel"  # the self-supervised networks' loss, unnamed in version 1


@dataclass
class NetworkRecord:
    """One trained network: its training curve and why it stopped. Losses are per voxel (or per
    simulated signal), averaged over an epoch (training) or the validation set."""

    network: str  # water, fat or full
    seed: int
    loss: str = DEFAULT_NETWORK_LOSS
    epochs: int = 0
    best_epoch: int = 0
    best_validation_loss: float = math.inf
    stop_reason: str = ""
    seconds: float = 0.0
    train_loss: list[float] = field(default_factory=list)
    validation_loss: list[float] = field(default_factory=list)
    # torch threads -> training steps of the stack run on that many (estimators.training.StepThreads
    # probes which is faster); empty in records written before it
    step_threads: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"Network": self.network, "Seed": self.seed, "Loss": self.loss, "Epochs": self.epochs,
                "BestEpoch": self.best_epoch, "BestValidationLoss": self.best_validation_loss,
                "StopReason": self.stop_reason, "Seconds": round(self.seconds, 3), "TrainLoss": self.train_loss,
                "ValidationLoss": self.validation_loss, "StepThreads": self.step_threads}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> NetworkRecord:
        return cls(network=d["Network"], seed=d["Seed"], loss=d.get("Loss", DEFAULT_NETWORK_LOSS),
                   epochs=d["Epochs"], best_epoch=d["BestEpoch"], best_validation_loss=d["BestValidationLoss"],
                   stop_reason=d["StopReason"], seconds=d["Seconds"], train_loss=list(d["TrainLoss"]),
                   validation_loss=list(d["ValidationLoss"]), step_threads=dict(d.get("StepThreads", {})))


@dataclass(frozen=True)
class TrainingProgress:
    """Where the training of a network stack stands while it runs (its NetworkRecords are what
    stays), told to its ProgressCallback once before the first epoch (epoch 0), after every epoch,
    and once when the stack has stopped (`finished`).
    The networks of a stack train together in the same steps, so `elapsed_s` is the time of them
    all, not of each."""

    epoch: int  # epochs done
    max_epochs: int  # the most epochs (--max-epochs); each network stops earlier after `patience`
    patience: int  # epochs without a better validation loss before a network stops
    elapsed_s: float  # wall time since the training started
    validation_loss: dict[str, float]  # network -> its loss after this epoch, for those still training
    networks: tuple[NetworkRecord, ...]  # every network of the stack, as trained so far
    finished: bool = False  # the last call: every network has stopped
    method: str = ""  # the estimator that trains (set by the estimator)


@dataclass
class ChoiceRecord:
    """How a method chose, per voxel, between its water- and its fat-dominant candidate."""

    mode: str  # "spatial" (graph cut over the run's grid) or "voxel" (the paper's per-voxel likelihood)
    ambiguous_share: float  # share of the mask whose candidates' log-likelihoods differ by < 1 nat
    changed_share: float  # share of the mask whose side the spatial choice changed (0 for "voxel")
    details: dict[str, Any] = field(default_factory=dict)  # the rule and its numbers
    # mean over the mask of 1 - the side probability; None in records made before it
    expected_wrong_share: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {"Mode": self.mode, "AmbiguousShare": self.ambiguous_share, "ChangedShare": self.changed_share,
                "ExpectedWrongShare": self.expected_wrong_share, "Details": self.details}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ChoiceRecord:
        return cls(d["Mode"], d["AmbiguousShare"], d["ChangedShare"], dict(d.get("Details", {})),
                   d.get("ExpectedWrongShare"))


@dataclass
class EstimationRecord:
    """What one method did: the same keys for every method; what only one method has is in `details`."""

    method: str
    description: str
    reference: str
    seconds: float
    share_choosing_fat: float  # share of the mask on the fat-dominant side (PDFF >= pdff_boundary)
    pdff_boundary: float
    training_settings: dict[str, Any] | None = None  # None: nothing trained
    networks: list[NetworkRecord] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # e.g. the fit's optimiser, the training voxels
    choice: ChoiceRecord | None = None  # None: one candidate (the single network), or written before version 3
    # For a method added to a finished run by a later call: that call's CommandLine, Software,
    # Device, TorchThreads and Timings (the record's other fields describe the first call).
    added_by: dict[str, Any] | None = None

    _KEYS = ("Method", "Description", "Reference", "Seconds", "ShareChoosingFat", "ShareChoosingWater",
             "PDFFBoundary", "TrainingSettings", "Networks", "Details", "Choice", "AddedBy")

    def to_json(self) -> dict[str, Any]:
        return {"Method": self.method, "Description": self.description, "Reference": self.reference,
                "Seconds": round(self.seconds, 3), "ShareChoosingFat": self.share_choosing_fat,
                "ShareChoosingWater": 1 - self.share_choosing_fat, "PDFFBoundary": self.pdff_boundary,
                "TrainingSettings": self.training_settings, "Networks": [n.to_json() for n in self.networks],
                "Details": self.details, "Choice": self.choice.to_json() if self.choice else None,
                **({"AddedBy": self.added_by} if self.added_by else {})}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EstimationRecord:
        if "Details" in d:
            details = dict(d["Details"])
        else:  # version 1: a method's own keys stood beside the common ones
            details = {k: v for k, v in d.items() if k not in cls._KEYS and k != "ShareFatDominant"}
        fat = d["ShareChoosingFat"] if "ShareChoosingFat" in d else d["ShareFatDominant"]
        return cls(method=d["Method"], description=d["Description"], reference=d.get("Reference", ""),
                   seconds=d.get("Seconds", 0.0), share_choosing_fat=fat,
                   pdff_boundary=d.get("PDFFBoundary", _V1_BOUNDARY), training_settings=d.get("TrainingSettings"),
                   networks=[NetworkRecord.from_json(n) for n in d.get("Networks", [])], details=details,
                   choice=ChoiceRecord.from_json(d["Choice"]) if d.get("Choice") else None,
                   added_by=dict(d["AddedBy"]) if d.get("AddedBy") else None)


_V1_BOUNDARY = 0.58  # version 1 did not record it for the fit and the single network


@dataclass
class NoiseRecord:
    sigma: float  # std of each complex channel, image units
    method: str
    n_voxels: int | None = None  # voxels the estimate used; None: given with --sigma

    def to_json(self) -> dict[str, Any]:
        return {"Sigma": self.sigma, "Method": self.method, "NumberOfVoxels": self.n_voxels}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> NoiseRecord:
        return cls(d["Sigma"], d["Method"], d.get("NumberOfVoxels"))


@dataclass
class IdentifiabilityRecord:
    """Whether the run's protocol lets magnitude data tell the water- and the fat-dominant
    solution apart over the tissue range, judged before estimating (physics.identifiability)."""

    verdict: str  # "reliable" or "unreliable"
    snr: float  # median over the mask of the first echo / sigma, the SNR the check used
    unresolved_share: float  # share of the tissue range whose degenerate partner the data cannot reject
    median_gap_nats: float  # median over the tissue range of the expected log-likelihood gap of the pair
    reason: str = ""  # why unreliable (echo count, spacing, field); "" when reliable
    advice: str = ""  # what would help; "" when reliable
    details: dict[str, Any] = field(default_factory=dict)  # how it was computed: tissue range, thresholds

    @property
    def flagged(self) -> bool:
        return self.verdict != "reliable"

    def to_json(self) -> dict[str, Any]:
        return {"Verdict": self.verdict, "MedianSNR": self.snr, "UnresolvedShare": self.unresolved_share,
                "MedianGapNats": self.median_gap_nats, "Reason": self.reason, "Advice": self.advice,
                "Details": self.details}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> IdentifiabilityRecord:
        return cls(d["Verdict"], d["MedianSNR"], d["UnresolvedShare"], d["MedianGapNats"], d.get("Reason", ""),
                   d.get("Advice", ""), dict(d.get("Details", {})))


@dataclass
class ComparisonRecord:
    """With several methods: each other method's agreement with the first (reports.comparison.AGREEMENT)."""

    reference: str  # the first method
    agreement: dict[str, dict[str, Any]]  # other method -> statistic -> value

    def to_json(self) -> dict[str, Any]:
        return {"Reference": self.reference, "Agreement": self.agreement}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ComparisonRecord:
        return cls(d["Reference"], dict(d["Agreement"]))


@dataclass
class Provenance:
    """How one run's maps were made. JSON keys are the CamelCase of the field names."""

    software: dict[str, str]  # package -> version
    command_line: list[str]
    configuration: dict[str, Any]  # Config.to_dict()
    random_seed: int
    device: str
    torch_threads: int
    inputs: list[str]  # BIDS URIs of the echo images
    input_files: dict[str, dict[str, int]]  # echo image (relative path) -> Bytes, ModifiedNs
    option_files: dict[str, dict[str, Any]]  # option (mask_file, fat_spectrum) -> Path, Bytes, SHA256
    echo_times_s: list[float]
    field_strength_t: float
    fat_spectrum: dict[str, Any]
    noise: NoiseRecord
    mask_source: str
    mask_voxels: int
    methods: dict[str, EstimationRecord]  # every method, the primary first
    comparison: ComparisonRecord | None  # with several methods
    timings: dict[str, float]  # seconds per step
    outputs: dict[str, str]  # output key (PDFFmap, PDFFmap-fit, weights-water, ...) -> file name beside this one
    identifiability: IdentifiabilityRecord | None = None  # None: written before version 3
    # The automatic mask's rule and numbers (Rule, FalseAlarmProbability, GrowFalseAlarmProbability,
    # UsableVoxels, DroppedAsNoise); empty for a user's mask and in records before issue 16.
    mask_details: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def estimation(self) -> EstimationRecord:
        """The first (primary) method's record, whose maps have the plain names."""
        return next(iter(self.methods.values()))

    def to_json(self) -> dict[str, Any]:
        several = len(self.methods) > 1
        return {
            "SchemaVersion": self.schema_version, "Software": self.software, "CommandLine": self.command_line,
            "Configuration": self.configuration, "RandomSeed": self.random_seed, "Device": self.device,
            "TorchThreads": self.torch_threads, "Inputs": self.inputs, "InputFiles": self.input_files,
            "OptionFiles": self.option_files, "EchoTime": self.echo_times_s,
            "MagneticFieldStrength": self.field_strength_t, "FatSpectrum": self.fat_spectrum,
            "Noise": self.noise.to_json(),
            "Mask": {"Source": self.mask_source, "Voxels": self.mask_voxels,
                     **({"Details": self.mask_details} if self.mask_details else {})},
            "Identifiability": self.identifiability.to_json() if self.identifiability else None,
            "Estimation": self.estimation.to_json(),
            # One method: its record is Estimation alone (as in version 1).
            **({"Methods": {k: v.to_json() for k, v in self.methods.items()},
                "Comparison": self.comparison.to_json() if self.comparison else None} if several else {}),
            "Timings": {k: round(v, 3) for k, v in self.timings.items()},
            "Outputs": self.outputs,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Provenance:
        """Raises KeyError, TypeError or ValueError where `d` is not a provenance record."""
        # Methods is written with several methods only; Estimation is its first (or only) record.
        estimation = EstimationRecord.from_json(d["Estimation"])
        methods = {k: EstimationRecord.from_json(v) for k, v in d.get("Methods", {}).items()}
        comparison = ComparisonRecord.from_json(d["Comparison"]) if d.get("Comparison") else None
        return cls(software=dict(d["Software"]), command_line=list(d["CommandLine"]),
                   configuration=dict(d["Configuration"]), random_seed=d["RandomSeed"], device=d["Device"],
                   torch_threads=d["TorchThreads"], inputs=list(d["Inputs"]),
                   input_files=dict(d.get("InputFiles", {})), option_files=dict(d.get("OptionFiles", {})),
                   echo_times_s=list(d["EchoTime"]), field_strength_t=d["MagneticFieldStrength"],
                   fat_spectrum=dict(d["FatSpectrum"]), noise=NoiseRecord.from_json(d["Noise"]),
                   mask_source=d["Mask"]["Source"], mask_voxels=d["Mask"]["Voxels"],
                   mask_details=dict(d["Mask"].get("Details", {})),
                   methods=methods or {estimation.method: estimation}, comparison=comparison,
                   timings=dict(d["Timings"]), outputs=dict(d.get("Outputs", {})),
                   identifiability=(IdentifiabilityRecord.from_json(d["Identifiability"])
                                    if d.get("Identifiability") else None),
                   schema_version=d.get("SchemaVersion", 1))
