"""The group level: ROI statistics of the participant-level maps, checked against numpy on the
maps, masks and ROIs loaded here, plus its errors, its data dictionary, its report and what it
must leave untouched.

Participant outputs are made once per module (--method fit, 16x16x2 images: a few seconds); every
group-level run that needs a pristine output directory works on a copy of them."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cli_checks import assert_one_error
from raider_bids.cli import main
from raider_bids.experiments.demo import AFFINE, TISSUES, write_dataset

SHAPE = (16, 16, 2)
# One thread: the fit on 16x16x2 images is fastest so, above all on a busy machine.
PARTICIPANT = ["participant", "--method", "fit", "--random-seed", "0", "--nprocs", "1"]
COLUMNS = ["participant_id", "session_id", "run", "source", "roi", "roi_source", "map", "method", "units",
           "n_roi_voxels", "n_voxels", "mean", "median", "stdv", "p05", "p95", "mad"]
STATS = ["mean", "median", "stdv", "p05", "p95", "mad"]
MAPS = {"PDFF": "PDFFmap", "R2star": "R2starmap", "S0": "S0map"}
UNITS = {"PDFF": "fraction (0-1)", "R2star": "1/s", "S0": "arbitrary"}  # as in the maps' sidecars
LOOKUP = [(0, "background"), (1, "muscle"), (2, "liver"), (3, "steatosis"), (4, "marrow"), (5, "subcutfat"),
          (9, "kidney")]  # 9 is in no image: rows with n_voxels 0


# ---------------------------------------------------------------- helpers

def _reset_logger() -> None:
    logger = logging.getLogger("raider_bids")
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)


@pytest.fixture(scope="module", autouse=True)
def _isolate(tmp_path_factory):
    # main() may os.environ.setdefault("MPLCONFIGDIR", ...): keep it from leaking out of this module.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MPLCONFIGDIR", str(tmp_path_factory.mktemp("mpl")))
        _reset_logger()
        yield
        _reset_logger()


def run_main(*argv) -> tuple[int, str]:
    """main() in-process: (exit code, what it wrote to stderr). Works in module-scoped fixtures too,
    as main() attaches its log handler to the sys.stderr of the moment."""
    buffer = io.StringIO()
    with contextlib.redirect_stderr(buffer):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code
    return code, buffer.getvalue()


def snapshot(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def load(path: Path) -> np.ndarray:
    return np.asarray(nib.load(path).dataobj)


def save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE, dtype=np.uint8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=dtype), affine), path)


def write_roi_description(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "hand-drawn ROIs", "BIDSVersion": "1.10.0", "DatasetType": "derivative",
         "GeneratedBy": [{"Name": "Manual"}]}))


def write_lookup(path: Path, rows=LOOKUP) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("index\tname\n" + "".join(f"{i}\t{n}\n" for i, n in rows))


def read_table(out: Path) -> list[dict[str, str]]:
    text = (out / "group_roistats.tsv").read_text()
    lines = text.splitlines()
    assert lines and lines[0].split("\t") == COLUMNS, lines[:1]
    assert all(line.count("\t") == len(COLUMNS) - 1 for line in lines), "ragged TSV"
    assert "" not in (cell for line in lines for cell in line.split("\t")), "empty cell instead of n/a"
    return list(csv.DictReader(io.StringIO(text), delimiter="\t"))


def by_key(rows: list[dict[str, str]]) -> dict[tuple[str, str, str], dict[str, str]]:
    table = {(r["source"], r["roi"], r["map"]): r for r in rows}
    assert len(table) == len(rows), "more than one row for a run x ROI x map"
    return table


def expected_stats(values: np.ndarray) -> dict[str, float | None]:
    """The contract's statistics, computed here in float64."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return dict.fromkeys(STATS)
    med = np.median(x)
    return {"mean": x.mean(), "median": med, "stdv": x.std(ddof=1) if x.size > 1 else None,
            "p05": np.percentile(x, 5), "p95": np.percentile(x, 95), "mad": np.median(np.abs(x - med))}


def check_row(row: dict[str, str], anat: Path, roi: np.ndarray) -> None:
    """The row's numbers against numpy on the participant's map and mask and the given ROI."""
    values = load(anat / f"{row['source']}_{MAPS[row['map']]}.nii.gz").astype(np.float64)
    mask = load(anat / f"{row['source']}_desc-foreground_mask.nii.gz") != 0
    used = roi & mask & np.isfinite(values)
    where = (row["source"], row["roi"], row["map"])
    assert int(row["n_roi_voxels"]) == int(roi.sum()), where
    assert int(row["n_voxels"]) == int(used.sum()), where
    for stat, value in expected_stats(values[used]).items():
        if value is None:
            assert row[stat] == "n/a", (where, stat, row[stat])
        else:
            assert row[stat] != "n/a", (where, stat)
            assert float(row[stat]) == pytest.approx(value, rel=1e-5, abs=1e-6), (where, stat)


