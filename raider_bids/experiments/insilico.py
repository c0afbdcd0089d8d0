"""The paper's in silico experiment (Sec. 3.3, Fig. 4), run through the app itself.

`raider-bids-insilico OUT_DIR` writes a grid-shaped BIDS dataset (100 PDFF x 50 R2* values x N
noisy repetitions as one image, 3 T, six echoes TE1 = dTE = 1.15 ms, S0 = 1, SNR 60), processes it
with `raider-bids ... participant --sigma 1/60` for each method (single unconstrained networks
with several seeds, the dual networks with their water and fat candidates, the conventional
fit), and writes per method a table of PDFF bias and SD, swap rate and R2*/S0 errors over the
grid (TSV and JSON), a summary table, and a figure like the paper's Fig. 4.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np

from ..bids_io.derivatives import DerivativesDataset
from ..physics.fat_spectrum import PRESETS
from ..physics.parameters import PDFF_BOUNDARY
from ..physics.signal_model import Acquisition
from ..physics.simulation import simulate_magnitude

ECHO_TIMES_S = tuple(1.15e-3 * k for k in range(1, 7))
FIELD_STRENGTH_T = 3.0
N_PDFF, N_R2STAR, R2STAR_MAX_S = 100, 50, 500.0
SNR = 60.0
SIGMA = 1.0 / SNR  # S0 = 1
SUBJECT = "grid"


def grid_truth() -> tuple[np.ndarray, np.ndarray]:
    """PDFF (100,) evenly in [0, 1] and R2* (50,) evenly in [0, 500] 1/s."""
    return np.linspace(0, 1, N_PDFF), np.linspace(0, R2STAR_MAX_S, N_R2STAR)


def write_grid_dataset(root: Path, repetitions: int, seed: int = 0) -> Path:
    """Raw BIDS dataset whose one image (100, 50, repetitions) holds the grid; returns a mask file
    (all voxels) written beside it, outside the dataset."""
    pdff, r2 = grid_truth()
    pp, rr = np.meshgrid(pdff, r2, indexing="ij")
    pp = np.repeat(pp[..., None], repetitions, axis=2)
    rr = np.repeat(rr[..., None], repetitions, axis=2)
    acquisition = Acquisition(ECHO_TIMES_S, FIELD_STRENGTH_T, PRESETS["hernando"])
    signals = simulate_magnitude(acquisition, np.ones(pp.size), pp.ravel(), rr.ravel(), SIGMA,
                                 np.random.default_rng(seed)).reshape(pp.shape + (len(ECHO_TIMES_S),))
    anat = root / f"sub-{SUBJECT}" / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "raider-bids in silico grid (Minore et al. 2025, Sec. 3.3)", "BIDSVersion": "1.10.0",
         "DatasetType": "raw"}, indent=2))
    (root / "README").write_text(f"Grid: x = {N_PDFF} PDFF values in [0, 1], y = {N_R2STAR} R2* values in "
                                 f"[0, {R2STAR_MAX_S:g}] 1/s, z = {repetitions} noisy repetitions; S0 = 1, "
                                 f"complex Gaussian noise sigma = 1/{SNR:g}.\n")
    for i, te in enumerate(ECHO_TIMES_S, 1):
        stem = anat / f"sub-{SUBJECT}_echo-{i}_part-mag_MEGRE"
        nib.save(nib.Nifti1Image(signals[..., i - 1].astype(np.float32), np.eye(4)), f"{stem}.nii.gz")
        Path(f"{stem}.json").write_text(json.dumps({"EchoTime": te, "MagneticFieldStrength": FIELD_STRENGTH_T}))
    mask = root.parent / "grid_mask.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(pp.shape, dtype=np.uint8), np.eye(4)), mask)
    return mask


def app_arguments(bids_dir: Path, out_dir: Path, mask: Path, method: str, seed: int,
                  extra: Sequence[str] = ()) -> list[str]:
    """The participant-level command line of one method. The grid has no spatial structure (its
    neighbours are unrelated signals), so each voxel's side is chosen on its own (--choice voxel);
    the networks' candidates are their own (--refine none), so the experiment measures the paper's
    networks, not the app's refinement of them towards the fit."""
    args = [str(bids_dir), str(out_dir), "participant", "--participant-label", SUBJECT, "--sigma", repr(SIGMA),
            "--mask", str(mask), "--method", method, "--random-seed", str(seed), "--choice", "voxel",
            "--refine", "none", *extra]
    return args + (["--write-candidates"] if method in ("ssl", "supervised") else [])


