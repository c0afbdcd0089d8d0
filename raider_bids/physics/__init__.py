"""Physics: what a magnitude multi-echo gradient-echo signal is, written once for every estimator,
the noise estimate and the simulators. Imports nothing from the layers above (estimators, BIDS
I/O, reports, workflows, cli).

    parameters     the estimated parameters: names, units, bounds, BIDS suffixes; the PDFF boundary
    fat_spectrum   fat spectra (chemical shifts and amplitudes)
    signal_model   the magnitude signal model (paper Eq. 5) and least-squares S0
    likelihood     the Rician likelihood and its Bessel functions
    transforms     the constraining transforms of the networks' bottleneck (paper Eq. 7)
    solver         the batched grid + Levenberg-Marquardt fit (least squares or Rician)
    simulation     noisy magnitudes with known truth
"""