def copy_participant_outputs(template: Path, target: Path) -> Path:
    return Path(shutil.copytree(template, target))


# ---------------------------------------------------------------- dataset 1: two participants, no sessions

@pytest.fixture(scope="module")
def simple(tmp_path_factory):
    """Raw sub-01, sub-02; participant outputs in `template` (never given to the group level) and a
    default group level (foreground ROI) in `out`."""
    root = tmp_path_factory.mktemp("simple")
    truth = write_dataset(root / "bids", shape=SHAPE, snr=60, subjects=("01", "02"), seed=0)
    code, err = run_main(root / "bids", root / "template", *PARTICIPANT)
    assert code == 0, err
    raw_before = snapshot(root / "bids")
    out = copy_participant_outputs(root / "template", root / "out")
    participant_before = {k: v for k, v in snapshot(out).items() if k.startswith("sub-0")}
    code, err = run_main(root / "bids", out, "group")
    return {"root": root, "bids": root / "bids", "template": root / "template", "out": out, "code": code,
            "err": err, "truth": truth, "raw_before": raw_before, "participant_before": participant_before}


def test_default_foreground_roi(simple):
    assert simple["code"] == 0, simple["err"]
    out = simple["out"]
    table = by_key(read_table(out))
    expected = {(f"sub-{s}", "foreground", m) for s in ("01", "02") for m in MAPS}
    assert set(table) == expected
    for (source, _, m), row in table.items():
        anat = out / source / "anat"
        assert row["participant_id"] == source
        assert row["session_id"] == "n/a" and row["run"] == "n/a"
        assert row["method"] == "fit"
        assert row["units"] == UNITS[m]
        assert row["roi_source"] == f"bids::{source}/anat/{source}_desc-foreground_mask.nii.gz"
        roi = load(anat / f"{source}_desc-foreground_mask.nii.gz") != 0
        check_row(row, anat, roi)
        assert int(row["n_voxels"]) == int(roi.sum()) > 50  # the ROI is the mask: every voxel is used


def test_default_numbers_are_plausible(simple):
    """A sanity check independent of the arithmetic: the body's PDFF and R2* near the truth."""
    table = by_key(read_table(simple["out"]))
    for s in ("01", "02"):
        labels = simple["truth"][s]["labels"]
        mask = load(simple["out"] / f"sub-{s}" / "anat" / f"sub-{s}_desc-foreground_mask.nii.gz") != 0
        true_pdff = np.mean(simple["truth"][s]["PDFFmap"][mask & (labels > 0)])
        assert float(table[(f"sub-{s}", "foreground", "PDFF")]["mean"]) == pytest.approx(true_pdff, abs=0.05)
        assert 20 < float(table[(f"sub-{s}", "foreground", "R2star")]["median"]) < 100


def test_data_dictionary_covers_every_column(simple):
    dictionary = json.loads((simple["out"] / "group_roistats.json").read_text())
    assert list(dictionary) == COLUMNS or set(dictionary) == set(COLUMNS), sorted(set(dictionary) ^ set(COLUMNS))
    for column, entry in dictionary.items():
        assert isinstance(entry, dict), column
        assert isinstance(entry.get("Description"), str) and entry["Description"].strip(), column
    if "Levels" in dictionary["map"]:
        assert set(dictionary["map"]["Levels"]) == set(MAPS)


