"""The identifiability check (physics.identifiability): which protocols it flags, which it passes,
that it only improves with SNR and echoes, and its gap against independent computations (a SciPy
brute-force minimum, numerical Rician integrals, and simulated noise fitted with the Rician solver)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import integrate, optimize, special

from raider_bids.physics.fat_spectrum import PRESETS
from raider_bids.physics.identifiability import (GAP_THRESHOLD_NATS, MIN_SWAP_PDFF, SHARE_THRESHOLD, assess,
                                                 rician_weight, tissue_gaps)
from raider_bids.physics.parameters import PDFF_BOUNDARY, R2STAR_MAX_S
from raider_bids.physics.signal_model import Acquisition, magnitude_signal
from raider_bids.physics.solver import fit_voxels
from raider_bids.provenance import IdentifiabilityRecord

REAL_BIDS = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-bids"
HERNANDO = PRESETS["hernando"]


@pytest.fixture
def one_torch_thread():
    """The Rician solver on one thread: on a busy machine torch's spinning threads make these small
    fits 30x slower, and the results do not depend on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def protocol(te1_ms: float, spacing_ms: float, n: int, field_t: float) -> Acquisition:
    return Acquisition(tuple(1e-3 * (te1_ms + spacing_ms * k) for k in range(n)), field_t, HERNANDO)


PAPER = protocol(1.15, 1.15, 6, 3.0)  # 3 T, TE 1.15, 2.30, ... 6.90 ms
FOUR_ECHOES_3T = protocol(1.2, 1.0, 4, 3.0)  # TE 1.2, 2.2, 3.2, 4.2 ms
HARD_1P5T = protocol(1.2, 2.0, 6, 1.5)


def opposite_side(pdff: float) -> tuple[float, float]:
    """The partner's PDFF bounds as the module defines them (module docstring)."""
    if pdff < PDFF_BOUNDARY:
        return max(PDFF_BOUNDARY, pdff + MIN_SWAP_PDFF), 1.0
    return 0.0, min(PDFF_BOUNDARY, pdff - MIN_SWAP_PDFF)


# --- verdicts ------------------------------------------------------------------------------------

@pytest.mark.parametrize("snr", [30, 60, 100])
def test_flags_four_echoes_at_3t(snr):
    record = assess(FOUR_ECHOES_3T, snr)
    assert record.verdict == "unreliable" and record.flagged
    assert record.unresolved_share > 2 * SHARE_THRESHOLD
    assert "4 echoes" in record.reason and "2.24 ms fat-water cycle" in record.reason
    assert "echoes" in record.advice and "Complex" in record.advice


@pytest.mark.parametrize("te1_ms", [3.9, 2.0])
@pytest.mark.parametrize("snr", [30, 60, 100])
def test_flags_low_field_six_echoes(te1_ms, snr):
    record = assess(protocol(te1_ms, 3.9, 6, 0.35), snr)
    assert record.verdict == "unreliable"
    assert record.unresolved_share > 0.5
    assert record.median_gap_nats < GAP_THRESHOLD_NATS
    assert "0.35 T" in record.reason and "Complex" in record.advice


def test_passes_paper_protocol():
    record = assess(PAPER, 60)
    assert record.verdict == "reliable" and not record.flagged
    assert record.unresolved_share <= SHARE_THRESHOLD / 3
    assert record.median_gap_nats > 10 * GAP_THRESHOLD_NATS
    assert record.reason == "" and record.advice == ""
    details = record.details
    assert details["ShareThreshold"] == SHARE_THRESHOLD and details["GapThresholdNats"] == GAP_THRESHOLD_NATS
    assert details["TissueRange"]["R2starPerSecond"][:2] == [0.0, 300.0]


def test_record_round_trips_through_json():
    record = assess(FOUR_ECHOES_3T, 60)  # unreliable: reason, advice and what-ifs filled
    text = json.dumps(record.to_json(), allow_nan=False)
    assert IdentifiabilityRecord.from_json(json.loads(text)) == record


def test_no_signal_is_unreliable_without_raising():
    for snr in (0.0, float("nan")):
        record = assess(PAPER, snr)
        assert record.verdict == "unreliable" and record.unresolved_share == 1.0 and record.reason
        json.dumps(record.to_json(), allow_nan=False)


def _workflow_snr(run) -> tuple[Acquisition, float]:
    """The SNR as participant.process_run measures it: model-residual sigma on the provisional
    tissue sample, then the automatic mask."""
    from raider_bids.bids_io.raw import load_run
    from raider_bids.preprocessing.mask import foreground_mask, provisional_tissue
    from raider_bids.preprocessing.noise import estimate_sigma

    data, _ = load_run(run)
    acquisition = Acquisition(run.echo_times_s, run.field_strength_t, HERNANDO)
    sample = data[provisional_tissue(data)].astype(np.float64)
    sigma = estimate_sigma(sample, acquisition, np.random.default_rng(0)).sigma  # Config.random_seed
    signals = data[foreground_mask(data, sigma)].astype(np.float64)
    return acquisition, float(np.median(signals[:, 0]) / sigma)


