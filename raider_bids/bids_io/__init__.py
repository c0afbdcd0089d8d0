"""BIDS I/O: the raw dataset (finding MEGRE runs with pybids, loading and checking their echoes
and a user's mask), the derivative dataset this app writes (names, desc- variants, sidecars,
writing, finding and removing a run's outputs), the only code that writes files, and ROI
datasets. Knows no estimator.

    raw          discovery and loading of the raw dataset
    derivatives  the output dataset (DerivativesDataset)
    files        atomic writes
    rois         ROI datasets: label masks and segmentations, matched to runs
"""