def test_group_report(simple):
    out = simple["out"]
    html = (out / "group.html").read_text()
    pages = set(re.findall(r'href="(sub-[A-Za-z0-9]+\.html)"', html))
    assert pages == {"sub-01.html", "sub-02.html"}, pages
    assert all((out / page).is_file() for page in pages)
    assert not re.search(r"https?://", html), re.search(r".{40}https?://.{40}", html)
    assert not re.search(r"<script[^>]*\bsrc\s*=", html, re.I)
    assert not re.search(r"<link[^>]*\bhref\s*=", html, re.I)
    for src in re.findall(r'<img[^>]*\bsrc="([^"]+)"', html):
        assert src.startswith("data:") or (out / src).is_file(), src
    # the method is named, and each ROI has a numeric table whose numbers are group_roistats.tsv's
    assert "fit: conventional two-start Rician maximum-likelihood fit" in html
    assert re.search(r"<title>[^<]*\bfit\b[^<]*</title>", html)
    table = read_table(out)
    section = html.split("<h2 id=\"roi-foreground\">", 1)[1].split("<h2", 1)[0]
    numbers = section.split('<table class="roistats">', 1)[1].split("</table>", 1)[0]
    for name in MAPS:
        mine = [r for r in table if r["map"] == name]
        means, medians = (np.array([float(r[c]) for r in mine]) for c in ("mean", "median"))
        q1, q3 = np.percentile(medians, [25, 75])
        cells = [name, UNITS[name], "fit", "2", f"{means.mean():.4g}", f"{means.std(ddof=1):.4g}",
                 f"{np.median(medians):.4g}", f"{q1:.4g} to {q3:.4g}", f"{medians.min():.4g} to {medians.max():.4g}"]
        assert "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>" in numbers, (name, cells, numbers)


def test_group_level_writes_nothing_into_inputs(simple):
    assert snapshot(simple["bids"]) == simple["raw_before"]
    after = {k: v for k, v in snapshot(simple["out"]).items() if k.startswith("sub-0")}
    # the group level may add figures; it never changes or removes participant outputs
    changed = {k for k, v in simple["participant_before"].items() if after.get(k) != v}
    assert not changed, changed


def test_group_is_repeatable(simple, tmp_path):
    out = copy_participant_outputs(simple["template"], tmp_path / "out")
    assert run_main(simple["bids"], out, "group")[0] == 0
    first = (out / "group_roistats.tsv").read_text()
    assert run_main(simple["bids"], out, "group")[0] == 0
    assert (out / "group_roistats.tsv").read_text() == first == (simple["out"] / "group_roistats.tsv").read_text()


def test_participant_label_selects(simple, tmp_path):
    out = copy_participant_outputs(simple["template"], tmp_path / "out")
    code, err = run_main(simple["bids"], out, "group", "--participant-label", "02")
    assert code == 0, err
    rows = read_table(out)
    assert {r["participant_id"] for r in rows} == {"sub-02"} and len(rows) == 3


def test_bids_validator_accepts_the_group_output(simple, bids_validator):
    assert simple["code"] == 0, simple["err"]
    bids_validator(simple["out"])


# ---------------------------------------------------------------- missing participant, no outputs

def test_missing_participant(simple, tmp_path):
    """sub-03 is in the raw dataset but was never processed: reported, the others summarised."""
    bids = Path(shutil.copytree(simple["bids"], tmp_path / "bids"))
    (bids / "sub-03" / "anat").mkdir(parents=True)
    for f in (bids / "sub-02" / "anat").iterdir():
        shutil.copy(f, bids / "sub-03" / "anat" / f.name.replace("sub-02", "sub-03"))
    with open(bids / "participants.tsv", "a") as handle:
        handle.write("sub-03\n")
    out = copy_participant_outputs(simple["template"], tmp_path / "out")
    code, err = run_main(bids, out, "group")
    assert code == 0, err
    assert "Traceback" not in err
    assert any("sub-03" in line and ("missing" in line or "no outputs" in line) for line in err.splitlines()), err
    rows = read_table(out)
    assert {r["participant_id"] for r in rows} == {"sub-01", "sub-02"}
    assert (out / "group_roistats.tsv").read_text() == (simple["out"] / "group_roistats.tsv").read_text()
    html = (out / "group.html").read_text()
    assert "sub-03" in html
    linked = set(re.findall(r'href="(sub-[A-Za-z0-9]+\.html)"', html))
    assert {"sub-01.html", "sub-02.html"} <= linked and all((out / page).is_file() for page in linked), linked


@pytest.mark.parametrize("prepare", ["absent", "empty", "description-only"])
def test_no_participant_outputs_exit_66(simple, tmp_path, prepare):
    out = tmp_path / "out"
    if prepare != "absent":
        out.mkdir()
    if prepare == "description-only":
        shutil.copy(simple["template"] / "dataset_description.json", out)
    code, err = run_main(simple["bids"], out, "group")
    assert code == 66, err
    assert_one_error(err)
    assert not (out / "group_roistats.tsv").exists()


# ---------------------------------------------------------------- ROI errors

def _shape_mismatch(roi: Path) -> str:
    save(roi / "sub-01" / "anat" / "sub-01_label-good_mask.nii.gz", np.ones(SHAPE))
    name = "sub-01_label-wide_mask.nii.gz"
    save(roi / "sub-01" / "anat" / name, np.ones((16, 16, 3)))
    return name


