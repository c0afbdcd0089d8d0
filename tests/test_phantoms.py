"""The benchmark phantoms (raider_bids.experiments.phantoms): truth in range, the anatomy
phantom's thin layers and partial volume, border_voxels on a hand-made grid, the cleaning of a
fit's isolated swaps, and the BIDS writer read back by the app's own reader."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from raider_bids.bids_io.raw import find_runs, load_run
from raider_bids.experiments import phantoms as ph


@pytest.fixture(scope="module")
def anatomy() -> ph.Phantom:
    return ph.anatomy((112, 96, 3), seed=1)


@pytest.mark.parametrize("make", [lambda: ph.abdomen((40, 36, 2)), lambda: ph.anatomy((112, 96, 3), seed=1)])
def test_truth_in_range(make):
    phantom = make()
    tissue = phantom.tissue
    assert phantom.pdff.shape == phantom.r2star_s.shape == phantom.s0.shape == phantom.labels.shape
    assert phantom.labels.dtype.kind == "i" and set(np.unique(phantom.labels)) <= set(phantom.tissues) | {0}
    assert 0.2 < tissue.mean() < 0.8
    assert phantom.pdff.min() >= 0 and phantom.pdff.max() <= 1
    assert (phantom.r2star_s[tissue] > 1).all() and phantom.r2star_s.max() < 1000
    assert (phantom.s0[tissue] > 0).all() and (phantom.s0 >= 0).all()
    # Both sides of the boundary are well represented.
    assert 0.05 < (phantom.pdff[tissue] >= 0.58).mean() < 0.6
    assert phantom.affine.shape == (4, 4) and all(v > 0 for v in phantom.voxel_size_mm)


def test_anatomy_is_deterministic_from_its_seed():
    a, b, c = ph.anatomy((48, 40, 2), seed=3), ph.anatomy((48, 40, 2), seed=3), ph.anatomy((48, 40, 2), seed=4)
    assert np.array_equal(a.pdff, b.pdff) and np.array_equal(a.labels, b.labels)
    assert not np.array_equal(a.pdff, c.pdff)


def test_subcutaneous_fat_is_one_to_three_voxels_thick(anatomy):
    fat = anatomy.labels == ph.ANATOMY_TISSUES["subcutaneous-fat"].label
    nx, ny, nz = anatomy.shape
    for z in range(nz):
        # On a grid twice as fine, the distance to the layer's edge is at most 3 half-voxels only
        # where the layer is at most 3 voxels thick (4 would reach 4).
        fine = np.kron(fat[:, :, z], np.ones((2, 2), dtype=bool))
        assert ndi.distance_transform_edt(fine).max() <= 3
        # Along the central row and column, from each side: skin, then a run of 1-3 fat voxels.
        for line in (fat[:, ny // 2, z], fat[:, ny // 2, z][::-1], fat[nx // 2, :, z], fat[nx // 2, :, z][::-1]):
            start = int(np.argmax(line))
            assert line.any() and start > 0
            run = int(np.argmin(line[start:]))
            assert 1 <= run <= 3
        # The layer goes all the way round (small vessels may cross it).
        angles = np.linspace(0, 2 * np.pi, 180, endpoint=False)
        radii = np.arange(0, max(nx, ny) / 2, 0.25)
        xs = np.rint((nx - 1) / 2 + np.cos(angles)[:, None] * radii).astype(int).clip(0, nx - 1)
        ys = np.rint((ny - 1) / 2 + np.sin(angles)[:, None] * radii).astype(int).clip(0, ny - 1)
        assert fat[xs, ys, z].any(axis=1).mean() > 0.95


def test_anatomy_partial_volume_small_and_dark_structures(anatomy):
    labels, pdff = anatomy.labels, anatomy.pdff
    tissues = ph.ANATOMY_TISSUES
    # Intermediate PDFF outside the liver (whose lesion ramps smoothly) next to a label change:
    # borders ramp over one voxel (a rare exception: fat too thin to own any voxel).
    liver = np.isin(labels, [tissues["liver"].label, tissues["steatosis"].label])
    intermediate = (labels > 0) & ~liver & (pdff > 0.2) & (pdff < 0.6)
    footprint = np.ones((3, 3, 1), dtype=bool)
    mixed = ndi.maximum_filter(labels, footprint=footprint) != ndi.minimum_filter(labels, footprint=footprint)
    assert intermediate.sum() > 100 and mixed[intermediate].mean() > 0.99
    # Dark tissue: bone with little signal, an iron-loaded spleen.
    bone = labels == tissues["cortical-bone"].label
    assert (anatomy.s0[bone] < 30).sum() >= 10 and (anatomy.r2star_s[bone] > 200).sum() >= 10
    assert np.median(anatomy.r2star_s[labels == tissues["spleen"].label]) > 120
    # Small vessels: blood groups of a few voxels per slice; a spine with marrow inside bone.
    groups, n = ndi.label(labels[:, :, 0] == tissues["blood"].label)
    assert (np.bincount(groups.ravel())[1:] <= 4).sum() >= 3
    marrow = labels == tissues["marrow"].label
    assert marrow.any() and (ndi.binary_dilation(marrow) & (labels == tissues["cortical-bone"].label)).any()
    # Smooth PDFF inside the liver: a real spread, little voxel-to-voxel change.
    core = ndi.binary_erosion(liver, np.ones((3, 3, 1)))
    assert np.ptp(pdff[core]) > 0.2
    assert np.median(np.abs(np.diff(pdff, axis=0))[core[1:] & core[:-1]]) < 0.02


def test_border_voxels_on_a_hand_made_grid():
    pdff = np.array([[0.0, 0.1, 0.9, 0.9],
                     [0.0, 0.1, 0.9, 0.6],
                     [0.0, 0.0, 0.2, 0.0]])[..., None]
    labels = np.ones(pdff.shape, dtype=int)
    labels[2, 3] = 0  # air: (1, 3) is fat beside fat and air, so no border
    expected = np.array([[0, 1, 1, 0],
                         [0, 1, 1, 0],
                         [0, 0, 1, 0]], dtype=bool)[..., None]
    assert np.array_equal(ph.border_voxels(pdff, labels), expected)
    assert ph.border_voxels(pdff).sum() == expected.sum() + 2  # without labels, (1, 3) and (2, 3) too
    # 3-D: 6-connectivity, diagonals are not neighbours.
    cube = np.zeros((3, 3, 3))
    cube[1, 1, 1] = 1.0
    border = ph.border_voxels(cube)
    assert border.sum() == 7 and border[1, 1, 1] and border[1, 1, 0] and not border[0, 0, 1]


def test_cleaning_switches_isolated_ambiguous_swaps_and_keeps_thin_layers():
    shape = (12, 12, 1)
    pdff = np.full(shape, 0.05)
    pdff[2:10, 6] = 0.9  # a fat layer one voxel thick
    pdff[3, 2] = 0.8  # an isolated swap, ambiguous
    pdff[8, 2] = 0.8  # isolated too, but the data are sure
    llr = np.full(shape, 20.0)
    llr[3, 2] = 0.3
    llr[2:10, 6] = 0.5  # ambiguous, yet a layer, not an island
    maps = {"PDFFmap": pdff, "R2starmap": np.full(shape, 40.0), "S0map": np.full(shape, 100.0),
            "LLRmap": llr, "mask": np.ones(shape, dtype=bool)}
    for s, value in (("PDFFmap", 0.1), ("R2starmap", 30.0), ("S0map", 90.0)):
        maps[f"water-{s}"] = np.full(shape, value)
        maps[f"fat-{s}"] = np.full(shape, 0.85 if s == "PDFFmap" else 2 * value)
    cleaned, switched = ph.clean_fit_maps(maps)
    assert switched.sum() == 1 and switched[3, 2, 0]
    assert cleaned["PDFFmap"][3, 2, 0] == 0.1 and cleaned["R2starmap"][3, 2, 0] == 30.0
    assert (cleaned["PDFFmap"][2:10, 6] == 0.9).all() and cleaned["PDFFmap"][8, 2, 0] == 0.8


def test_written_dataset_reads_back_with_the_protocol(tmp_path):
    phantom = ph.abdomen((20, 18, 2))
    protocol = ph.PROTOCOLS["hard"]
    truth = ph.write_phantom_dataset(tmp_path / "bids", phantom, protocol.echo_times_s, protocol.field_strength_t,
                                     protocol.snr, seed=2, subject="07")
    assert float(truth["sigma"]) == pytest.approx(100 / protocol.snr)
    assert np.array_equal(truth["PDFFmap"], phantom.pdff)
    runs, problems = find_runs(tmp_path / "bids")
    assert not problems and [r.subject for r in runs] == ["07"]
    run = runs[0]
    assert run.echo_times_s == pytest.approx(protocol.echo_times_s, abs=1e-9)
    assert run.field_strength_t == protocol.field_strength_t
    data, reference = load_run(run)
    assert data.shape == phantom.shape + (6,)
    assert np.allclose(reference.header.get_zooms()[:3], phantom.voxel_size_mm)
    # Air holds Rician noise of the given sigma; tissue is far above it at the first echo.
    air = data[phantom.labels == 0]
    assert np.mean(air) == pytest.approx(float(truth["sigma"]) * np.sqrt(np.pi / 2), rel=0.15)
    assert np.median(data[phantom.tissue][:, 0]) > 20 * float(truth["sigma"])


# ---------------------------------------------------------------------------------------------
# The graded liver-iron phantom (issue 16).

IRON_SHAPE = (40, 36, 2)


@pytest.mark.parametrize("protocol", sorted(ph.IRON_PROTOCOLS))
def test_liver_iron_truth_and_first_echo_above_noise(protocol):
    grades = ph.IRON_GRADES_S[protocol]
    assert list(grades) == sorted(grades) and grades[0] == 50.0
    settings = ph.IRON_PROTOCOLS[protocol]
    sigma = ph.REFERENCE_S0 / settings.snr
    for grade in (grades[0], grades[-1]):
        phantom = ph.liver_iron(grade, IRON_SHAPE, seed=1)
        labels = ph.liver_labels(phantom)
        assert [phantom.tissues[k] for k in labels] == ["liver", "liver-steatosis"]
        liver = np.isin(phantom.labels, labels)
        assert liver.sum() > 50
        r2 = phantom.r2star_s[liver]
        assert np.median(r2) == pytest.approx(grade, rel=0.01) and np.abs(r2 / grade - 1).max() <= 0.03 + 1e-12
        assert np.array_equal(ph.liver_iron(grade, IRON_SHAPE, seed=1, r2star_variation=0).r2star_s[liver],
                              np.full(int(liver.sum()), grade))
        # PDFF at two levels; the spleen carries half the liver's iron; air is empty.
        for name, level in (("liver", 0.05), ("liver-steatosis", 0.20)):
            k = next(k for k, v in phantom.tissues.items() if v == name)
            assert np.median(phantom.pdff[phantom.labels == k]) == pytest.approx(level, abs=0.005)
        spleen = phantom.labels == next(k for k, v in phantom.tissues.items() if v == "spleen")
        assert spleen.sum() > 5 and np.median(phantom.r2star_s[spleen]) == pytest.approx(grade / 2, rel=0.05)
        air = phantom.labels == 0
        assert air.any() and (phantom.s0[air] == 0).all() and (phantom.s0[~air] > 0).all()
        # The liver's S0 is about the muscle's (the SNR reference) or a little lower.
        assert 0.8 * ph.REFERENCE_S0 <= np.median(phantom.s0[liver]) <= 1.05 * ph.REFERENCE_S0
    # At the highest grade the liver's first echo is still well above the noise.
    first_echo = np.median(phantom.s0[liver]) * np.exp(-grade * settings.echo_times_s[0])
    assert first_echo / sigma > 10


def test_liver_iron_dataset_has_the_protocol(tmp_path):
    for protocol, settings in ph.IRON_PROTOCOLS.items():
        phantom = ph.liver_iron(ph.IRON_GRADES_S[protocol][-1], (20, 18, 2))
        truth = ph.write_phantom_dataset(tmp_path / protocol, phantom, settings.echo_times_s,
                                         settings.field_strength_t, settings.snr, seed=3)
        assert float(truth["sigma"]) == pytest.approx(ph.REFERENCE_S0 / settings.snr)
        runs, problems = find_runs(tmp_path / protocol)
        assert not problems and len(runs) == 1
        assert runs[0].echo_times_s == pytest.approx(settings.echo_times_s, abs=1e-9)
        assert runs[0].field_strength_t == settings.field_strength_t
        data, _ = load_run(runs[0])
        assert data.shape == phantom.shape + (len(settings.echo_times_s),)
    assert ph.IRON_PROTOCOLS["1.5T"].echo_times_s == pytest.approx([1e-3 * (i + 1) for i in range(6)])
    assert ph.IRON_PROTOCOLS["3T"].echo_times_s == pytest.approx([0.8e-3 * (i + 1) for i in range(8)])
    assert ph.IRON_PROTOCOLS["1.5T"].snr == ph.IRON_PROTOCOLS["3T"].snr == 50.0
