"""The HTML reports: self-contained pages whose figures exist and whose numbers come from the outputs."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from raider_bids.cli import main
from raider_bids.experiments.demo import write_dataset, write_roi_dataset
from raider_bids.reports.pages import MAX_SLICES, _slices

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links, self.external = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "a" and not attrs.get("href", "").startswith("#"):
            self.links.append(attrs["href"])
        if tag in ("script", "link", "iframe") or any(str(v).startswith(("http:", "https:", "//"))
                                                        for v in attrs.values() if v):
            self.external.append((tag, attrs))


def _parse(page: Path) -> _Links:
    parser = _Links()
    parser.feed(page.read_text())
    return parser


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("reports")
    truths = write_dataset(root / "bids", shape=(16, 16, 3), subjects=("01", "02", "03"), seed=5)
    write_roi_dataset(root / "rois", truths)
    base = [str(root / "bids"), str(root / "out")]
    assert main(base + ["participant", "--participant-label", "01", "--max-epochs", "4", "--nprocs", "2"]) == 0
    assert main(base + ["participant", "--participant-label", "02", "--method", "fit"]) == 0
    assert main(base + ["group", "--roi-dataset", str(root / "rois")]) == 0
    return root / "out"


@pytest.mark.parametrize("page", ["sub-01.html", "sub-02.html", "group.html"])
def test_pages_are_self_contained_and_their_figures_exist(outputs, page):
    parsed = _parse(outputs / page)
    assert parsed.external == []
    assert parsed.images
    for src in parsed.images:
        assert (outputs / src).read_bytes()[:8] == PNG_MAGIC, src
    for href in parsed.links:
        target, _, anchor = href.partition("#")
        assert (outputs / target).is_file(), href
        if anchor:
            assert f'id="{anchor}"' in (outputs / target).read_text(), href


def test_participant_page_shows_every_map_training_and_provenance(outputs):
    text = (outputs / "sub-01.html").read_text()
    images = _parse(outputs / "sub-01.html").images
    for key in ("echo1", "PDFFmap", "R2starmap", "S0map", "confidence", "training", "histograms"):
        assert f"sub-01/figures/sub-01_{key}.png" in images, key
    provenance = json.loads((outputs / "sub-01" / "anat" / "sub-01_provenance.json").read_text())
    assert f"{provenance['Noise']['Sigma']:.4g}" in text
    for net in provenance["Estimation"]["Networks"]:
        assert f"Network {net['Network']}" in text and f"{net['Epochs']} epochs" in text
    assert provenance["Software"]["torch"] in text


def test_methods_without_networks_say_so(outputs):
    text = (outputs / "sub-02.html").read_text()
    assert "No training curves" in text
    assert "sub-02/figures/sub-02_training.png" not in text
    assert "sub-02/figures/sub-02_confidence.png" in text  # the fit has two candidates too


def test_group_page_links_participants_and_lists_the_missing_one(outputs):
    text = (outputs / "group.html").read_text()
    links = _parse(outputs / "group.html").links
    assert {"sub-01.html", "sub-02.html", "group_roistats.tsv", "group_roistats.json"} <= set(links)
    assert re.search(r"sub-03: missing", text)
    assert "sub-03.html" not in links
    for tissue in ("muscle", "liver", "steatosis", "marrow", "subcutaneous-fat"):
        assert f"ROI {tissue}" in text


def test_slices_cover_the_foreground_only():
    mask = np.zeros((20, 4, 4), dtype=bool)  # displayed slices first (View.stack)
    mask[5:15, 1:3, 1:3] = True
    picked = _slices(mask)
    assert len(picked) == MAX_SLICES
    assert picked[0] == 5 and picked[-1] == 14
    assert all(mask[z].any() for z in picked)
    assert _slices(np.zeros((3, 2, 2), dtype=bool)) == [0, 1, 2]



def test_a_figure_that_cannot_be_drawn_leaves_a_note_not_a_failure(tmp_path, monkeypatch, capsys):
    """Extreme values (float32's largest, as a broken upstream tool might leave) in a map, and a
    plotting error, never fail a level: the table and pages are written, with a note for the figure."""
    import nibabel as nib

    from raider_bids.reports import pages

    write_dataset(tmp_path / "bids", shape=(16, 16, 2), subjects=("01",), seed=1)
    base = [str(tmp_path / "bids"), str(tmp_path / "out")]
    assert main(base + ["participant", "--method", "fit"]) == 0
    path = tmp_path / "out" / "sub-01" / "anat" / "sub-01_R2starmap.nii.gz"
    img = nib.load(path)
    data = np.asarray(img.dataobj)
    data[data > np.median(data[data > 0])] = np.finfo(np.float32).max
    nib.save(nib.Nifti1Image(data, img.affine, img.header), path)

    def broken(*args, **kwargs):
        raise ValueError("cannot draw this")

    monkeypatch.setattr(pages, "roi_figure", broken)
    assert main(base + ["group"]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "figure not drawn" in err
    assert "3.4028235e+38" in (tmp_path / "out" / "group_roistats.tsv").read_text()
    page = tmp_path / "out" / "group.html"
    assert "could not be drawn (cannot draw this)" in page.read_text()
    for src in _parse(page).images:
        assert (tmp_path / "out" / src).read_bytes()[:8] == PNG_MAGIC


# ---------------------------------------------------------------- quality control and uncertainty (issue 15)

UNCERTAINTY = ("SideProbmap", "PDFFsdmap", "R2starsdmap")
UNRELIABLE = {"Verdict": "unreliable", "MedianSNR": 7.25, "UnresolvedShare": 0.625, "MedianGapNats": 0.4,
              "Reason": "three echoes closely spaced at 1.5 T cannot separate water from fat",
              "Advice": "acquire at least six echoes spaced by about 1.2 ms", "Details": {}}
RELIABLE = {"Verdict": "reliable", "MedianSNR": 61.5, "UnresolvedShare": 0.0, "MedianGapNats": 42.0,
            "Reason": "", "Advice": "", "Details": {}}
SPATIAL = {"Mode": "spatial", "AmbiguousShare": 0.123, "ChangedShare": 0.0456, "ExpectedWrongShare": 0.0789,
           "Details": {}}


def set_quality(out: Path, subject: str, identifiability: dict | None, choice: dict | None,
                uncertainty: bool, old: bool = False) -> None:
    """Make sub-<subject>'s finished run look as the participant level of schema 3 writes it (the
    given identifiability and choice records, uncertainty maps if asked), or, with `old`, as
    schema 2 wrote it: no identifiability or choice record, no uncertainty maps listed or on disk."""
    import nibabel as nib

    anat = out / f"sub-{subject}" / "anat"
    path = anat / f"sub-{subject}_provenance.json"
    record = json.loads(path.read_text())
    record["Identifiability"] = None if old else identifiability
    for method in [record["Estimation"], *record.get("Methods", {}).values()]:
        method["Choice"] = None if old else choice
    if old:
        record["SchemaVersion"] = 2
    for key in [k for k in record["Outputs"] if k.split("-")[0] in UNCERTAINTY]:
        image = anat / record["Outputs"].pop(key)
        image.unlink(missing_ok=True)
        image.with_name(image.name.replace(".nii.gz", ".json")).unlink(missing_ok=True)
    mask_img = nib.load(anat / f"sub-{subject}_desc-foreground_mask.nii.gz")
    mask = np.asarray(mask_img.dataobj) > 0
    rng = np.random.default_rng(int(subject))
    values = {"SideProbmap": rng.uniform(0.5, 1.0, mask.shape), "PDFFsdmap": rng.gamma(2.0, 0.01, mask.shape),
              "R2starsdmap": rng.gamma(2.0, 3.0, mask.shape)}
    for suffix in UNCERTAINTY:
        target = anat / f"sub-{subject}_{suffix}.nii.gz"
        target.unlink(missing_ok=True)
        if uncertainty and not old:
            nib.save(nib.Nifti1Image(np.where(mask, values[suffix], 0).astype(np.float32), mask_img.affine), target)
            record["Outputs"][suffix] = target.name
    path.write_text(json.dumps(record, indent=2))


class _Banners(HTMLParser):
    """The text of each element of class 'banner', and the images that come before the first banner."""

    def __init__(self):
        super().__init__()
        self.banners, self.images_before, self._depth = [], 0, 0

    def handle_starttag(self, tag, attrs):
        if self._depth:
            self._depth += 1
        elif "banner" in (dict(attrs).get("class") or "").split():
            self.banners.append("")
            self._depth = 1
        elif tag == "img" and not self.banners:
            self.images_before += 1

    def handle_endtag(self, tag):
        self._depth = max(0, self._depth - 1)

    def handle_data(self, data):
        if self._depth:
            self.banners[-1] += data


def _banners(page: Path) -> _Banners:
    parser = _Banners()
    parser.feed(page.read_text())
    return parser


@pytest.fixture(scope="module")
def quality_pages(tmp_path_factory):
    """Three runs' reports: sub-01 flagged unreliable, sub-02 reliable (both with the uncertainty
    maps), sub-03 as written before schema 3."""
    from raider_bids.bids_io.derivatives import DerivativesDataset
    from raider_bids.reports.pages import participant_report

    root = tmp_path_factory.mktemp("quality")
    write_dataset(root / "bids", shape=(16, 16, 2), subjects=("01", "02", "03"), seed=3)
    assert main([str(root / "bids"), str(root / "out"), "participant", "--method", "fit", "--nprocs", "1"]) == 0
    out = root / "out"
    set_quality(out, "01", UNRELIABLE, SPATIAL, uncertainty=True)
    set_quality(out, "02", RELIABLE, SPATIAL, uncertainty=True)
    set_quality(out, "03", None, None, uncertainty=False, old=True)
    dataset = DerivativesDataset(out)
    for subject in ("01", "02", "03"):
        run = dataset.subject_outputs(subject)
        assert run.finished, run.missing
        participant_report(dataset, subject, [run], root / "bids")
    return out


def test_a_flagged_run_has_a_banner_with_its_reason_and_advice(quality_pages):
    page = quality_pages / "sub-01.html"
    parsed = _banners(page)
    # one for the page, one at the top of the run's section, both before any figure
    assert len(parsed.banners) == 2 and parsed.images_before == 0, parsed.banners
    for text in parsed.banners:
        assert "unreliable" in text and UNRELIABLE["Reason"] in text, text
    assert UNRELIABLE["Advice"] in parsed.banners[1]
    section = page.read_text().split('<h2 id="sub-01">', 1)[1]
    assert 'class="banner"' in section.split("<img", 1)[0]
    assert 'href="#sub-01"' in page.read_text().split('<h2 id="sub-01">', 1)[0]  # the page banner links the run


@pytest.mark.parametrize("subject", ["02", "03"], ids=["reliable", "old-provenance"])
def test_no_banner_for_a_reliable_or_unchecked_run(quality_pages, subject):
    page = quality_pages / f"sub-{subject}.html"
    assert _banners(page).banners == []
    assert "unreliable" not in page.read_text()
    images = _parse(page).images
    for key in ("PDFFmap", "R2starmap", "S0map", "histograms"):  # the page is otherwise as it was
        assert f"sub-{subject}/figures/sub-{subject}_{key}.png" in images, key


def _quality_table(page: Path) -> str:
    return page.read_text().split("<h3>Quality control</h3>", 1)[1].split("<img", 1)[0]


def test_the_quality_table_shows_the_recorded_check_and_choice(quality_pages):
    table = _quality_table(quality_pages / "sub-01.html")
    for expected in ("unreliable", "7.25", "62.5%", "spatial", "12.3%", "4.6%", "fit"):
        assert expected in table, expected
    table = _quality_table(quality_pages / "sub-02.html")
    assert "reliable" in table and "61.5" in table and "unreliable" not in table
    old = _quality_table(quality_pages / "sub-03.html")
    assert "not checked" in old and "not recorded" in old


def test_uncertainty_figures_are_drawn_when_the_maps_exist(quality_pages):
    for subject in ("01", "02"):
        images = _parse(quality_pages / f"sub-{subject}.html").images
        for key in UNCERTAINTY:
            src = f"sub-{subject}/figures/sub-{subject}_{key}.png"
            assert src in images, src
            assert (quality_pages / src).read_bytes()[:8] == PNG_MAGIC
    images = _parse(quality_pages / "sub-03.html").images
    assert not [src for src in images if any(key in src for key in UNCERTAINTY)], images


def test_uncertainty_colour_ranges_and_units():
    from raider_bids.reports.figures import PANELS, colour_limits, mosaic

    rng = np.random.default_rng(0)
    assert colour_limits("SideProbmap", rng.uniform(0.2, 1.0, 1000)) == (0.5, 1.0)
    # fixed, whatever the values: a near-degenerate voxel's bound is huge (or infinite)
    for sd in (np.concatenate([rng.uniform(0, 0.05, 1000), [np.inf, 40.0] * 50]), rng.uniform(0, 0.05, 1000)):
        assert colour_limits("PDFFsdmap", sd) == (0.0, 0.2)
    r2 = np.concatenate([rng.uniform(0, 10, 10000), [np.inf, np.nan, 1e6]])
    assert colour_limits("R2starsdmap", r2) == (0.0, 10.0)  # the outliers do not wash the map out
    volume = rng.uniform(0, 10, (2, 8, 8))
    for key, units in (("R2starsdmap", "1/s"), ("SideProbmap", "probability"), ("PDFFsdmap", "fraction")):
        title, cmap, label = PANELS[key]
        fig = mosaic(volume, [0, 1], title, cmap, colour_limits(key, volume), None, label)
        assert units in fig.axes[-1].get_ylabel(), (key, fig.axes[-1].get_ylabel())


def test_r2star_colour_range_holds_an_iron_loaded_liver_in_fixed_steps():
    """Typical tissue (R2* 20-80 1/s) is drawn on 0-250 1/s; a liver at 1000 1/s filling a fifth of
    the mask moves the scale to 0-2000, so the liver is not clipped; a few outliers do not."""
    from raider_bids.reports.figures import colour_limits

    rng = np.random.default_rng(0)
    tissue = rng.uniform(20, 80, 8000)
    assert colour_limits("R2starmap", tissue) == (0.0, 250.0)
    assert colour_limits("R2starmap", np.concatenate([tissue, [1900.0] * 10])) == (0.0, 250.0)
    assert colour_limits("R2starmap", np.concatenate([tissue, rng.uniform(300, 400, 1000)])) == (0.0, 500.0)
    liver = rng.normal(1000, 30, 2000).clip(900, 1080)
    low, high = colour_limits("R2starmap", np.concatenate([tissue, liver]))
    assert low == 0 and high >= liver.max() and high in (1000.0, 2000.0)
    assert colour_limits("R2starmap", np.concatenate([tissue, rng.uniform(1800, 2000, 3000)])) == (0.0, 2000.0)


def test_a_qc_row_keeps_free_text_in_one_cell():
    from raider_bids.provenance import IdentifiabilityRecord
    from raider_bids.reports.quality import QC_COLUMNS, RunQuality

    check = IdentifiabilityRecord("unreliable", 5.0, 0.5, 0.1, "two\techoes\nonly", "")
    row = RunQuality("sub-01_run-2", {"sub": "01", "run": "2"}, check, {"single": None}).row()
    assert list(row) == QC_COLUMNS
    assert row["reason"] == "two echoes only" and row["advice"] is None  # a tab would split the TSV row
    assert row["flagged"] == "true" and row["run"] == "2" and row["choice_mode"] is None


# ---------------------------------------------------------------- pages that compare: ranges, methods, group table

def test_colour_ranges_are_the_same_for_runs_with_different_data():
    """Two runs whose values differ get PDFF 0-1 and one R2* range while both stay below its first
    step (250 1/s), whatever their own maxima; S0 ends at a 1/2/5 x 10^k step, shared by runs of
    similar intensity; identical data give identical ranges."""
    from raider_bids.reports.figures import colour_limits

    rng = np.random.default_rng(1)
    first = {"PDFFmap": rng.uniform(0, 0.3, 5000), "R2starmap": rng.uniform(20, 90, 5000),
             "S0map": rng.uniform(50, 130, 5000)}
    second = {"PDFFmap": rng.uniform(0.4, 0.95, 5000), "R2starmap": rng.uniform(10, 230, 5000),
              "S0map": rng.uniform(20, 190, 5000)}
    for key in ("PDFFmap", "R2starmap", "S0map"):
        assert colour_limits(key, first[key]) == colour_limits(key, second[key]), key
        assert colour_limits(key, first[key]) == colour_limits(key, first[key].copy()), key
    assert colour_limits("PDFFmap", first["PDFFmap"]) == (0.0, 1.0)
    assert colour_limits("R2starmap", first["R2starmap"]) == (0.0, 250.0)
    assert colour_limits("S0map", first["S0map"]) == (0.0, 200.0)
    # another scanner's units: 0.22 rounds up to 0.5, 1480 to 2000
    assert colour_limits("S0map", rng.uniform(0.1, 0.22, 1000)) == (0.0, 0.5)
    assert colour_limits("S0map", rng.uniform(100, 1480, 100000)) == (0.0, 2000.0)


@pytest.mark.parametrize("value, step", [(0.222, 0.5), (148.3, 200.0), (100.0, 100.0), (100.01, 200.0),
                                         (0.05, 0.05), (0.0501, 0.1), (4.9, 5.0), (7.0, 10.0), (1e-7, 1e-7),
                                         (0.0, 1.0), (np.nan, 1.0)])
def test_nice_ceiling(value, step):
    from raider_bids.reports.figures import nice_ceiling

    assert nice_ceiling(value) == step


def _text(page: Path) -> str:
    """A page's text without tags, entities resolved (what a reader sees)."""
    import html as html_lib

    return html_lib.unescape(re.sub(r"<[^>]+>", " ", page.read_text()))