def _affine_mismatch(roi: Path) -> str:
    save(roi / "sub-02" / "anat" / "sub-02_label-good_mask.nii.gz", np.ones(SHAPE))
    shifted = AFFINE.copy()
    shifted[0, 3] += 1.8  # same shape and voxel size, one voxel along x
    name = "sub-02_label-shifted_mask.nii.gz"
    save(roi / "sub-02" / "anat" / name, np.ones(SHAPE), affine=shifted)
    return name


def _no_lookup(roi: Path) -> str:
    name = "sub-01_desc-tissues_dseg.nii.gz"
    save(roi / "sub-01" / "anat" / name, load_labels())
    return name


def _lookup_for_another_image(roi: Path) -> str:
    # A TSV exists but its entities are not a subset of the image's: it does not apply.
    write_lookup(roi / "desc-other_dseg.tsv")
    write_lookup(roi / "sub-02" / "anat" / "sub-02_desc-tissues_dseg.tsv")
    name = "sub-01_desc-tissues_dseg.nii.gz"
    save(roi / "sub-01" / "anat" / name, load_labels())
    return name


def load_labels() -> np.ndarray:
    from raider_bids.experiments.demo import make_phantom

    return make_phantom(SHAPE)


@pytest.mark.parametrize("prepare", [_shape_mismatch, _affine_mismatch, _no_lookup, _lookup_for_another_image],
                         ids=["shape", "affine", "dseg-without-tsv", "dseg-tsv-not-inherited"])
def test_roi_errors_exit_65(simple, tmp_path, prepare):
    roi = tmp_path / "roi"
    write_roi_description(roi)
    name = prepare(roi)
    roi_before = snapshot(roi)
    out = copy_participant_outputs(simple["template"], tmp_path / "out")
    code, err = run_main(simple["bids"], out, "group", "--roi-dataset", roi)
    assert code == 65, err
    assert_one_error(err, name)
    assert not (out / "group_roistats.tsv").exists() and not (out / "group_qc.tsv").exists()
    assert not list(out.rglob(".group_*")), "temporary file left behind"
    assert snapshot(roi) == roi_before


# ---------------------------------------------------------------- edge statistics on doctored maps

@pytest.fixture(scope="module")
def edges(simple, tmp_path_factory):
    """Participant outputs with non-finite values put in sub-01's R2* map, and ROIs of one voxel,
    of voxels outside the mask only, and one straddling the mask's edge."""
    root = tmp_path_factory.mktemp("edges")
    out = copy_participant_outputs(simple["template"], root / "out")
    anat = out / "sub-01" / "anat"
    mask = load(anat / "sub-01_desc-foreground_mask.nii.gz") != 0
    inside, outside = np.argwhere(mask), np.argwhere(~mask)
    path = anat / "sub-01_R2starmap.nii.gz"
    img = nib.load(path)
    r2 = np.asarray(img.dataobj, dtype=np.float32)
    poisoned = [tuple(v) for v in inside[[0, 5, 9]]]
    r2[poisoned[0]], r2[poisoned[1]], r2[poisoned[2]] = np.nan, np.inf, -np.inf
    nib.save(nib.Nifti1Image(r2, img.affine, img.header), path)
    rois = {"single": np.zeros(SHAPE, bool), "outside": np.zeros(SHAPE, bool), "edge": np.zeros(SHAPE, bool),
            "poisoned": np.zeros(SHAPE, bool)}
    rois["single"][tuple(inside[20])] = True
    rois["outside"][tuple(outside[:7].T)] = True
    rois["edge"][tuple(inside[:12].T)] = True
    rois["edge"][tuple(outside[-6:].T)] = True
    rois["poisoned"][tuple(inside[[0, 5, 9, 30]].T)] = True  # 3 non-finite + 1 finite in R2*
    roi = root / "roi"
    write_roi_description(roi)
    for name, voxels in rois.items():
        # float values, not only 1: any nonzero value is in
        save(roi / "sub-01" / "anat" / f"sub-01_label-{name}_mask.nii.gz", voxels * 2.5, dtype=np.float32)
    code, err = run_main(simple["bids"], out, "group", "--roi-dataset", roi)
    return {"out": out, "rois": rois, "code": code, "err": err}


