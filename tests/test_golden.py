"""Maps, sidecars and provenance of a run are those the code made before the layered layout
(issue 14): tests/golden/ holds what commit ab4dcf0 wrote for the calls of tests/golden/record.py,
for ssl, fit, supervised and single in one call, and for the fit with a user's mask, fat
spectrum and sigma. The same calls are made here and every output compared with it.

Issue 15 added outputs and records; the calls are made with the per-voxel choice (--choice voxel,
the only one then), what issue 15 added is set aside (ADDED) and the rest must be as recorded."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

from raider_bids.provenance import Provenance

GOLDEN = Path(__file__).parent / "golden"
sys.path.insert(0, str(GOLDEN))
import record  # noqa: E402

PROVENANCE = "sub-01/anat/sub-01_provenance.json"
# Issue 15: the uncertainty maps, the identifiability and choice records, a clause of the LLR
# sidecar's description; README and .bidsignore gained lines.
ADDED = {"suffixes": ("SideProbmap", "PDFFsdmap", "R2starsdmap"), "records": ("Identifiability",),
         "method records": ("Choice",), "options": ("choice",),
         "LLR clause": "negative where the spatial choice followed the neighbours against the voxel's own data; "}
ISSUE_15_CALL = ("--choice", "voxel")
# What differs between any two calls: where and when they ran, how long they took.
VOLATILE = ("Software", "CommandLine", "InputFiles", "OptionFiles", "Timings", "SchemaVersion")


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """What today's code writes for each call: (arrays, JSON contents, texts) per call."""
    root = tmp_path_factory.mktemp("golden")
    inputs = record.write_inputs(root)
    manifest = json.loads((GOLDEN / "manifest.json").read_text())
    assert record.input_hash(inputs["bids"]) == manifest["InputHash"], "the synthetic dataset changed"
    return root, {name: _set_aside(*record.collect(out))
                  for name, out in record.run_calls(root, inputs, ISSUE_15_CALL).items()}


def _added(name: str) -> bool:
    return any(f"_{suffix}." in name or name.endswith(f"_{suffix}") for suffix in ADDED["suffixes"])


def _set_aside(arrays: dict, jsons: dict, texts: dict) -> tuple[dict, dict, dict]:
    """Today's outputs without what issue 15 added (each added map is there, for every method)."""
    added = [k for k in arrays if _added(k)]
    assert added and all(k.replace(".nii.gz", ".json") in jsons for k in added)
    arrays = {k: v for k, v in arrays.items() if k not in added}
    jsons = {k: v for k, v in jsons.items() if not _added(k)}
    for key, value in jsons.items():
        if key.endswith("LLRmap.json"):
            assert ADDED["LLR clause"] in value["Description"]
            value["Description"] = value["Description"].replace(ADDED["LLR clause"], "")
    return arrays, jsons, texts


def _golden(name: str):
    stored = json.loads((GOLDEN / f"{name}.json").read_text())
    with np.load(GOLDEN / f"{name}.npz") as arrays:
        return dict(arrays), stored["json"], stored["text"]


def _comparable(provenance: dict, root: str) -> dict:
    """A provenance record through today's reader, without what differs between calls; paths
    relative to the call's temporary directory."""
    record_ = Provenance.from_json(provenance).to_json()
    for key in VOLATILE + ADDED["records"]:
        record_.pop(key, None)
    record_["Outputs"] = {k: v for k, v in record_["Outputs"].items() if not _added(v)}
    for key in ADDED["options"]:
        record_["Configuration"].pop(key, None)
    command = record_["Configuration"]["command_line"]
    if tuple(command[-len(ISSUE_15_CALL):]) == ISSUE_15_CALL:
        del command[-len(ISSUE_15_CALL):]
    for estimation in [record_["Estimation"], *record_.get("Methods", {}).values()]:
        for key in ADDED["method records"]:
            estimation.pop(key, None)
        estimation["Seconds"] = None
        for network in estimation["Networks"]:
            network["Seconds"] = None
    return _relocated(record_, root)


