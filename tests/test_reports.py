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
        assert (outputs / href).is_file(), href


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