def test_edge_statistics(edges):
    assert edges["code"] == 0, edges["err"]
    out = edges["out"]
    table = by_key(read_table(out))
    assert set(table) == {("sub-01", n, m) for n in edges["rois"] for m in MAPS}  # none for sub-02
    for (source, name, _), row in table.items():
        check_row(row, out / source / "anat", edges["rois"][name])
    single = table[("sub-01", "single", "PDFF")]
    assert single["n_voxels"] == "1" and single["stdv"] == "n/a"
    assert float(single["mad"]) == 0 and float(single["p05"]) == float(single["p95"]) == float(single["mean"])
    for m in MAPS:
        row = table[("sub-01", "outside", m)]
        assert row["n_roi_voxels"] == "7" and row["n_voxels"] == "0"
        assert all(row[s] == "n/a" for s in STATS), row
    assert table[("sub-01", "edge", "S0")]["n_roi_voxels"] == "18"
    assert table[("sub-01", "edge", "S0")]["n_voxels"] == "12"
    poisoned = table[("sub-01", "poisoned", "R2star")]
    assert poisoned["n_voxels"] == "1" and poisoned["stdv"] == "n/a" and poisoned["mean"] != "n/a"
    assert table[("sub-01", "poisoned", "PDFF")]["n_voxels"] == "4"


# ---------------------------------------------------------------- dataset 2: sessions, runs, ROI datasets

RUNS = {  # raw run prefix -> generated subject whose images it gets
    "sub-01_ses-1_run-1": "01",
    "sub-01_ses-1_run-2": "02",
    "sub-01_ses-2_run-1": "03",
    "sub-02_ses-1": "04",  # no run entity
}


def _anat(prefix: str) -> Path:
    entities = dict(part.split("-", 1) for part in prefix.split("_"))
    return Path(f"sub-{entities['sub']}") / f"ses-{entities['ses']}" / "anat"


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    root = tmp_path_factory.mktemp("sessions")
    write_dataset(root / "gen", shape=SHAPE, snr=60, subjects=tuple(RUNS.values()), seed=5)
    bids = root / "bids"
    bids.mkdir()
    for f in ("dataset_description.json", "README", "MEGRE.json"):
        shutil.copy(root / "gen" / f, bids / f)
    (bids / "participants.tsv").write_text("participant_id\nsub-01\nsub-02\n")
    for prefix, generated in RUNS.items():
        target = bids / _anat(prefix)
        target.mkdir(parents=True, exist_ok=True)
        for f in sorted((root / "gen" / f"sub-{generated}" / "anat").iterdir()):
            shutil.copy(f, target / f.name.replace(f"sub-{generated}", prefix))
    labels = load_labels()
    left = np.zeros(SHAPE, bool)
    left[:8] = True
    right = ~left
    # ROI dataset A: label masks, with names that apply to some runs only
    masks = {
        "sub-01/anat/sub-01_label-body_mask.nii.gz": labels.astype(np.float32),  # values 1-5: nonzero = in
        "sub-01/ses-1/anat/sub-01_ses-1_run-2_label-lesion_mask.nii.gz": labels == 3,
        "sub-01/ses-1/anat/sub-01_ses-1_run-01_label-padded_mask.nii.gz": left,  # run-01 == run-1
        "sub-01/ses-2/anat/sub-01_ses-2_label-second_mask.nii.gz": right,
        "sub-02/ses-1/anat/sub-02_ses-1_run-1_label-norun_mask.nii.gz": left,  # the run has no run entity
        "sub-02/anat/sub-02_acq-fast_label-acq_mask.nii.gz": left,  # the run has no acq entity
        "sub-02/anat/sub-02_space-orig_label-spaced_mask.nii.gz": labels == 1,  # space is descriptive
        "sub-03/anat/sub-03_label-nobody_mask.nii.gz": left,  # no such participant
    }
    roi_a = root / "roi-a"
    write_roi_description(roi_a)
    for rel, data in masks.items():
        save(roi_a / rel, data, dtype=np.float32)
    # ROI dataset B: one segmentation per subject, the lookup table inherited from the top level
    roi_b = root / "roi-b"
    write_roi_description(roi_b)
    write_lookup(roi_b / "desc-tissues_dseg.tsv")
    save(roi_b / "sub-01" / "anat" / "sub-01_desc-tissues_dseg.nii.gz", labels, dtype=np.int16)
    save(roi_b / "sub-02" / "ses-1" / "anat" / "sub-02_ses-1_desc-tissues_dseg.nii.gz", labels, dtype=np.int16)
    code, err = run_main(bids, root / "template", *PARTICIPANT)
    assert code == 0, err
    before = {name: snapshot(root / name) for name in ("bids", "roi-a", "roi-b")}
    out = copy_participant_outputs(root / "template", root / "out")
    code, err = run_main(bids, out, "group", "--roi-dataset", roi_a, "--roi-dataset", roi_b)
    rois = {"body": labels > 0, "lesion": labels == 3, "padded": left, "second": right, "spaced": labels == 1}
    rois |= {name: labels == index for index, name in LOOKUP if index}
    return {"root": root, "bids": bids, "out": out, "code": code, "err": err, "before": before, "rois": rois,
            "roi_a": roi_a, "roi_b": roi_b}