def _relocated(value, root: str):
    """`value` with the call's temporary directory in every string written as ROOT."""
    if isinstance(value, dict):
        return {k: _relocated(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_relocated(v, root) for v in value]
    return value.replace(root, "ROOT") if isinstance(value, str) else value


@pytest.mark.parametrize("call", list(record.CALLS))
def test_maps_and_weights_are_the_recorded_ones(made, call):
    arrays, _, _ = made[1][call]
    golden, _, _ = _golden(call)
    assert sorted(arrays) == sorted(golden)
    for key, expected in golden.items():
        # The same code paths on the same library versions: the same bits (the recorded ones
        # were made twice, identically). A last-bit tolerance covers other CPUs' kernels.
        np.testing.assert_allclose(arrays[key], expected, rtol=1e-6, atol=1e-7, err_msg=key)


@pytest.mark.parametrize("call", list(record.CALLS))
def test_sidecars_and_top_level_files_are_the_recorded_ones(made, call):
    _, jsons, texts = made[1][call]
    _, golden_jsons, golden_texts = _golden(call)
    assert sorted(texts) == sorted(golden_texts)
    for key, expected in golden_texts.items():  # lines were added, none changed or removed
        lines = iter(texts[key].splitlines())
        assert all(line in lines for line in expected.splitlines()), key
    assert sorted(jsons) == sorted(golden_jsons)
    root, golden_root = str(made[0]), json.loads((GOLDEN / "manifest.json").read_text())["Root"]
    for key, expected in golden_jsons.items():
        if key != PROVENANCE:
            assert _relocated(jsons[key], root) == _relocated(expected, golden_root), key


@pytest.mark.parametrize("call", list(record.CALLS))
def test_provenance_holds_the_recorded_values_and_old_records_still_read(made, call):
    """The old file (schema without a version) read by today's reader equals today's record,
    but for times and paths; every value recorded then is recorded now."""
    _, jsons, _ = made[1][call]
    _, golden_jsons, _ = _golden(call)
    golden_root = json.loads((GOLDEN / "manifest.json").read_text())["Root"]
    old, new = golden_jsons[PROVENANCE], jsons[PROVENANCE]
    assert "SchemaVersion" not in old and new["SchemaVersion"] == 3
    assert Provenance.from_json(new).to_json() == new  # the one reader reads what the one writer wrote
    old_record, new_record = _comparable(old, golden_root), _comparable(new, str(made[0]))
    # Version 1 recorded the method's reference for supervised only; version 2 for every method.
    for name, estimation in [("Estimation", old_record["Estimation"]), *old_record.get("Methods", {}).items()]:
        if estimation["Reference"] == "":
            new_estimation = new_record["Estimation"] if name == "Estimation" else new_record["Methods"][name]
            assert new_estimation["Reference"]
            estimation["Reference"] = new_estimation["Reference"]
    assert _close(old_record, new_record), json.dumps([old_record, new_record], indent=1)[:4000]


def test_every_method_records_the_same_keys(made):
    _, jsons, _ = made[1]["all-methods"]
    records = jsons[PROVENANCE]["Methods"]
    assert list(records) == ["ssl", "fit", "supervised", "single"]
    keys = {name: sorted(r) for name, r in records.items()}
    assert all(k == keys["ssl"] for k in keys.values()), keys
    assert records["single"]["ShareChoosingFat"] == pytest.approx(
        float((made[1]["all-methods"][0]["sub-01/anat/sub-01_desc-single_PDFFmap.nii.gz"] >= 0.58)[
            made[1]["all-methods"][0]["sub-01/anat/sub-01_desc-foreground_mask.nii.gz"] > 0].mean()))


def _close(a, b) -> bool:
    """Equal, floats to a relative 1e-6 (losses summed by other CPUs' kernels)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, (int, float)) and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9) or (math.isnan(a) and math.isnan(b))
    return a == b