def test_every_map_states_its_colour_range_rule(outputs):
    from raider_bids.reports.figures import RANGE_RULES

    text = " ".join(_text(outputs / "sub-01.html").split())
    for key in ("echo1", "PDFFmap", "R2starmap", "S0map", "confidence"):
        assert RANGE_RULES[key] in text, key
    assert "Colour range 0 to 1 fraction" in text  # PDFF, fixed
    assert re.search(r"Colour range 0 to (250|500|1000|2000|3000) 1/s", text)
    assert "250" in RANGE_RULES["R2starmap"] and "99th percentile" in RANGE_RULES["S0map"]
    # the orientation is stated too
    assert "Axial slices seen from the feet (radiological view)" in text


def test_the_method_is_in_the_participant_pages_title_and_figures(outputs):
    from raider_bids.config import METHODS

    for subject, method in (("01", "ssl"), ("02", "fit")):
        page = (outputs / f"sub-{subject}.html").read_text()
        label = f"{method}: {METHODS[method].summary}"
        title = re.search(r"<title>(.*?)</title>", page).group(1)
        assert label in _text_of(title), title
        assert label in _text_of(re.search(r"<h1>(.*?)</h1>", page).group(1))
        alts = re.findall(r'<img src="[^"]*_(PDFFmap|R2starmap|S0map|histograms)\.png" alt="([^"]*)"', page)
        assert len(alts) == 4 and all(label in _text_of(alt) for _, alt in alts), alts