SEGMENT = [n for i, n in LOOKUP if i]
EXPECTED_ROIS = {
    "sub-01_ses-1_run-1": ["body", "padded", *SEGMENT],
    "sub-01_ses-1_run-2": ["body", "lesion", *SEGMENT],
    "sub-01_ses-2_run-1": ["body", "second", *SEGMENT],
    "sub-02_ses-1": ["spaced", *SEGMENT],
}


def test_roi_matching(sessions):
    assert sessions["code"] == 0, sessions["err"]
    table = by_key(read_table(sessions["out"]))
    expected = {(source, roi, m) for source, rois in EXPECTED_ROIS.items() for roi in rois for m in MAPS}
    assert set(table) == expected, (sorted(set(table) - expected), sorted(expected - set(table)))


def test_roi_rows_identify_run_and_source(sessions):
    table = by_key(read_table(sessions["out"]))
    for (source, roi, m), row in table.items():
        entities = dict(part.split("-", 1) for part in source.split("_"))
        assert row["participant_id"] == f"sub-{entities['sub']}"
        assert row["session_id"] == f"ses-{entities['ses']}"
        assert row["run"] == entities.get("run", "n/a")
        assert row["method"] == "fit" and row["units"] == UNITS[m]
    assert "sub-01_label-body_mask" in table[("sub-01_ses-1_run-2", "body", "S0")]["roi_source"]
    assert "sub-01_ses-1_run-2_label-lesion_mask" in table[("sub-01_ses-1_run-2", "lesion", "S0")]["roi_source"]
    assert "sub-01_desc-tissues_dseg" in table[("sub-01_ses-2_run-1", "liver", "PDFF")]["roi_source"]
    assert "sub-02_ses-1_desc-tissues_dseg" in table[("sub-02_ses-1", "liver", "PDFF")]["roi_source"]


def test_roi_statistics(sessions):
    out, rois = sessions["out"], sessions["rois"]
    table = by_key(read_table(out))
    for (source, roi, _), row in table.items():
        check_row(row, out / _anat(source), rois[roi])
    # runs with different data give different numbers for the same ROI
    means = {s: table[(s, "body", "R2star")]["mean"] for s in EXPECTED_ROIS if "body" in EXPECTED_ROIS[s]}
    assert len(set(means.values())) == 3, means


def test_segmentation_details(sessions):
    table = by_key(read_table(sessions["out"]))
    labels = load_labels()
    for source in EXPECTED_ROIS:
        assert not any(roi == "background" for (s, roi, _) in table if s == source)
        for m in MAPS:
            kidney = table[(source, "kidney", m)]
            assert kidney["n_roi_voxels"] == "0" and kidney["n_voxels"] == "0"
            assert all(kidney[s] == "n/a" for s in STATS), kidney
        for index, name in LOOKUP[1:-1]:
            assert int(table[(source, name, "PDFF")]["n_roi_voxels"]) == int((labels == index).sum()) > 0
    # fat tissue is fat, water tissue water: the segmentation was matched to the right labels
    for source in EXPECTED_ROIS:
        assert float(table[(source, "subcutfat", "PDFF")]["median"]) > 0.8
        assert float(table[(source, "muscle", "PDFF")]["median"]) < 0.15
        assert float(table[(source, "liver", "PDFF")]["median"]) == pytest.approx(TISSUES["liver"].pdff, abs=0.05)


def test_sessions_data_dictionary(sessions):
    dictionary = json.loads((sessions["out"] / "group_roistats.json").read_text())
    assert set(dictionary) == set(COLUMNS)


def test_session_label_selects(sessions, tmp_path):
    out = copy_participant_outputs(sessions["root"] / "template", tmp_path / "out")
    code, err = run_main(sessions["bids"], out, "group", "--session-label", "2",
                         "--roi-dataset", sessions["roi_a"])
    assert code == 0, err
    table = by_key(read_table(out))
    assert set(table) == {("sub-01_ses-2_run-1", roi, m) for roi in ("body", "second") for m in MAPS}