def test_passes_real_scans(one_torch_thread):
    if not REAL_BIDS.is_dir():
        pytest.skip(f"{REAL_BIDS} is absent")
    from raider_bids.bids_io.raw import find_runs

    runs, problems = find_runs(REAL_BIDS)
    assert not problems and {r.subject for r in runs} >= {"liver", "phantom"}
    for run in runs:
        acquisition, snr = _workflow_snr(run)
        record = assess(acquisition, snr)
        assert record.verdict == "reliable", (run.name, snr, record.unresolved_share)


# --- monotonicity --------------------------------------------------------------------------------

@pytest.mark.parametrize("acquisition", [FOUR_ECHOES_3T, HARD_1P5T, protocol(3.9, 3.9, 6, 0.35)],
                         ids=["3T-4echoes", "1.5T-hard", "0.35T"])
def test_more_snr_never_worse(acquisition):
    previous = None
    for snr in (5, 15, 40, 100, 250):
        gap = tissue_gaps(acquisition, snr)["gap"]
        if previous is not None:
            # Per truth: the gap grows with SNR (up to the search's last digits).
            assert np.all(gap >= previous * (1 - 1e-3) - 1e-4)
            assert np.mean(gap < GAP_THRESHOLD_NATS) <= np.mean(previous < GAP_THRESHOLD_NATS)
            assert np.median(gap) >= np.median(previous)
        previous = gap


@pytest.mark.parametrize("te1_ms,spacing_ms,field_t", [(1.2, 1.0, 3.0), (1.2, 2.0, 1.5)], ids=["3T", "1.5T"])
def test_more_echoes_never_worse(te1_ms, spacing_ms, field_t):
    """Appending later echoes (TE1, hence S0, unchanged) only adds terms to every partner's misfit."""
    previous = None
    for n in (4, 5, 6, 8):
        acquisition = protocol(te1_ms, spacing_ms, n, field_t)
        gap = tissue_gaps(acquisition, 40)["gap"]
        if previous is not None:
            # Per truth up to the search's accuracy (a few % where valleys are narrow).
            assert np.all(gap >= previous * 0.95 - 0.01)
            assert np.mean(gap < GAP_THRESHOLD_NATS) <= np.mean(previous < GAP_THRESHOLD_NATS)
            assert np.median(gap) >= np.median(previous)
        previous = gap


# --- the gap against independent computations -----------------------------------------------------

def _rician_fisher(x: float) -> float:
    """sigma^2 x Fisher information of Rice(x, 1) about x, by quadrature (no table)."""
    def integrand(m):
        ratio = special.i1e(m * x) / special.i0e(m * x)
        return m * np.exp(-(m - x) ** 2 / 2) * special.i0e(m * x) * (m * ratio - x) ** 2
    return integrate.quad(integrand, 0.0, x + 40.0, limit=200)[0]


def test_rician_weight_matches_quadrature():
    x = np.array([0.0, 0.3, 1.0, 2.0, 5.0, 9.9, 10.1, 30.0])
    expected = np.array([_rician_fisher(v) for v in x])
    np.testing.assert_allclose(rician_weight(x), expected, atol=3e-3)
    assert rician_weight(np.array([0.0]))[0] == 0.0 and rician_weight(np.array([1e4]))[0] > 1 - 1e-8


@pytest.mark.parametrize("acquisition,snr,truth", [(HARD_1P5T, 40, (0.2, 50.0)), (HARD_1P5T, 40, (0.8, 100.0)),
                                                   (PAPER, 20, (0.35, 150.0))])
def test_gap_matches_brute_force(acquisition, snr, truth):
    """Minimum over the other side by SciPy from many starts, S0 free (not profiled), the model from
    signal_model.magnitude_signal and the weights by quadrature."""
    result = tissue_gaps(acquisition, snr, np.array([truth[0]]), np.array([truth[1]]))
    s = result["s0"][0] * magnitude_signal(acquisition, [1.0], [truth[0]], [truth[1]])[0]
    weight = np.array([_rician_fisher(v) for v in s])
    lo, hi = opposite_side(truth[0])

    def residual(x):
        return np.sqrt(weight) * (s - magnitude_signal(acquisition, [x[0]], [x[1]], [x[2]])[0])

    best = np.inf
    for p0 in np.linspace(lo, hi, 5):
        for r0 in (0.0, 100.0, 300.0, 800.0):
            fit = optimize.least_squares(residual, [s[0], p0, r0], bounds=([0, lo, 0], [np.inf, hi, R2STAR_MAX_S]),
                                         xtol=1e-12, ftol=1e-12)
            best = min(best, 0.5 * float(np.sum(fit.fun**2)))
    assert result["gap"][0] == pytest.approx(best, rel=5e-3, abs=1e-4)