def load_maps(out_dir: Path, desc: str | None = None) -> dict[str, np.ndarray]:
    """The grid's PDFF, R2* and S0 maps (the plain ones, or a desc- variant such as a candidate)."""
    run = DerivativesDataset(out_dir).subject_outputs(SUBJECT)
    return {s: np.asarray(nib.load(run.files[s] if desc is None else run.listed[f"{s}-{desc}"]).dataobj,
                          dtype=np.float64) for s in ("PDFFmap", "R2starmap", "S0map")}


def grid_statistics(maps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per grid point (100, 50): mean, bias and SD over repetitions, and the swap rate."""
    pdff, r2 = grid_truth()
    true_pdff, true_r2 = pdff[:, None, None], r2[None, :, None]
    stats = {"pdff_mean": maps["PDFFmap"].mean(axis=2),
             "pdff_bias": (maps["PDFFmap"] - true_pdff).mean(axis=2),
             "pdff_sd": maps["PDFFmap"].std(axis=2, ddof=1),
             "swap_rate": ((maps["PDFFmap"] >= PDFF_BOUNDARY) != (true_pdff >= PDFF_BOUNDARY)).mean(axis=2),
             "r2star_bias": (maps["R2starmap"] - true_r2).mean(axis=2),
             "r2star_sd": maps["R2starmap"].std(axis=2, ddof=1),
             "s0_bias": (maps["S0map"] - 1.0).mean(axis=2),
             "s0_sd": maps["S0map"].std(axis=2, ddof=1)}
    return stats


def summary(maps: dict[str, np.ndarray], stats: dict[str, np.ndarray]) -> dict[str, float]:
    pdff, r2 = grid_truth()
    return {"pdff_mean_abs_bias": float(np.abs(stats["pdff_bias"]).mean()),
            "pdff_mean_sd": float(stats["pdff_sd"].mean()),
            "pdff_rmse": float(np.sqrt(((maps["PDFFmap"] - pdff[:, None, None]) ** 2).mean())),
            "swap_rate": float(stats["swap_rate"].mean()),
            "share_fat_side": float((maps["PDFFmap"] >= PDFF_BOUNDARY).mean()),
            "r2star_mean_abs_error_per_s": float(np.abs(maps["R2starmap"] - r2[None, :, None]).mean()),
            "r2star_mean_abs_bias_per_s": float(np.abs(stats["r2star_bias"]).mean()),
            "s0_mean_abs_error": float(np.abs(maps["S0map"] - 1.0).mean())}


def write_table(path: Path, stats: dict[str, np.ndarray]) -> None:
    pdff, r2 = grid_truth()
    columns = ["pdff_true", "r2star_true_per_s", *stats]
    lines = ["\t".join(columns)]
    for i, p in enumerate(pdff):
        for j, r in enumerate(r2):
            lines.append("\t".join([f"{p:.6g}", f"{r:.6g}", *(f"{stats[c][i, j]:.6g}" for c in stats)]))
    path.write_text("\n".join(lines) + "\n")
    path.with_suffix(".json").write_text(json.dumps(
        {"pdff_true": pdff.tolist(), "r2star_true_per_s": r2.tolist(),
         **{k: np.round(v, 6).tolist() for k, v in stats.items()}}))


def figure(path: Path, all_stats: dict[str, dict[str, np.ndarray]]) -> None:
    """Rows: mean PDFF, bias, SD; columns: methods (as the paper's Fig. 4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("pdff_mean", "mean PDFF", 0, 1, "viridis"), ("pdff_bias", "PDFF bias", -0.6, 0.6, "RdBu_r"),
            ("pdff_sd", "PDFF SD", 0, 0.3, "magma")]
    fig, axes = plt.subplots(3, len(all_stats), figsize=(2.2 * len(all_stats) + 1, 7.5), squeeze=False,
                             constrained_layout=True)
    extent = (0, R2STAR_MAX_S, 0, 1)
    for col, (method, stats) in enumerate(all_stats.items()):
        for row, (key, label, vmin, vmax, cmap) in enumerate(rows):
            ax = axes[row, col]
            im = ax.imshow(stats[key], origin="lower", aspect="auto", extent=extent, vmin=vmin, vmax=vmax, cmap=cmap)
            ax.axhline(PDFF_BOUNDARY, color="red", lw=0.8, ls=":")
            if row == 0:
                ax.set_title(method, fontsize=9)
            if col == 0:
                ax.set_ylabel(f"{label}\ntrue PDFF")
            if row == 2:
                ax.set_xlabel("true R2* (1/s)")
            if col == len(all_stats) - 1:
                fig.colorbar(im, ax=axes[row, :].tolist(), shrink=0.8)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_experiment(directory: Path, repetitions: int = 100, seeds: Sequence[int] = (0, 1, 2),
                   extra: Sequence[str] = (), supervised: bool = False) -> dict[str, dict[str, float]]:
    """Write the grid, run every method through the app, evaluate; returns the summary per method.
    With `supervised`, also the supervised (RAIDER) dual networks and their candidates."""
    from ..cli import main as app

    bids_dir = directory / "bids"
    mask = write_grid_dataset(bids_dir, repetitions)
    runs: dict[str, tuple[str, int]] = {f"single-seed{s}": ("single", s) for s in seeds}
    runs |= {"ssl": ("ssl", 0), "fit": ("fit", 0)}
    if supervised:
        runs["supervised"] = ("supervised", 0)
    outputs = {}
    for name, (method, seed) in runs.items():
        out = directory / "derivatives" / name
        code = app(app_arguments(bids_dir, out, mask, method, seed, extra))
        if code != 0:
            raise SystemExit(code)
        outputs[name] = out
    methods = {f"single seed {s}": (outputs[f"single-seed{s}"], None) for s in seeds}
    methods |= {"water network": (outputs["ssl"], "water"), "fat network": (outputs["ssl"], "fat"),
                "dual (water/fat by likelihood)": (outputs["ssl"], None), "conventional fit": (outputs["fit"], None)}
    if supervised:
        methods |= {"supervised water network": (outputs["supervised"], "water"),
                    "supervised fat network": (outputs["supervised"], "fat"),
                    "supervised (RAIDER)": (outputs["supervised"], None)}
    all_stats, results = {}, {}
    for label, (out, desc) in methods.items():
        maps = load_maps(out, desc)
        stats = grid_statistics(maps)
        all_stats[label] = stats
        provenance = DerivativesDataset(out).subject_outputs(SUBJECT).provenance
        results[label] = summary(maps, stats) | {"seconds": provenance.timings["EstimationSeconds"],
                                                  "derivatives": str(out)}
        slug = label.split(" (")[0].replace(" ", "-")
        write_table(directory / f"insilico_{slug}.tsv", stats)
    keys = [k for k in next(iter(results.values())) if k != "derivatives"]
    lines = ["\t".join(["method", *keys])] + ["\t".join([m, *(f"{r[k]:.6g}" for k in keys)])
                                               for m, r in results.items()]
    (directory / "insilico_summary.tsv").write_text("\n".join(lines) + "\n")
    (directory / "insilico_summary.json").write_text(json.dumps(
        {"repetitions": repetitions, "snr": SNR, "echo_times_s": ECHO_TIMES_S, "methods": results}, indent=2))
    figure(directory / "insilico_fig4.png", all_stats)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="raider-bids-insilico", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", type=Path, help="where the grid dataset, maps, tables and figure go")
    parser.add_argument("--repetitions", type=int, default=100, help="noisy repetitions per grid point")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2],
                        help="seeds of the single networks (none: skip them)")
    parser.add_argument("--nprocs", type=int, help="CPU threads")
    parser.add_argument("--max-epochs", type=int, help="cap on training epochs (default: the app's)")
    parser.add_argument("--training", help="the app's --training preset (default: the app's)")
    parser.add_argument("--supervised", action="store_true",
                        help="also run the supervised RAIDER networks (--method supervised)")
    args = parser.parse_args(argv)
    extra = [*(["--nprocs", str(args.nprocs)] if args.nprocs else []),
             *(["--training", args.training] if args.training else []),
             *(["--max-epochs", str(args.max_epochs)] if args.max_epochs else [])]
    results = run_experiment(args.directory, args.repetitions, args.seeds, extra, args.supervised)
    print(f"\n{'method':<32}{'|bias|':>8}{'SD':>8}{'swaps':>8}{'fat side':>9}{'R2* MAE':>9}{'S0 MAE':>8}{'seconds':>9}")
    for method, r in results.items():
        print(f"{method:<32}{r['pdff_mean_abs_bias']:>8.4f}{r['pdff_mean_sd']:>8.4f}{100 * r['swap_rate']:>7.2f}%"
              f"{100 * r['share_fat_side']:>8.1f}%{r['r2star_mean_abs_error_per_s']:>9.1f}"
              f"{r['s0_mean_abs_error']:>8.4f}{r['seconds']:>9.1f}")
    print(f"\ntables: {args.directory}/insilico_*.tsv, figure: {args.directory}/insilico_fig4.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