def test_inputs_unchanged(sessions):
    assert sessions["code"] == 0, sessions["err"]
    for name, before in sessions["before"].items():
        assert snapshot(sessions["root"] / name) == before, name


def test_sessions_report(sessions):
    out = sessions["out"]
    html = (out / "group.html").read_text()
    pages = set(re.findall(r'href="(sub-[A-Za-z0-9]+\.html)"', html))
    assert pages == {"sub-01.html", "sub-02.html"} and all((out / p).is_file() for p in pages)
    assert not re.search(r"https?://", html)


def test_bids_validator_accepts_the_sessions_output(sessions, bids_validator):
    assert sessions["code"] == 0, sessions["err"]
    bids_validator(sessions["out"])


# ---------------------------------------------------------------- matching details on dataset 1

def test_label_entities_compare_as_written(simple, tmp_path):
    """Only the run index is numeric (run-1 == run-01); sub-1 is another participant than sub-01."""
    roi = tmp_path / "roi"
    write_roi_description(roi)
    ones = np.ones(SHAPE)
    save(roi / "sub-01" / "anat" / "sub-01_label-mine_mask.nii.gz", ones)
    save(roi / "sub-1" / "anat" / "sub-1_label-unpadded_mask.nii.gz", ones)
    save(roi / "sub-002" / "anat" / "sub-002_label-padded_mask.nii.gz", ones)
    out = copy_participant_outputs(simple["template"], tmp_path / "out")
    code, err = run_main(simple["bids"], out, "group", "--roi-dataset", roi)
    assert code == 0, err
    assert {(r["source"], r["roi"]) for r in read_table(out)} == {("sub-01", "mine")}


def test_lookup_table_beside_the_image_wins(simple, tmp_path):
    """BIDS inheritance: the TSV beside the segmentation overrides a top-level one; a sub-02 image
    without its own TSV inherits the top-level one."""
    roi = tmp_path / "roi"
    write_roi_description(roi)
    labels = load_labels()
    write_lookup(roi / "desc-aseg_dseg.tsv", [(1, "toplevelone"), (5, "toplevelfive")])
    save(roi / "sub-01" / "anat" / "sub-01_desc-aseg_dseg.nii.gz", labels, dtype=np.int16)
    write_lookup(roi / "sub-01" / "anat" / "sub-01_desc-aseg_dseg.tsv", [(0, "bg"), (2, "besideliver")])
    save(roi / "sub-02" / "anat" / "sub-02_desc-aseg_dseg.nii.gz", labels, dtype=np.int16)
    out = copy_participant_outputs(simple["template"], tmp_path / "out")
    code, err = run_main(simple["bids"], out, "group", "--roi-dataset", roi)
    assert code == 0, err
    table = by_key(read_table(out))
    assert {(s, r) for s, r, _ in table} == {("sub-01", "besideliver"), ("sub-02", "toplevelone"),
                                              ("sub-02", "toplevelfive")}
    rois = {"besideliver": labels == 2, "toplevelone": labels == 1, "toplevelfive": labels == 5}
    for (source, name, _), row in table.items():
        check_row(row, out / source / "anat", rois[name])


# ---------------------------------------------------------------- quality control (issue 15)

QC_COLUMNS = ["participant_id", "session_id", "run", "source", "method", "choice_mode", "identifiability",
              "flagged", "median_snr", "unresolved_share", "median_gap_nats", "ambiguous_share", "changed_share",
              "expected_wrong_share", "refined_share", "reason", "advice"]
QC_NUMBERS = {"median_snr": "MedianSNR", "unresolved_share": "UnresolvedShare", "median_gap_nats": "MedianGapNats"}


def read_qc(out: Path) -> list[dict[str, str]]:
    text = (out / "group_qc.tsv").read_text()
    lines = text.splitlines()
    assert lines[0].split("\t") == QC_COLUMNS, lines[:1]
    assert all(line.count("\t") == len(QC_COLUMNS) - 1 for line in lines), "ragged TSV"
    assert "" not in (cell for line in lines for cell in line.split("\t")), "empty cell instead of n/a"
    return list(csv.DictReader(io.StringIO(text), delimiter="\t"))


def quality_section(out: Path) -> str:
    html = (out / "group.html").read_text()
    assert 'id="quality"' in html
    return html.split('id="quality"', 1)[1].split("<h2", 1)[0]