def _rician_kl(nu: np.ndarray, nu_other: np.ndarray) -> float:
    """Sum over echoes of KL(Rice(nu, 1) || Rice(nu_other, 1)), by quadrature."""
    def log_pdf(m, v):
        return np.log(m) - (m - v) ** 2 / 2 + np.log(special.i0e(m * v))
    total = 0.0
    for a, b in zip(nu, nu_other):
        total += integrate.quad(lambda m: np.exp(log_pdf(m, a)) * (log_pdf(m, a) - log_pdf(m, b)),
                                1e-12, a + 15.0, limit=200)[0]
    return total


@pytest.mark.parametrize("acquisition,snr,truth", [(HARD_1P5T, 40, (0.65, 200.0)),
                                                   (protocol(1.1, 1.1, 12, 2.8949), 10, (0.9, 300.0))])
def test_gap_is_the_rician_kl_near_the_noise_floor(acquisition, snr, truth):
    """Where late echoes sit at the noise floor the weighted gap is the Rician KL (to second order),
    not the Gaussian one, which overstates it."""
    result = tissue_gaps(acquisition, snr, np.array([truth[0]]), np.array([truth[1]]))
    s = result["s0"][0] * magnitude_signal(acquisition, [1.0], [truth[0]], [truth[1]])[0]
    partner = result["partner_s0"][0] * magnitude_signal(acquisition, [1.0], [result["partner_pdff"][0]],
                                                         [result["partner_r2star_s"][0]])[0]
    assert s.min() < 1.0  # some echo at the floor
    kl = _rician_kl(s, partner)
    assert result["gap"][0] == pytest.approx(kl, rel=0.15)


@pytest.mark.parametrize("truth", [(0.2, 50.0), (0.8, 100.0)])
def test_gap_matches_simulated_fits(truth, one_torch_thread):
    """Noisy magnitudes of one truth, fitted on both sides with the Rician solver: the mean
    log-likelihood ratio is the expected gap, and the swap rate Phi(-sqrt(gap / 2))."""
    snr, n = 40, 2000
    result = tissue_gaps(HARD_1P5T, snr, np.array([truth[0]]), np.array([truth[1]]))
    s = result["s0"][0] * magnitude_signal(HARD_1P5T, [1.0], [truth[0]], [truth[1]])[0]
    rng = np.random.default_rng(7)
    noisy = np.abs(s + rng.normal(size=(n, s.size)) + 1j * rng.normal(size=(n, s.size)))
    own = (0.0, PDFF_BOUNDARY) if truth[0] < PDFF_BOUNDARY else (PDFF_BOUNDARY, 1.0)
    llr = (fit_voxels(noisy, HARD_1P5T, opposite_side(truth[0]), 1.0).loss
           - fit_voxels(noisy, HARD_1P5T, own, 1.0).loss)
    gap = result["gap"][0]
    assert llr.mean() == pytest.approx(gap, rel=0.15)
    assert np.mean(llr < 0) == pytest.approx(special.ndtr(-np.sqrt(gap / 2)), abs=0.04)


@pytest.mark.parametrize("protocol, flagged", [
    (((1.2e-3, 2.2e-3, 3.2e-3, 4.2e-3), 3.0), True),  # 3 T, four echoes
    ((tuple(1.15e-3 * (k + 1) for k in range(6)), 3.0), False),  # the paper's protocol
])
def test_the_participant_level_warns_once_where_the_protocol_is_unreliable(capsys, tmp_path, protocol, flagged):
    """One WARNING line naming the run and saying 'unreliable', the verdict in the provenance; none
    for the paper's protocol."""
    from cli_checks import run_cli

    from raider_bids.experiments.phantoms import abdomen, write_phantom_dataset

    echo_times, field = protocol
    write_phantom_dataset(tmp_path / "bids", abdomen((24, 24, 2)), echo_times, field, snr=60)
    code, err = run_cli(capsys, [str(tmp_path / "bids"), str(tmp_path / "out"), "participant", "--method", "fit",
                                 "--nprocs", "1"])
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "[WARNING]" in line and "unreliable" in line]
    assert len(warnings) == (1 if flagged else 0), err
    if flagged:
        assert "sub-01" in warnings[0] and "echoes" in warnings[0]
    provenance = json.loads((tmp_path / "out" / "sub-01" / "anat" / "sub-01_provenance.json").read_text())
    assert provenance["Identifiability"]["Verdict"] == ("unreliable" if flagged else "reliable")