def _text_of(fragment: str) -> str:
    import html as html_lib

    return html_lib.unescape(fragment)


class _Tables(HTMLParser):
    """The cells of each <table class="roistats">, by the <h2> heading above it."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._heading, self._in_heading, self._table, self._cell = "", False, None, None

    def handle_starttag(self, tag, attrs):
        if tag == "h2":
            self._in_heading, self._heading = True, ""
        elif tag == "table" and dict(attrs).get("class") == "roistats":
            self._table = self.tables.setdefault(self._heading, [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = ""

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in_heading = False
        elif tag == "table":
            self._table = None
        elif tag in ("td", "th") and self._table is not None and self._cell is not None:
            self._table[-1].append(self._cell.strip())
            self._cell = None

    def handle_data(self, data):
        if self._in_heading:
            self._heading += data
        if self._cell is not None:
            self._cell += data


def roistats_tables(page: Path) -> dict[str, list[dict[str, str]]]:
    """The group page's per-ROI numeric tables: ROI heading -> rows as header -> cell."""
    parser = _Tables()
    parser.feed(page.read_text())
    return {heading: [dict(zip(rows[0], row)) for row in rows[1:]] for heading, rows in parser.tables.items()}


def expected_across_runs(tsv: Path) -> dict[tuple[str, str, str], dict[str, str]]:
    """From group_roistats.tsv, per (roi, map, method): the across-run statistics as the page
    should print them (4 significant digits), computed here with numpy."""
    import csv

    with open(tsv, newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["roi"], r["map"], r["method"]), []).append(r)
    g = "{:.4g}".format
    expected = {}
    for key, members in groups.items():
        used = [r for r in members if r["median"] != "n/a"]
        means = np.array([float(r["mean"]) for r in used])
        medians = np.array([float(r["median"]) for r in used])
        if not used:
            expected[key] = {"Runs": "0"}
            continue
        q1, q3 = np.percentile(medians, [25, 75])
        expected[key] = {"Runs": str(len(used)), "Mean of run means": g(means.mean()),
                         "SD of run means": g(means.std(ddof=1)) if len(used) > 1 else "n/a",
                         "Median of run medians": g(np.median(medians)),
                         "IQR of run medians": f"{g(q1)} to {g(q3)}",
                         "Range of run medians": f"{g(medians.min())} to {g(medians.max())}"}
    return expected


