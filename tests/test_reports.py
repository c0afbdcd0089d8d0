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
    mask = np.zeros((4, 4, 20), dtype=bool)
    mask[1:3, 1:3, 5:15] = True
    picked = _slices(mask)
    assert len(picked) == MAX_SLICES
    assert picked[0] == 5 and picked[-1] == 14
    assert all(mask[:, :, z].any() for z in picked)
    assert _slices(np.zeros((2, 2, 3), dtype=bool)) == [0, 1, 2]



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
SPATIAL = {"Mode": "spatial", "AmbiguousShare": 0.123, "ChangedShare": 0.0456, "Details": {}}


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
    # a near-degenerate voxel's bound is huge (or infinite): the PDFF colours stop at 0.5
    sd = np.concatenate([rng.uniform(0, 0.05, 1000), [np.inf, 40.0] * 50])
    low, high = colour_limits("PDFFsdmap", sd)
    assert low == 0 and high == 0.5
    low, high = colour_limits("PDFFsdmap", rng.uniform(0, 0.05, 1000))
    assert low == 0 and 0.045 < high <= 0.05
    r2 = np.concatenate([rng.uniform(0, 10, 10000), [np.inf, np.nan, 1e6]])
    low, high = colour_limits("R2starsdmap", r2)
    assert low == 0 and 9 < high <= 10  # the outliers do not wash the map out
    volume = rng.uniform(0, 10, (8, 8, 2))
    for key, units in (("R2starsdmap", "1/s"), ("SideProbmap", "probability"), ("PDFFsdmap", "fraction")):
        title, cmap, label = PANELS[key]
        fig = mosaic(volume, [0, 1], title, cmap, colour_limits(key, volume), None, label)
        assert units in fig.axes[1].get_ylabel(), (key, fig.axes[1].get_ylabel())


def test_r2star_colour_range_holds_an_iron_loaded_liver_in_fixed_steps():
    """Typical tissue (R2* 20-80 1/s) is drawn on 0-100 1/s; a liver at 1000 1/s filling a fifth of
    the mask moves the scale to 0-1000, so the liver is not clipped; a few outliers do not."""
    from raider_bids.reports.figures import colour_limits

    rng = np.random.default_rng(0)
    tissue = rng.uniform(20, 80, 8000)
    assert colour_limits("R2starmap", tissue) == (0.0, 100.0)
    assert colour_limits("R2starmap", np.concatenate([tissue, [1900.0] * 10])) == (0.0, 100.0)
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