@pytest.fixture(scope="module")
def qc(simple, tmp_path_factory):
    """The group level on sub-01 checked reliable and sub-02 flagged unreliable (after sub-01 by
    name, so that flagged-first is not the name order)."""
    from test_reports import RELIABLE, SPATIAL, UNRELIABLE, set_quality

    out = copy_participant_outputs(simple["template"], tmp_path_factory.mktemp("qc") / "out")
    set_quality(out, "01", RELIABLE, SPATIAL, uncertainty=True)
    # sub-02's record predates the expected wrong-side share
    before = {k: v for k, v in SPATIAL.items() if k != "ExpectedWrongShare"}
    set_quality(out, "02", UNRELIABLE, {**before, "Mode": "voxel", "ChangedShare": 0.0}, uncertainty=True)
    code, err = run_main(simple["bids"], out, "group")
    return {"out": out, "code": code, "err": err, "records": {"sub-01": RELIABLE, "sub-02": UNRELIABLE}}


def test_qc_table_has_one_row_per_run_from_its_provenance(qc):
    assert qc["code"] == 0, qc["err"]
    rows = read_qc(qc["out"])
    assert [r["source"] for r in rows] == ["sub-01", "sub-02"]
    for row in rows:
        record = qc["records"][row["source"]]
        assert row["participant_id"] == row["source"] and row["session_id"] == "n/a" and row["run"] == "n/a"
        assert row["method"] == "fit"
        assert row["identifiability"] == record["Verdict"]
        for column, key in QC_NUMBERS.items():
            assert float(row[column]) == pytest.approx(record[key]), column
        assert float(row["ambiguous_share"]) == pytest.approx(0.123)
        assert row["refined_share"] == "n/a"  # the fit trains nothing, so nothing is refined
    reliable, flagged = rows
    assert reliable["flagged"] == "false" and reliable["reason"] == reliable["advice"] == "n/a"
    assert reliable["choice_mode"] == "spatial" and float(reliable["changed_share"]) == pytest.approx(0.0456)
    assert float(reliable["expected_wrong_share"]) == pytest.approx(0.0789)
    assert flagged["expected_wrong_share"] == "n/a"
    assert flagged["flagged"] == "true" and flagged["reason"] == qc["records"]["sub-02"]["Reason"]
    assert flagged["advice"] == qc["records"]["sub-02"]["Advice"]
    assert flagged["choice_mode"] == "voxel" and float(flagged["changed_share"]) == 0
    assert re.search(r"sub-02.*unreliable", qc["err"]), qc["err"]  # the log says so too


def test_qc_data_dictionary_describes_every_column(qc):
    dictionary = json.loads((qc["out"] / "group_qc.json").read_text())
    assert set(dictionary) == set(QC_COLUMNS), sorted(set(dictionary) ^ set(QC_COLUMNS))
    for column, entry in dictionary.items():
        assert isinstance(entry.get("Description"), str) and entry["Description"].strip(), column
    for column in ("median_snr", "unresolved_share", "median_gap_nats", "ambiguous_share", "changed_share",
                   "expected_wrong_share", "refined_share"):
        assert dictionary[column].get("Units"), column
    for row in read_qc(qc["out"]):  # every categorical value written is a documented level
        for column in ("method", "choice_mode", "identifiability", "flagged"):
            assert row[column] in dictionary[column]["Levels"], (column, row[column])


def test_group_page_lists_flagged_runs_first_with_their_reasons(qc):
    section = quality_section(qc["out"])
    assert section.index("sub-02") < section.index("sub-01")
    assert qc["records"]["sub-02"]["Reason"] in section and qc["records"]["sub-02"]["Advice"] in section
    assert "1 of 2 run(s) flagged" in section
    assert 'href="group_qc.tsv"' in section and 'href="group_qc.json"' in section
    assert 'href="sub-02.html#sub-02"' in section  # to the run's section on its participant page


def test_a_run_written_before_the_check_is_not_flagged(simple, tmp_path):
    from test_reports import set_quality

    out = copy_participant_outputs(simple["template"], tmp_path / "out")
    set_quality(out, "01", None, None, uncertainty=False, old=True)
    code, err = run_main(simple["bids"], out, "group")
    assert code == 0, err
    old = next(r for r in read_qc(out) if r["source"] == "sub-01")
    assert old["flagged"] == "false"
    for column in ("identifiability", "choice_mode", *QC_NUMBERS, "ambiguous_share", "changed_share",
                   "expected_wrong_share", "refined_share", "reason"):
        assert old[column] == "n/a", column
    section = quality_section(out)
    assert "not checked" in section and "unreliable" not in section.replace("No run flagged", "")