def test_group_page_names_methods_and_tabulates_group_roistats(outputs):
    page = outputs / "group.html"
    text = page.read_text()
    title = _text_of(re.search(r"<title>(.*?)</title>", text).group(1))
    assert "ssl" in title and "fit" in title, title
    reader = _text(page)
    assert "ssl: the paper's dual self-supervised networks" in reader and "fit: conventional" in reader
    tables = roistats_tables(page)
    expected = expected_across_runs(outputs / "group_roistats.tsv")
    assert {roi for roi, _, _ in expected} == {h.removeprefix("ROI ") for h in tables}
    seen = set()
    for heading, rows in tables.items():
        roi = heading.removeprefix("ROI ")
        for row in rows:
            key = (roi, row["Map"], row["Method"])
            assert key in expected, key
            for column, value in expected[key].items():
                assert row[column] == value, (key, column, row[column], value)
            seen.add(key)
    assert seen == set(expected)
    assert {method for _, _, method in seen} == {"ssl", "fit"}


def test_a_two_dimensional_echo_is_read_as_one_slice(tmp_path):
    """A scanner's 2-D NIfTI (ndim 2) is read as one slice, as the echoes are, so the report draws
    its first echo on the mask's grid rather than warning that it is off the grid."""
    import nibabel as nib

    from raider_bids.reports.pages import _Loader, _read

    plane = np.arange(12.0).reshape(3, 4)
    nib.save(nib.Nifti1Image(plane, np.eye(4)), tmp_path / "echo.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((3, 4, 1), np.uint8), np.eye(4)), tmp_path / "mask.nii.gz")
    data, _ = _read(tmp_path / "echo.nii.gz")
    assert data.shape == (3, 4, 1)
    np.testing.assert_array_equal(data[..., 0], plane)
    loader = _Loader(tmp_path / "mask.nii.gz")
    np.testing.assert_array_equal(loader.load(tmp_path / "echo.nii.gz"), loader.view.stack(plane[..., None]))
