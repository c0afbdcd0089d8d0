"""Record (or re-make) the outputs that tests/test_golden.py compares against.

    python tests/golden/record.py [DIR]

Runs the app through its command line on two small synthetic datasets and stores, in DIR
(default: beside this file), every map and mask as arrays, every network's weights, every JSON
and text file of the derivative dataset, and a hash of the input echoes. tests/test_golden.py runs
the same calls with today's code and requires the same results (its docstring says when the stored
files were made, and why they were re-made).

Only the command line, `raider_bids.experiments.demo.write_dataset` (the synthetic data) and nibabel/torch
are used here, so this script runs unchanged against old and new code.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

HERE = Path(__file__).resolve().parent
SHAPE = (16, 16, 2)
SEED = 3
# Every method in one call (desc-<method> variants, the comparison, candidates), then the fit with
# every user-given input (mask, spectrum file, sigma). One thread: the same reduction order anywhere.
SPECTRUM = {"name": "golden", "ppm": [-3.4, -2.6, 0.6], "amplitudes": [0.7, 0.2, 0.1]}
CALLS = {
    "all-methods": ["--method", "ssl", "fit", "supervised", "single", "--write-candidates", "--max-epochs", "4",
                    "--random-seed", "5", "--nprocs", "1"],
    "user-inputs": ["--method", "fit", "--sigma", "1.7", "--mask", "{mask}", "--fat-spectrum", "{spectrum}",
                    "--nprocs", "1"],
}


def write_inputs(root: Path) -> dict[str, Path]:
    """The raw dataset, a user mask and a fat-spectrum file; returns their paths."""
    try:
        from raider_bids.experiments.demo import write_dataset
    except ImportError:  # the code before issue 14
        from raider_bids.demo import write_dataset

    bids = root / "bids"
    truth = write_dataset(bids, shape=SHAPE, snr=60, subjects=("01",), seed=SEED)["01"]
    mask = root / "mask.nii.gz"
    affine = nib.load(next(bids.rglob("*_MEGRE.nii.gz"))).affine  # the mask on the echoes' grid
    nib.save(nib.Nifti1Image((truth["labels"] > 0).astype(np.uint8), affine), mask)
    spectrum = root / "spectrum.json"
    spectrum.write_text(json.dumps(SPECTRUM))
    return {"bids": bids, "mask": mask, "spectrum": spectrum}


def input_hash(bids: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(bids.rglob("*_MEGRE.nii.gz")):
        digest.update(np.asarray(nib.load(path).dataobj).tobytes())
    return digest.hexdigest()


def run_calls(root: Path, inputs: dict[str, Path], extra: tuple[str, ...] = ()) -> dict[str, Path]:
    """Each call of CALLS (plus `extra` options) into its own output directory; returns them."""
    from raider_bids.cli import main

    outputs = {}
    for name, options in CALLS.items():
        out = root / f"out-{name}"
        argv = [str(inputs["bids"]), str(out), "participant",
                *(a.format(mask=inputs["mask"], spectrum=inputs["spectrum"]) for a in options), *extra]
        code = main(argv)
        if code != 0:
            raise SystemExit(f"{name}: exit code {code}")
        outputs[name] = out
    return outputs


def collect(out: Path) -> tuple[dict[str, np.ndarray], dict[str, object], dict[str, str]]:
    """Arrays (images, weights), JSON contents and texts of a derivative dataset, by relative path."""
    import torch

    arrays, jsons, texts = {}, {}, {}
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        rel = path.relative_to(out).as_posix()
        if "figures/" in rel or rel.endswith(".html"):
            continue  # reports: drawn from these outputs, checked by their own tests
        if rel.endswith(".nii.gz"):
            arrays[rel] = np.asarray(nib.load(path).dataobj)
        elif rel.endswith(".pt"):
            saved = torch.load(path, weights_only=True)
            for key, value in saved.pop("state_dict").items():
                arrays[f"{rel}:{key}"] = value.numpy()
            jsons[rel] = saved
        elif rel.endswith(".json"):
            jsons[rel] = json.loads(path.read_text())
        else:
            texts[rel] = path.read_text()
    return arrays, jsons, texts


def record(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        inputs = write_inputs(root)
        manifest = {"InputHash": input_hash(inputs["bids"]), "Root": str(root), "Calls": CALLS}
        for name, out in run_calls(root, inputs).items():
            arrays, jsons, texts = collect(out)
            np.savez_compressed(directory / f"{name}.npz", **arrays)
            (directory / f"{name}.json").write_text(json.dumps({"json": jsons, "text": texts}, indent=1) + "\n")
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    record(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
