"""The participant level end to end on a synthetic dataset with known truth."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from raider_bids import __version__
from raider_bids.cli import main
from raider_bids.experiments.demo import FIELD_STRENGTH_T, TISSUES, compare, write_dataset
from raider_bids.estimators.self_supervised import predict
from raider_bids.estimators.networks import PhysicsAutoencoder, normalise
from raider_bids.physics.fat_spectrum import PRESETS
from raider_bids.physics.parameters import PDFF_RANGES
from raider_bids.physics.signal_model import Acquisition
from raider_bids.physics.solver import gauss_newton_gain, refine_voxels

SHAPE = (32, 32, 3)
WATER = ("muscle", "liver")  # clearly water-dominant
FAT = ("subcutaneous-fat",)  # clearly fat-dominant
NEAR_BOUNDARY = ("steatosis", "marrow")  # PDFF 0.35 and 0.75: partners closer to 0.58


def _hash_tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    truth = write_dataset(root / "bids", shape=SHAPE, snr=60, subjects=("01",), seed=3)["01"]
    before = _hash_tree(root / "bids")
    code = main([str(root / "bids"), str(root / "out"), "participant", "--random-seed", "7", "--nprocs", "2"])
    assert code == 0
    return root, truth, before


@pytest.fixture(scope="module")
def maps(dataset):
    root, _, _ = dataset
    anat = root / "out" / "sub-01" / "anat"
    return {s: _load(anat / f"sub-01_{s}.nii.gz") for s in ("PDFFmap", "R2starmap", "S0map", "LLRmap")} | {
        "mask": _load(anat / "sub-01_desc-foreground_mask.nii.gz") > 0}


def test_tissues_land_on_the_right_side_and_errors_are_small(dataset, maps):
    _, truth, _ = dataset
    mask = maps["mask"]
    body = truth["labels"] > 0
    assert (mask & body).sum() >= 0.97 * body.sum()  # the automatic mask finds the body...
    assert (mask & ~body).sum() <= 0.01 * (~body).sum()  # ...and not the air
    for name in WATER + FAT:
        sel = mask & (truth["labels"] == TISSUES[name].label)
        on_fat_side = maps["PDFFmap"][sel] >= 0.58
        share_right = np.mean(on_fat_side if name in FAT else ~on_fat_side)
        assert share_right >= 0.99, (name, share_right)
    # Even the ML estimate swaps a few of these at SNR 60 with six echoes.
    for name in NEAR_BOUNDARY:
        sel = mask & (truth["labels"] == TISSUES[name].label)
        assert np.mean((maps["PDFFmap"][sel] >= 0.58) == (TISSUES[name].pdff >= 0.58)) >= 0.9, name
    errors = compare(truth, maps, mask)
    assert errors["pdff_mae"] < 0.02
    assert errors["swap_rate"] < 0.01
    assert errors["r2star_mae_s"] < 10
    assert errors["s0_relative_mae"] < 0.05


def test_input_dataset_untouched(dataset):
    root, _, before = dataset
    assert _hash_tree(root / "bids") == before


def test_sidecars(dataset):
    root, _, _ = dataset
    anat = root / "out" / "sub-01" / "anat"
    units = {"PDFFmap": "fraction (0-1)", "R2starmap": "1/s", "S0map": "arbitrary", "LLRmap": "nats"}
    for suffix, unit in units.items():
        sidecar = json.loads((anat / f"sub-01_{suffix}.json").read_text())
        assert sidecar["Units"] == unit
        assert sidecar["SkullStripped"] is False
        assert sidecar["MagneticFieldStrength"] == FIELD_STRENGTH_T  # inherited from the top-level MEGRE.json
        assert sidecar["EchoTime"] == pytest.approx([1.15e-3 * k for k in range(1, 7)])
        assert sidecar["Description"] and sidecar["EstimationAlgorithm"] and sidecar["EstimationReference"]
        assert len(sidecar["Sources"]) == 6
        for uri in sidecar["Sources"]:
            assert uri.startswith("bids:raw:") and (root / "bids" / uri[len("bids:raw:"):]).is_file()
    description = json.loads((root / "out" / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    generated = description["GeneratedBy"][0]
    assert generated["Name"] == "raider-bids" and generated["Version"] == __version__ and generated["CodeURL"]
    assert description["SourceDatasets"] and description["DatasetLinks"]["raw"].startswith("file://")
    assert "*_PDFFmap.*" in (root / "out" / ".bidsignore").read_text().splitlines()


def test_provenance(dataset, maps):
    root, truth, _ = dataset
    prov = json.loads((root / "out" / "sub-01" / "anat" / "sub-01_provenance.json").read_text())
    assert prov["Software"]["raider-bids"] == __version__ and prov["Software"]["torch"]
    assert "--random-seed" in prov["CommandLine"] and prov["RandomSeed"] == 7
    training = prov["Configuration"]["training"]  # the fast default, recorded in full
    assert training["batch_size"] == 1024 and training["steps_per_epoch"] == 100 and prov["Device"] == "cpu"
    assert prov["Noise"]["Method"] == "model-residual"
    assert prov["Noise"]["Sigma"] == pytest.approx(float(truth["sigma"]), rel=0.1)
    assert prov["FatSpectrum"]["Name"] == "hernando"
    networks = {n["Network"]: n for n in prov["Estimation"]["Networks"]}
    assert set(networks) == {"water", "fat"}
    for history in networks.values():
        assert 1 <= history["BestEpoch"] <= history["Epochs"] == len(history["ValidationLoss"])
        assert history["BestValidationLoss"] == pytest.approx(min(history["ValidationLoss"]))
        assert history["StopReason"]
    mask = maps["mask"]
    fat_share = np.mean(maps["PDFFmap"][mask] >= 0.58)
    assert prov["Estimation"]["ShareChoosingFat"] == pytest.approx(fat_share, abs=1e-6)
    assert prov["Timings"]["EstimationSeconds"] > 0


def test_saved_weights_reproduce_the_maps(dataset, maps):
    """The weights load with weights_only=True and, fed the input signals, give the PDFF map: the
    more likely candidate wherever the LLR map is >= 0, the other where the spatial choice
    followed the neighbours (LLR < 0, equal to the candidates' NLL difference). Where the networks'
    two candidates are within the refinement's threshold (or the loser's first step would bring it
    there), each is first refined from the network's estimate as the provenance's Refinement rule says."""
    root, _, _ = dataset
    anat = root / "out" / "sub-01" / "anat"
    provenance = json.loads((anat / "sub-01_provenance.json").read_text())
    sigma, rule = provenance["Noise"]["Sigma"], provenance["Estimation"]["Details"]["Refinement"]
    echoes = np.stack([_load(p) for p in sorted((root / "bids" / "sub-01" / "anat").glob("*.nii.gz"))], -1)
    mask = maps["mask"]
    signals = echoes[mask].astype(np.float64)
    x, sig, scale = normalise(signals, sigma, torch.device("cpu"))
    candidates = {}
    for kind in ("water", "fat"):
        saved = torch.load(anat / f"sub-01_desc-{kind}_weights.pt", weights_only=True)
        acquisition = Acquisition(tuple(saved["echo_times_s"]), saved["field_strength_t"], PRESETS["hernando"])
        model = PhysicsAutoencoder(acquisition, (saved["kind"],), torch.Generator().manual_seed(0))
        model.load_state_dict(saved["state_dict"])
        assert saved["kind"] == kind
        candidates[kind] = predict(model, x, sig, scale.numpy())[0]
    close = np.abs(candidates["fat"]["nll"] - candidates["water"]["nll"]) < rule["BelowNats"]
    for kind, other in (("water", "fat"), ("fat", "water")):  # a loser the first step brings within reach
        losing = ~close & (candidates[kind]["nll"] > candidates[other]["nll"])
        start = tuple(candidates[kind][k][losing] for k in ("s0", "pdff", "r2star_s"))
        gain = gauss_newton_gain(signals[losing], acquisition, PDFF_RANGES[kind], sigma, start)
        close[losing] = candidates[kind]["nll"][losing] - gain < candidates[other]["nll"][losing] + rule["BelowNats"]
    assert close.mean() == pytest.approx(rule["RefinedShare"])
    for kind, candidate in candidates.items():
        start = tuple(candidate[k][close] for k in ("s0", "pdff", "r2star_s"))
        refined = refine_voxels(signals[close], acquisition, PDFF_RANGES[kind], sigma, start)
        candidate["pdff"][close], candidate["nll"][close] = refined.pdff, refined.loss
    llr = _load(anat / "sub-01_LLRmap.nii.gz")[mask]
    likelier_fat = candidates["fat"]["nll"] < candidates["water"]["nll"]
    chose_fat = np.where(llr >= 0, likelier_fat, ~likelier_fat)
    chosen = np.where(chose_fat, candidates["fat"]["pdff"], candidates["water"]["pdff"])
    np.testing.assert_allclose(chosen, maps["PDFFmap"][mask], atol=1e-5)
    np.testing.assert_allclose(np.abs(llr), np.abs(candidates["fat"]["nll"] - candidates["water"]["nll"]),
                               rtol=1e-4, atol=1e-3)


def _run_short(root: Path, out: str, seed: int) -> dict[str, np.ndarray]:
    code = main([str(root / "bids"), str(root / out), "participant", "--random-seed", str(seed),
                 "--max-epochs", "3", "--nprocs", "2"])
    assert code == 0
    anat = root / out / "sub-01" / "anat"
    return {s: _load(anat / f"sub-01_{s}.nii.gz") for s in ("PDFFmap", "R2starmap", "S0map", "LLRmap")}


def test_same_seed_same_maps(dataset):
    root, _, _ = dataset
    first, second, other = _run_short(root, "a", 11), _run_short(root, "b", 11), _run_short(root, "c", 12)
    for suffix in first:
        np.testing.assert_array_equal(first[suffix], second[suffix])
    assert not np.array_equal(first["PDFFmap"], other["PDFFmap"])


def test_bids_validator_accepts_the_output(dataset, bids_validator):
    root, _, _ = dataset
    bids_validator(root / "out")
