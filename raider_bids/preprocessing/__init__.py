"""What is decided about a run's voxels before any method estimates: which voxels hold signal
(the foreground mask) and the noise level sigma. Uses physics; knows nothing of the estimators,
files or reports."""
