"""Can this protocol tell the water- from the fat-dominant solution? Judged per run, before estimating.

Magnitude fat-water data are degenerate: most signals have a water-dominant (PDFF < 0.58) and a
fat-dominant (PDFF >= 0.58) explanation. How well the data reject the wrong one depends on the
protocol (echo times, field, fat spectrum) and the SNR alone, so it is computed without the data.

Tissue range: true PDFF 0..1 (51 values) x R2* 0..300 1/s (16 values), equally weighted.

SNR: `snr` is what the workflow measures, the median over the mask of first-echo magnitude / sigma.
The tissue range stands for the mask: all truths share one S0 (proton density), set so that the
median over the range of the noise-free first echo is snr * sigma. Not S0 = snr * sigma (the first
echo lies below S0 by R2* decay and, near opposed phase, fat-water cancellation: that would
understate the run's SNR), nor each truth's own first echo = snr * sigma (which would give
opposed-phase mixtures an S0 many times the others'). Caveat: real masks are mostly near-pure tissue,
whose first echo is closer to S0 (S0 / first echo ~1.2-1.4 on the real scans against ~2.6 here
for TE1 near opposed phase), so S0 is optimistic there, offset by a range harder than most masks.

Partner and gap: for each truth (noise-free magnitudes s) the partner is the model signal s' that
fits it best on the other side of PDFF 0.58, with PDFF at least MIN_SWAP_PDFF = 0.1 from the
truth's (a swap 0.55 -> 0.60 changes nothing a reader acts on; near 0.58 the nearest other-side
point would always fit), R2* in 0..R2STAR_MAX_S, S0 profiled out. The gap is the expected
log-likelihood ratio of truth over partner on the truth's data, KL(Rice(s) || Rice(s')), to second
order sum_e w_e (s_e - s'_e)^2 / (2 sigma^2) with w_e = sigma^2 x the Fisher information of a
Rician magnitude about its mean at the truth's echo e: 1 - sigma^2 / (2 s_e^2) above the noise
floor (the Gaussian KL), 0 at s_e = 0. This Rician weight matters at the floor (late echoes of
high-R2* tissue): there the plain Gaussian KL overstates the gap up to 2.5x; weighted, it is
within ~12 % of the exact Rician KL. The minimum over (PDFF', R2*') is a weighted least-squares
S0 in closed form on a grid (PDFF 0.01, 52 R2* values to 2000 1/s), the 3 lowest basins refined by
pattern search and the best polished by Levenberg-Marquardt, all vectorised over the truths
(~0.1 s a call, ~0.2 s with the advice's what-ifs; no BLAS threads). The gap is for a fixed pair;
the per-voxel choice then errs with probability Phi(-sqrt(gap / 2)) (details["ExpectedSwapShare"]);
both match a simulation with the Rician fit (solver.fit_voxels) to ~10 %.

Verdict: a truth is unresolved when its gap is under GAP_THRESHOLD_NATS = AMBIGUOUS_LLR_NATS (1 nat;
the fixed-pair choice errs >= 24 %). unresolved_share = their share of the range; "unreliable"
above SHARE_THRESHOLD = 0.03. Measured (Hernando spectrum), must flag: 3 T 4 echoes 1.2-4.2 ms
0.229 / 0.115 / 0.066 at SNR 30 / 60 / 100 (4 echoes for 3 unknowns leave curves of exact twins,
so the share falls only as ~1 / SNR); 0.35 T 6 echoes 3.9 ms apart >= 0.70. Must pass: the paper's
3 T protocol at SNR 60 0.000 (0.015 at SNR 20); real liver (2.9 T, 12 echoes, SNR 19.6) 0.0086;
real phantom (1.5 T, 16 echoes, SNR 59.3) 0.0074. 0.03 is 2.2x below the hardest flagged case and
3.5x above the worst passed one; in SNR, the real scans flip below 15.9 and 43.8, the 4-echo
protocol passes from ~400.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np
from scipy import special

from ..provenance import IdentifiabilityRecord
from .cramer_rao import rician_information_factor
from .parameters import AMBIGUOUS_LLR_NATS, PDFF_BOUNDARY, R2STAR_MAX_S
from .signal_model import Acquisition

TISSUE_PDFF = np.linspace(0.0, 1.0, 51)
TISSUE_R2STAR_S = np.linspace(0.0, 300.0, 16)
MIN_SWAP_PDFF = 0.1  # partners closer than this in PDFF are not a swap that matters
GAP_THRESHOLD_NATS = AMBIGUOUS_LLR_NATS
SHARE_THRESHOLD = 0.03  # unresolved share above which the run is flagged
# Partner search: coarse grid; SEARCH_STARTS basins refined by a 5 x 5 pattern search until its steps are
# 1/2^REFINE_LEVELS of the grid's; the best polished by POLISH_ITERATIONS Levenberg-Marquardt steps.
SEARCH_PDFF_STEP = 0.01
SEARCH_R2STAR_S = np.concatenate([np.arange(0.0, 600.0, 15.0), np.geomspace(600.0, R2STAR_MAX_S, 12)])
REFINE_LEVELS = 5
REFINE_ITERATIONS = 40  # at most (a start needs REFINE_LEVELS halvings plus its moves)
SEARCH_STARTS = 3  # refined per truth
POLISH_ITERATIONS = 8
TARGET_CYCLES = 2.0  # fat-water cycles below which the reason says the train is short
SHORT_SPACING_CYCLES = 0.3  # the echo spacing tried by the advice, in fat-water cycles


def rician_weight(x: np.ndarray) -> np.ndarray:
    """Fisher information of a Rician magnitude about its noise-free value nu, times sigma^2
    (x = nu / sigma >= 0): 0 at x = 0, 1 - 1/(2 x^2) above the noise floor (cramer_rao)."""
    return rician_information_factor(np.asarray(x, dtype=np.float64))


class _Shapes:
    """|S| / S0 of the model, in real arithmetic: |1 + p (c - 1)|^2 = 1 + p (2 Re(c - 1) + p |c - 1|^2)."""

    def __init__(self, acquisition: Acquisition):
        c = acquisition.fat_basis() - 1.0
        self.a2, self.b = 2 * c.real, np.abs(c) ** 2
        self.minus_t = -np.asarray(acquisition.echo_times_s, dtype=np.float64)

    def amplitude(self, pdff: np.ndarray) -> np.ndarray:
        """shape -> shape + (n_echoes,)"""
        p = pdff[..., None]
        return np.sqrt(np.maximum(1.0 + p * (self.a2 + p * self.b), 0.0))

    def decay(self, r2star_s: np.ndarray) -> np.ndarray:
        return np.exp(r2star_s[..., None] * self.minus_t)

    def __call__(self, pdff: np.ndarray, r2star_s: np.ndarray) -> np.ndarray:
        return self.amplitude(pdff) * self.decay(r2star_s)


def fat_water_period_s(acquisition: Acquisition) -> float:
    """In/out-of-phase period 1 / |f| of the main (largest) fat peak, s."""
    spectrum = acquisition.fat_spectrum
    main = int(np.argmax(spectrum.amplitudes))
    frequency = abs(spectrum.frequencies_hz(acquisition.field_strength_t)[main])
    return 1.0 / frequency if frequency > 0 else math.inf


def tissue_gaps(acquisition: Acquisition, snr: float, pdff: np.ndarray | None = None,
                r2star_s: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Expected log-likelihood gap (nats) of each truth over its partner (module docstring).

    pdff, r2star_s: truths of equal shape (default: the tissue range, flattened); S0 is always set
    from the tissue range and `snr`. Returns arrays over the truths: gap, partner_pdff,
    partner_r2star_s, partner_s0 (in sigma units), and s0 (the truths' common S0 / sigma)."""
    model = _Shapes(acquisition)
    tissue_p, tissue_r = _tissue_grid()
    s0 = float(snr) / float(np.median(model(tissue_p, tissue_r)[:, 0]))  # sigma = 1 from here on
    p = tissue_p if pdff is None else np.asarray(pdff, dtype=np.float64).ravel()
    r = tissue_r if r2star_s is None else np.asarray(r2star_s, dtype=np.float64).ravel()
    n = len(p)
    s = s0 * model(p, r)  # (n, E)
    w = rician_weight(s)
    ws = w * s
    ss = (ws * s).sum(axis=1)
    water = p < PDFF_BOUNDARY
    # The partner's PDFF bounds: the other side, at least MIN_SWAP_PDFF away.
    lo = np.where(water, np.maximum(PDFF_BOUNDARY, p + MIN_SWAP_PDFF), 0.0)
    hi = np.where(water, 1.0, np.minimum(PDFF_BOUNDARY, p - MIN_SWAP_PDFF))

    def gap_of(rows: np.ndarray, sb: np.ndarray, bb: np.ndarray) -> np.ndarray:
        # min over S0' of sum w (s - S0' b)^2 / 2 = (ss - <s,b>_w^2 / <b,b>_w) / 2 (<s,b>_w > 0: S0' > 0).
        ref = ss[rows] if sb.ndim == 1 else ss[rows, None]
        return np.maximum(ref - sb * sb / np.maximum(bb, 1e-300), 0.0) / 2

    # Coarse search, each side's truths against the other side's grid only. Starts: the lowest
    # SEARCH_STARTS local minima over PDFF' of the gap minimised over R2*' (the basins differ in PDFF).
    owner, start_p, start_r = [], [], []
    grid_pdff = np.linspace(0.0, 1.0, int(round(1 / SEARCH_PDFF_STEP)) + 1)
    for rows, side in ((np.flatnonzero(water), grid_pdff >= PDFF_BOUNDARY),
                       (np.flatnonzero(~water), grid_pdff <= PDFF_BOUNDARY)):
        if rows.size == 0:
            continue
        side_p = grid_pdff[side]
        grid_p, grid_r = (a.ravel() for a in np.meshgrid(side_p, SEARCH_R2STAR_S, indexing="ij"))
        shapes = model(grid_p, grid_r)  # (G, E)
        # einsum, not @: BLAS threads cost more than they save on these small products (3x on 2 busy cores).
        gap = gap_of(rows, np.einsum("ne,ge->ng", ws[rows], shapes), np.einsum("ne,ge->ng", w[rows], shapes * shapes))
        gap = gap.reshape(rows.size, side_p.size, SEARCH_R2STAR_S.size)
        best_r = gap.argmin(axis=2)
        profile = np.take_along_axis(gap, best_r[..., None], axis=2)[..., 0]
        profile[(side_p[None] < lo[rows, None] - 1e-12) | (side_p[None] > hi[rows, None] + 1e-12)] = np.inf
        padded = np.pad(profile, ((0, 0), (1, 1)), constant_values=np.inf)
        minima = np.where((profile <= padded[:, :-2]) & (profile <= padded[:, 2:]), profile, np.inf)
        order = np.argsort(minima, axis=1)[:, :SEARCH_STARTS]
        # Fewer minima than starts: the spare starts repeat the best one.
        order = np.where(np.isfinite(np.take_along_axis(minima, order, axis=1)), order, order[:, :1])
        owner.append(np.repeat(rows, order.shape[1]))
        start_p.append(side_p[order].ravel())
        start_r.append(SEARCH_R2STAR_S[np.take_along_axis(best_r, order, axis=1)].ravel())
    own, cp, cr = np.concatenate(owner), np.concatenate(start_p), np.concatenate(start_r)
    everyone = np.arange(n)
    # Local R2* step: the wider gap to the coarse neighbours of the chosen value.
    k = np.searchsorted(SEARCH_R2STAR_S, cr)
    padded_r = np.concatenate([SEARCH_R2STAR_S[:1], SEARCH_R2STAR_S, SEARCH_R2STAR_S[-1:]])
    hr = np.maximum(padded_r[k + 2] - padded_r[k + 1], padded_r[k + 1] - padded_r[k])
    hp = np.full(own.size, SEARCH_PDFF_STEP)
    offsets = np.linspace(-1.0, 1.0, 5)
    # Pattern search on a 5 x 5 stencil: a step that moves keeps its size (degenerate valleys are
    # narrow and diagonal in (PDFF, R2*): shrinking on every step would stall in them); one that
    # does not move halves it; a start stops when its PDFF step is 1/2^REFINE_LEVELS of the grid's.
    active = np.arange(own.size)
    for _ in range(REFINE_ITERATIONS):
        if active.size == 0:
            break
        rows = own[active]
        cand_p = np.clip(cp[active, None] + hp[active, None] * offsets, lo[rows, None], hi[rows, None])  # (m, 5)
        cand_r = np.clip(cr[active, None] + hr[active, None] * offsets, 0.0, R2STAR_MAX_S)
        b = (model.amplitude(cand_p)[:, :, None, :] * model.decay(cand_r)[:, None, :, :]).reshape(active.size, 25, -1)
        g = gap_of(rows, np.einsum("ne,nke->nk", ws[rows], b), np.einsum("ne,nke->nk", w[rows], b * b))
        best = g.argmin(axis=1)
        # The centre (index 12, the current point) wins ties: a flat stencil shrinks, not wanders.
        stay = g[np.arange(active.size), best] >= g[:, 12]
        best = np.where(stay, 12, best)
        cp[active] = cand_p[np.arange(active.size), best // 5]
        cr[active] = cand_r[np.arange(active.size), best % 5]
        hp[active] = np.where(stay, hp[active] / 2, hp[active])
        hr[active] = np.where(stay, hr[active] / 2, hr[active])
        active = active[hp[active] >= SEARCH_PDFF_STEP / 2**REFINE_LEVELS]
    b = model(cp, cr)
    gap = gap_of(own, (ws[own] * b).sum(axis=1), (w[own] * b * b).sum(axis=1))
    # Each truth's best start (starts are grouped by truth, SEARCH_STARTS each), polished.
    n_starts = own.size // n
    pick = np.empty(n, dtype=np.intp)
    pick[own[::n_starts]] = np.arange(0, own.size, n_starts) + gap.reshape(n, n_starts).argmin(axis=1)
    cp, cr = _polish(model, s, w, cp[pick], cr[pick], lo, hi)
    b = model(cp, cr)
    sb, bb = (ws * b).sum(axis=1), (w * b * b).sum(axis=1)
    return {"gap": gap_of(everyone, sb, bb), "partner_pdff": cp, "partner_r2star_s": cr,
            "partner_s0": sb / np.maximum(bb, 1e-300), "s0": np.full(n, s0)}


def _polish(model: _Shapes, s: np.ndarray, w: np.ndarray, pdff: np.ndarray, r2star_s: np.ndarray,
            lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Levenberg-Marquardt on (S0', PDFF', R2*') of sum w (s - S0' b)^2, S0' re-profiled after each
    step, bounds by clipping; a step is kept only where it lowers the gap. It finishes valleys
    too narrow and diagonal for the pattern search. Arrays of shape (m, E) and (m,)."""
    a, bq = model.a2 / 2, model.b

    def evaluate(p, r):
        amp, decay = model.amplitude(p), model.decay(r)
        b = amp * decay
        c = (w * s * b).sum(axis=1) / np.maximum((w * b * b).sum(axis=1), 1e-300)
        res = s - c[:, None] * b
        return (w * res * res).sum(axis=1) / 2, amp, decay, b, c, res

    value, amp, decay, b, c, res = evaluate(pdff, r2star_s)
    damping = np.full(pdff.size, 1e-3)
    for _ in range(POLISH_ITERATIONS):
        slope = decay * (a + pdff[:, None] * bq) / np.maximum(amp, 1e-12)  # d b / d PDFF
        jac = np.stack([b, c[:, None] * slope, c[:, None] * b * model.minus_t], axis=-1)  # (m, E, 3)
        jtj = np.einsum("me,mei,mej->mij", w, jac, jac)
        jtr = np.einsum("me,mei,me->mi", w, jac, res)
        diag = np.einsum("mii->mi", jtj)
        step = np.linalg.solve(jtj + (damping[:, None] * diag + 1e-12 * diag.sum(axis=1, keepdims=True))[..., None]
                               * np.eye(3), jtr[..., None])[..., 0]
        p_new = np.clip(pdff + step[:, 1], lo, hi)
        r_new = np.clip(r2star_s + step[:, 2], 0.0, R2STAR_MAX_S)
        trial = evaluate(p_new, r_new)
        better = trial[0] < value
        damping = np.where(better, damping / 10, damping * 10)
        pdff, r2star_s = np.where(better, p_new, pdff), np.where(better, r_new, r2star_s)
        value, amp, decay, b, c, res = (np.where(better if x.ndim == 1 else better[:, None], t, x)
                                        for t, x in zip(trial, (value, amp, decay, b, c, res)))
    return pdff, r2star_s


def _tissue_grid() -> tuple[np.ndarray, np.ndarray]:
    """The tissue range's truths, flattened PDFF-major: (PDFF, R2* 1/s)."""
    return tuple(a.ravel() for a in np.meshgrid(TISSUE_PDFF, TISSUE_R2STAR_S, indexing="ij"))


def assess(acquisition: Acquisition, snr: float) -> IdentifiabilityRecord:
    """Whether magnitude data from `acquisition` at `snr` (median over the mask of the first echo
    / sigma) let the per-voxel choice tell the water- from the fat-dominant solution."""
    start = time.perf_counter()
    snr = float(snr)
    if not (math.isfinite(snr) and snr > 0):  # no signal measured: nothing can be told apart
        # 0, not NaN, in the record: the provenance is strict JSON.
        return IdentifiabilityRecord("unreliable", snr if math.isfinite(snr) else 0.0, 1.0, 0.0,
                                     f"The median first-echo SNR over the mask is {snr:.3g}: no signal above the "
                                     "noise to separate fat from water.",
                                     "Check the mask (--mask) and the noise level (--sigma).",
                                     {"ShareThreshold": SHARE_THRESHOLD, "GapThresholdNats": GAP_THRESHOLD_NATS})
    result = tissue_gaps(acquisition, snr)
    gap = result["gap"]
    unresolved = gap < GAP_THRESHOLD_NATS
    share = float(unresolved.mean())
    median_gap = float(np.median(gap))
    reliable = share <= SHARE_THRESHOLD
    tissue_p, tissue_r = _tissue_grid()
    facts = _protocol_facts(acquisition)
    # Gap ~ SNR^2 above the noise floor: the SNR at which the SHARE_THRESHOLD-quantile of the gaps
    # reaches the threshold (an overestimate where echoes sit at the floor).
    quantile = float(np.quantile(gap, SHARE_THRESHOLD))
    snr_needed = snr * math.sqrt(GAP_THRESHOLD_NATS / quantile) if quantile > 0 else math.inf
    details = {
        "TissueRange": {"PDFF": [float(TISSUE_PDFF[0]), float(TISSUE_PDFF[-1]), len(TISSUE_PDFF)],
                        "R2starPerSecond": [float(TISSUE_R2STAR_S[0]), float(TISSUE_R2STAR_S[-1]),
                                            len(TISSUE_R2STAR_S)],
                        "Weighting": "uniform over the grid [first, last, points]"},
        "SNRConvention": "one S0 for the tissue range; median over it of the noise-free first echo = snr sigma",
        "S0OverSigma": round(float(result["s0"][0]), 4),
        "GapDefinition": ("min over the other side of PDFF 0.58 (PDFF at least MinSwapPDFF away, R2* 0.."
                          f"{R2STAR_MAX_S:g} 1/s, S0 profiled) of sum_e w_e (s_e - s'_e)^2 / (2 sigma^2), "
                          "w_e = sigma^2 x Rician Fisher information at the truth's echo e (1 above the noise floor)"),
        "PDFFBoundary": PDFF_BOUNDARY,
        "MinSwapPDFF": MIN_SWAP_PDFF,
        "GapThresholdNats": GAP_THRESHOLD_NATS,
        "ShareThreshold": SHARE_THRESHOLD,
        "Search": {"PDFFStep": SEARCH_PDFF_STEP, "R2starPoints": len(SEARCH_R2STAR_S), "RefineLevels": REFINE_LEVELS},
        # A fixed pair's per-voxel choice errs with probability Phi(-sqrt(gap / 2)).
        "ExpectedSwapShare": round(float(special.ndtr(-np.sqrt(gap / 2)).mean()), 4),
        "GapQuantilesNats": {q: round(float(np.quantile(gap, float(q))), 4) for q in ("0.03", "0.1", "0.5")},
        "SNRForReliable": round(snr_needed, 1) if math.isfinite(snr_needed) else None,
        **facts,
        "Seconds": 0.0,
    }
    if unresolved.any():
        details["Unresolved"] = {"PDFF": [float(tissue_p[unresolved].min()), float(tissue_p[unresolved].max())],
                                 "R2starPerSecond": [float(tissue_r[unresolved].min()),
                                                     float(tissue_r[unresolved].max())]}
    reason = advice = ""
    if not reliable:
        what_if = _what_if(acquisition, snr, gap, facts)
        details["WhatIf"] = {k: {"Change": v[0], "UnresolvedShare": round(v[1], 4)} for k, v in what_if.items()}
        reason, advice = _explain(acquisition, snr, share, median_gap, snr_needed, facts, what_if)
    details["Seconds"] = round(time.perf_counter() - start, 4)
    return IdentifiabilityRecord("reliable" if reliable else "unreliable", snr, share, median_gap, reason, advice,
                                 details)


def _protocol_facts(acquisition: Acquisition) -> dict:
    t = np.asarray(acquisition.echo_times_s)
    period = fat_water_period_s(acquisition)
    spacing = float(np.median(np.diff(t))) if len(t) > 1 else 0.0
    return {"FatWaterPeriodMs": round(1e3 * period, 4),  # in/opposed-phase period of the main fat peak
            "EchoSpacingMs": round(1e3 * spacing, 4),
            "EchoSpacingCycles": round(spacing / period, 4),  # 0.5: echoes alternate in/opposed phase
            "EchoTrainCycles": round(float(t[-1] - t[0]) / period, 4)}


def _what_if(acquisition: Acquisition, snr: float, gap: np.ndarray, facts: dict) -> dict[str, tuple[str, float]]:
    """Unresolved share after one change at a time: key -> (the change in words, share).

    A protocol change is evaluated on every other PDFF and R2* of the tissue range (a quarter of the
    work), its share scaled by this run's full-range / quarter share (the quarter alone is off by up
    to 1.5x near the threshold). 2 x SNR: this run's gaps x 4 (exact above the noise floor,
    conservative at it)."""
    t = np.asarray(acquisition.echo_times_s)
    n, spacing, period = len(t), facts["EchoSpacingMs"] * 1e-3, facts["FatWaterPeriodMs"] * 1e-3
    changes: dict[str, tuple[str, Acquisition]] = {}
    more = max(6, min(2 * n, n + 6))
    changes["MoreEchoes"] = (f"{more} echoes at this spacing (to TE {1e3 * (t[0] + (more - 1) * spacing):.1f} ms)",
                             replace(acquisition, echo_times_s=tuple(t[0] + spacing * np.arange(more))))
    short = SHORT_SPACING_CYCLES * period
    if spacing > 1.05 * short:
        count = int(math.floor((t[-1] - t[0]) / short + 1e-9)) + 1
        changes["ShorterSpacing"] = (f"spacing {1e3 * short:.2f} ms ({SHORT_SPACING_CYCLES:g} cycle, {count} echoes "
                                     "over the same span)",
                                     replace(acquisition, echo_times_s=tuple(t[0] + short * np.arange(count))))
    quarter = ((np.arange(len(TISSUE_PDFF)) % 2 == 0)[:, None] & (np.arange(len(TISSUE_R2STAR_S)) % 2 == 0)).ravel()
    tissue_p, tissue_r = (a[quarter] for a in _tissue_grid())
    unresolved = gap < GAP_THRESHOLD_NATS
    base_full, base_quarter = float(unresolved.mean()), float(unresolved[quarter].mean())
    out = {}
    for key, (words, changed) in changes.items():
        share = float(np.mean(tissue_gaps(changed, snr, tissue_p, tissue_r)["gap"] < GAP_THRESHOLD_NATS))
        out[key] = (words, min(1.0, share * base_full / base_quarter) if base_quarter > 0 else share)
    out["HigherSNR"] = (f"SNR {2 * snr:.3g} (4 x the averages)", float(np.mean(4 * gap < GAP_THRESHOLD_NATS)))
    return out


def _explain(acquisition: Acquisition, snr: float, share: float, median_gap: float, snr_needed: float,
             facts: dict, what_if: dict[str, tuple[str, float]]) -> tuple[str, str]:
    """reason and advice for an unreliable verdict, in the user's terms."""
    n = acquisition.n_echoes
    t_ms = 1e3 * np.asarray(acquisition.echo_times_s)
    period, field = facts["FatWaterPeriodMs"], acquisition.field_strength_t
    why = [f"{100 * share:.0f}% of the tissue range (PDFF 0-1, R2* 0-300 1/s) has a fat-water swap on the other "
           f"side of PDFF {PDFF_BOUNDARY} (e.g. PDFF 0.2 <-> 0.9) that these magnitude data cannot reject: an expected "
           f"log-likelihood gap under {GAP_THRESHOLD_NATS:g} nat (median over the range {median_gap:.2g} nats). "
           "There the maps may show the wrong one.",
           f"Protocol: {n} echoes, TE1 {t_ms[0]:.2f} ms, spacing {facts['EchoSpacingMs']:.2f} ms = "
           f"{facts['EchoSpacingCycles']:.2f} of the {period:.2f} ms fat-water cycle at {field:g} T (in/opposed-phase "
           f"period of the main fat peak); the echoes span {facts['EchoTrainCycles']:.2f} cycles; SNR {snr:.3g}."]
    if n <= 4:
        why.append(f"{n} echoes for 3 unknowns (S0, PDFF, R2*) leave curves of tissue with an exact twin, at any SNR.")
    if 0 < 1e3 / period < TISSUE_R2STAR_S[-1]:
        why.append(f"At {field:g} T one fat-water cycle is long: tissue with R2* above {1e3 / period:.0f} 1/s loses "
                   "2/3 of its signal before fat and water have dephased once.")
    if facts["EchoTrainCycles"] < TARGET_CYCLES:
        why.append(f"The echoes span under {TARGET_CYCLES:g} cycles: fat and water dephase too little to tell apart.")
    if math.isfinite(snr_needed) and snr_needed < 1000:
        why.append(f"More SNR alone would need about {snr_needed:.3g} ({(snr_needed / snr) ** 2:.2g} x the averages).")
    helps = [words for words, s in what_if.values() if s <= SHARE_THRESHOLD]
    partly = [f"{words}: {100 * s:.0f}%" for words, s in what_if.values() if SHARE_THRESHOLD < s < 0.8 * share]
    advice = []
    if helps:
        advice.append("Would make it reliable, each alone: " + "; ".join(helps) + ".")
    if partly:
        advice.append("Would reduce the unresolved share: " + "; ".join(partly) + ".")
    if not helps:
        advice.append("None of " + ", ".join(w for w, _ in what_if.values()) + " alone makes magnitude data reliable.")
    advice.append("Complex (magnitude and phase) data with a complex fat-water separation resolve the swap "
                  "directly; or treat PDFF near the swap as unknown (see the LLR map).")
    return " ".join(why), " ".join(advice)
