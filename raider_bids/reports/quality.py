"""Quality control of a run, read from its provenance: whether its protocol lets magnitude data
tell water from fat (the identifiability check) and how each method chose its water/fat side.
One RunQuality per finished run feeds both the participant page's table and the group level's
`group_qc.tsv` (QC_COLUMNS, QC_DICTIONARY), so that the two show the same numbers.

Runs written before provenance schema 3 have no identifiability or choice record: their values
are None (n/a in the table) and they are never flagged. Torch-free; knows no estimator."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..bids_io.derivatives import RunOutputs
from ..config import METHODS
from ..physics.parameters import AMBIGUOUS_LLR_NATS
from ..provenance import ChoiceRecord, IdentifiabilityRecord
from .roistats import RUN_DICTIONARY

QC_TABLE = "group_qc"
QC_COLUMNS = ["participant_id", "session_id", "run", "source", "method", "choice_mode", "identifiability",
              "flagged", "median_snr", "unresolved_share", "median_gap_nats", "ambiguous_share", "changed_share",
              "expected_wrong_share", "refined_share", "reason", "advice"]
_NOT_CHECKED = "n/a where the run's provenance predates the identifiability check (schema < 3)"
QC_DICTIONARY: dict[str, dict[str, Any]] = {
    **RUN_DICTIONARY,
    "method": {"LongName": "Primary method", "Description": "the first raider-bids --method, whose maps have "
                                                            "the plain names",
               "Levels": {name: m.description for name, m in sorted(METHODS.items())}},
    "choice_mode": {"LongName": "Water/fat choice", "Description": "how the primary method chose each voxel's "
                                                                   "water- or fat-dominant candidate; n/a for "
                                                                   "one candidate (--method single) or a "
                                                                   "provenance older than schema 3",
                    "Levels": {"spatial": "graph cut over the run's grid, weighing the neighbours' sides",
                               "voxel": "per-voxel likelihood (the paper's choice)"}},
    "identifiability": {"LongName": "Identifiability verdict",
                        "Description": "whether the protocol (echo times, field) and SNR let magnitude data "
                                       "tell the water- and fat-dominant solutions apart over the tissue range, "
                                       "judged before estimating; " + _NOT_CHECKED,
                        "Levels": {"reliable": "the data can reject the degenerate partner",
                                   "unreliable": "the water/fat separation cannot be trusted; see reason"}},
    "flagged": {"LongName": "Flagged", "Description": "whether the run's water/fat separation is flagged as "
                                                      "unreliable",
                "Levels": {"true": "identifiability unreliable",
                           "false": "identifiability reliable, or not checked (identifiability n/a)"}},
    "median_snr": {"LongName": "Median SNR", "Description": "median over the foreground mask of the first echo "
                                                            "divided by the noise sigma; " + _NOT_CHECKED,
                   "Units": "ratio"},
    "unresolved_share": {"LongName": "Unresolved share",
                         "Description": "share of the tissue range whose degenerate (water/fat swapped) partner "
                                        "the data cannot reject at this SNR; " + _NOT_CHECKED,
                         "Units": "fraction (0-1)"},
    "median_gap_nats": {"LongName": "Median likelihood gap",
                        "Description": "median over the tissue range of the expected log-likelihood gap "
                                       "between a solution and its degenerate partner; " + _NOT_CHECKED,
                        "Units": "nats"},
    "ambiguous_share": {"LongName": "Ambiguous share",
                        "Description": f"share of the foreground mask where the primary method's water and fat "
                                       f"candidates' log-likelihoods differ by less than {AMBIGUOUS_LLR_NATS:g} "
                                       f"nat; n/a as for choice_mode",
                        "Units": "fraction (0-1)"},
    "changed_share": {"LongName": "Changed share",
                      "Description": "share of the foreground mask whose side the spatial choice changed from "
                                     "the per-voxel choice (0 for the voxel choice); n/a as for choice_mode",
                      "Units": "fraction (0-1)"},
    "expected_wrong_share": {"LongName": "Expected wrong-side share",
                             "Description": "share of the foreground mask expected on the wrong side (water or "
                                            "fat): the mean of 1 - the side probability map; calibrated on "
                                            "simulated data, and on the side of doubt; n/a for runs made before "
                                            "it or as for choice_mode",
                             "Units": "fraction (0-1)"},
    "refined_share": {"LongName": "Refined share",
                      "Description": "share of the foreground mask where the primary method's network candidates "
                                     "were refined to their side's maximum likelihood before the choice "
                                     "(--refine ambiguous: both sides within a few nats, or the losing one within a "
                                     "step's reach of the winner); n/a for a method "
                                     "that trains nothing, with --refine none, or for runs made before it",
                      "Units": "fraction (0-1)"},
    "reason": {"LongName": "Reason", "Description": "why the separation is unreliable (echo count, spacing, "
                                                    "field); n/a when reliable or not checked"},
    "advice": {"LongName": "Advice", "Description": "what would make it reliable; n/a when reliable or not "
                                                    "checked"},
}


@dataclass(frozen=True)
class RunQuality:
    """One finished run's quality record: the identifiability check and, per method (the primary
    first), its water/fat choice; None where the provenance does not hold them."""

    name: str  # run name, e.g. sub-01_ses-1_run-1
    entities: dict[str, str]
    identifiability: IdentifiabilityRecord | None
    choices: dict[str, ChoiceRecord | None]  # method -> its choice, the primary first
    refined: dict[str, float | None] = field(default_factory=dict)  # method -> share refined (--refine)

    @property
    def flagged(self) -> bool:
        return self.identifiability is not None and self.identifiability.flagged

    @property
    def primary(self) -> str:
        return next(iter(self.choices))

    def row(self) -> dict[str, Any]:
        """The run's group_qc.tsv row (QC_COLUMNS; None is written n/a)."""
        check, choice = self.identifiability, self.choices[self.primary]
        return {"participant_id": f"sub-{self.entities['sub']}",
                "session_id": f"ses-{self.entities['ses']}" if "ses" in self.entities else None,
                "run": self.entities.get("run"), "source": self.name, "method": self.primary,
                "choice_mode": choice.mode if choice else None,
                "identifiability": check.verdict if check else None,
                "flagged": "true" if self.flagged else "false",
                "median_snr": check.snr if check else None,
                "unresolved_share": check.unresolved_share if check else None,
                "median_gap_nats": check.median_gap_nats if check else None,
                "ambiguous_share": choice.ambiguous_share if choice else None,
                "changed_share": choice.changed_share if choice else None,
                "expected_wrong_share": choice.expected_wrong_share if choice else None,
                "refined_share": self.refined.get(self.primary),
                "reason": _one_line(check.reason) if check else None,
                "advice": _one_line(check.advice) if check else None}


def _one_line(text: str) -> str | None:
    """Free text as a TSV cell: tabs and line breaks would split it (None: empty, written n/a)."""
    return " ".join(text.split()) or None


def run_quality(run: RunOutputs) -> RunQuality:
    """The quality record of a run whose provenance was read (a finished run)."""
    if run.provenance is None:
        raise ValueError(f"{run.name}: no provenance, so no quality record")
    prov = run.provenance
    return RunQuality(run.name, dict(run.entities), prov.identifiability,
                      {name: method.choice for name, method in prov.methods.items()},
                      {name: method.details.get("Refinement", {}).get("RefinedShare")
                       for name, method in prov.methods.items()})


def flagged_first(records: list[RunQuality]) -> list[RunQuality]:
    """Flagged runs first, then the rest, each by run name."""
    return sorted(records, key=lambda q: (not q.flagged, q.name))
