"""ROI statistics of the maps: the group table's rows, columns and data dictionary."""

from __future__ import annotations

import numpy as np

from ..physics.parameters import PARAMETERS

# Table name of each map -> its suffix in the participant-level outputs.
STATISTIC_MAPS = {p.name: p.suffix for p in PARAMETERS}
_UNITS = {p.name: p.units for p in PARAMETERS}
STATISTICS = ("mean", "median", "stdv", "p05", "p95", "mad")
COLUMNS = ["participant_id", "session_id", "run", "source", "roi", "roi_source", "map", "method", "units",
           "n_roi_voxels", "n_voxels", *STATISTICS]

# The columns naming a run, shared by every group table.
RUN_DICTIONARY = {
    "participant_id": {"LongName": "Participant", "Description": "BIDS participant label, sub-<label>"},
    "session_id": {"LongName": "Session", "Description": "BIDS session label, ses-<label>; n/a without sessions"},
    "run": {"LongName": "Run", "Description": "run entity of the MEGRE acquisition as written in its file "
                                              "names; n/a without one"},
    "source": {"LongName": "Source run", "Description": "file name prefix of the MEGRE run (all its entities "
                                                        "except echo and part), e.g. sub-01_ses-1_run-1"},
}

DATA_DICTIONARY = {
    **RUN_DICTIONARY,
    "roi": {"LongName": "Region of interest", "Description": "label of a *_label-<label>_mask, a name from a "
                                                              "segmentation's lookup table, or 'foreground' "
                                                              "(the participant-level mask) without ROI datasets"},
    "roi_source": {"LongName": "ROI file", "Description": "the ROI image: <dataset folder>:<path in it> for "
                                                          "--roi-dataset files, bids::<path> (this dataset) "
                                                          "for the foreground mask"},
    "map": {"LongName": "Parameter map", "Description": "which map the statistics are of",
            "Levels": {"PDFF": "proton density fat fraction (*_PDFFmap)", "R2star": "R2* (*_R2starmap)",
                       "S0": "signal at echo time 0 (*_S0map)"}},
    "method": {"LongName": "Estimation method", "Description": "raider-bids --method that made the maps"},
    "units": {"LongName": "Units", "Description": "units of the map and of the statistics below"},
    "n_roi_voxels": {"LongName": "ROI voxels", "Description": "voxels in the ROI"},
    "n_voxels": {"LongName": "Voxels used", "Description": "ROI voxels inside the participant-level foreground "
                                                            "mask with a finite value: the voxels summarised"},
    "mean": {"LongName": "Mean", "Description": "mean over the voxels used"},
    "median": {"LongName": "Median", "Description": "median over the voxels used"},
    "stdv": {"LongName": "Standard deviation", "Description": "sample standard deviation (N-1 denominator); "
                                                              "n/a for fewer than 2 voxels"},
    "p05": {"LongName": "5th percentile", "Description": "5th percentile (linear interpolation)"},
    "p95": {"LongName": "95th percentile", "Description": "95th percentile (linear interpolation)"},
    "mad": {"LongName": "Median absolute deviation", "Description": "median of |value - median|, unscaled"},
}


def summarise(values: np.ndarray) -> dict[str, float | None]:
    """The statistics of `values` (1-D, finite); None where undefined."""
    if values.size == 0:
        return dict.fromkeys(STATISTICS)
    values = values.astype(np.float64)
    median = float(np.median(values))
    p05, p95 = np.percentile(values, [5, 95])
    return {"mean": float(values.mean()), "median": median,
            "stdv": float(values.std(ddof=1)) if values.size > 1 else None,
            "p05": float(p05), "p95": float(p95), "mad": float(np.median(np.abs(values - median)))}


def roi_rows(run_entities: dict[str, str], source: str, method: str, maps: dict[str, np.ndarray],
             foreground: np.ndarray, rois) -> list[dict]:
    """One row per ROI x map; `maps` by table name (PDFF, R2star, S0), all on the grid of `foreground`."""
    rows = []
    for roi in rois:
        for name in STATISTIC_MAPS:
            values = maps[name][roi.voxels & foreground]
            values = values[np.isfinite(values)]
            rows.append({"participant_id": f"sub-{run_entities['sub']}",
                         "session_id": f"ses-{run_entities['ses']}" if "ses" in run_entities else None,
                         "run": run_entities.get("run"), "source": source, "roi": roi.name,
                         "roi_source": roi.source, "map": name, "method": method, "units": _UNITS[name],
                         "n_roi_voxels": int(roi.voxels.sum()), "n_voxels": int(values.size),
                         **summarise(values)})
    return rows
