"""The reports draw every image in the standard radiological view, from its NIfTI affine.

Truth here is geometric, not the code's: small volumes hold markers at voxels chosen by their
world (scanner RAS+) coordinates, computed from the affine with numpy; the mosaic is rendered to
pixels and each marker is looked for where radiological convention puts it (axial: anterior up,
the patient's right on the image's left; coronal: superior up, right on the left; sagittal:
superior up, anterior on the left), with the letters on the edges to match."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from raider_bids.reports.figures import View, mosaic
from raider_bids.reports.pages import _Loader


def _rotation_z(degrees: float) -> np.ndarray:
    t = np.radians(degrees)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])


def _affine(linear: np.ndarray, shape: tuple[int, int, int], centre=(12.0, -30.0, 40.0)) -> np.ndarray:
    """An affine with `linear` (columns: each voxel axis in mm of world RAS+) whose grid centre
    lies at `centre` (a scanner's origin is never the first voxel)."""
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = np.asarray(centre) - linear @ ((np.asarray(shape) - 1) / 2)
    return affine


SHAPE = (20, 16, 3)
AXIAL = {
    "RAS": np.diag([1.5, 1.5, 4.0]),
    "LPS (x and y flipped)": np.diag([-1.5, -1.5, 4.0]),
    "x flipped (LAS)": np.diag([-1.5, 1.5, 4.0]),
    "oblique (20 degrees about z)": _rotation_z(20) @ np.diag([1.5, 1.5, 4.0]),
    "oblique, flipped (-25 degrees, LPS)": _rotation_z(-25) @ np.diag([-1.5, -1.5, 4.0]),
    # rows and columns as DICOM stores them: the first axis to posterior, the second to the left
    "transposed (PLS)": np.array([[0, -1.5, 0], [-1.5, 0, 0], [0, 0, 4.0]]),
    "slices downwards (RAI)": np.diag([1.5, 1.5, -4.0]),
}


def _world(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """World coordinates (mm, RAS+) of every voxel, relative to the grid centre: [i, j, k, xyz]."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).astype(float)
    world = index @ affine[:3, :3].T + affine[:3, 3]
    return world - world.reshape(-1, 3).mean(axis=0)


def _marked(affine: np.ndarray, shape: tuple[int, ...], directions: dict[str, tuple[int, int]],
            plane_axis: int) -> tuple[np.ndarray, dict[str, tuple[int, ...]]]:
    """A volume of 0 with one marker per direction: name -> (RAS axis, sign) pairs, e.g. right
    anterior = ((0, +1), (1, +1)); each marker the voxel of the central slice (across world axis
    `plane_axis`) farthest that way. Marker values: 1, 2, 3, ... in order."""
    world = _world(affine, shape)
    across = world[..., plane_axis]
    central = np.abs(across) <= np.abs(across).min() + 1e-6
    volume = np.zeros(shape)
    voxels = {}
    for value, (name, pairs) in enumerate(directions.items(), start=1):
        score = sum(sign * world[..., axis] for axis, sign in pairs)
        score = np.where(central, score, -np.inf)
        voxel = np.unravel_index(np.argmax(score), shape)
        volume[voxel] = value
        voxels[name] = voxel
    return volume, voxels


def _render(fig) -> np.ndarray:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].astype(int)


def _where_drawn(fig, colour: np.ndarray, tile: int = 0) -> tuple[float, float]:
    """Where pixels of `colour` are in the rendered figure, as fractions (x from the left, y from
    the top) of the drawn slice `tile` (the Axes' image of that index)."""
    pixels = _render(fig)
    height = pixels.shape[0]
    ax = fig.axes[0]
    left, right, bottom, top = ax.images[tile].get_extent()
    (x0, y0), (x1, y1) = ax.transData.transform([(left, top), (right, bottom)])
    rows0, rows1 = (int(round(v)) for v in sorted((height - y0, height - y1)))
    cols0, cols1 = (int(round(v)) for v in sorted((x0, x1)))
    match = np.all(np.abs(pixels[rows0:rows1, cols0:cols1] - colour) <= 6, axis=-1)  # not the colour bar
    ys, xs = np.nonzero(match)
    assert ys.size, f"no pixel of colour {colour} drawn"
    return float(xs.mean()) / (cols1 - cols0), float(ys.mean()) / (rows1 - rows0)


def _draw(volume: np.ndarray, affine: np.ndarray, tmp_path, name="map"):
    """Through the report's own path: a NIfTI on disk, loaded and reoriented as pages.py does."""
    mask_path, map_path = tmp_path / f"{name}_mask.nii.gz", tmp_path / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(volume.shape, dtype=np.uint8), affine), mask_path)
    nib.save(nib.Nifti1Image(volume.astype(np.float32), affine), map_path)
    loader = _Loader(mask_path)
    stack = loader.load(map_path)
    centre = int(np.flatnonzero(stack.reshape(stack.shape[0], -1).max(axis=1) > 0)[0])
    # values 1..3 on a colour map with three distinct hues (viridis), 0 at its bottom
    fig = mosaic(stack, [centre], "test", "viridis", (0.0, 3.0), loader.mask, "units", loader.view)
    return fig, loader.view


def _colour(value: float) -> np.ndarray:
    import matplotlib
    return np.round(np.asarray(matplotlib.colormaps["viridis"](value / 3.0)[:3]) * 255).astype(int)


def _letters(fig) -> dict[str, tuple[str, float, float]]:
    """The orientation letters drawn on the first slice: edge -> (letter, x, y) in data coordinates."""
    found = {}
    for text in fig.axes[0].texts:
        gid = text.get_gid() or ""
        if gid.startswith("orientation-") and gid.removeprefix("orientation-") not in found:
            x, y = text.get_position()
            found[gid.removeprefix("orientation-")] = (text.get_text(), x, y)
    return found


def _assert_letters(fig, expected: dict[str, str]) -> None:
    letters = _letters(fig)
    assert {edge: letter for edge, (letter, _, _) in letters.items()} == expected
    left, right, bottom, top = fig.axes[0].images[0].get_extent()
    mid_x, mid_y = (left + right) / 2, (top + bottom) / 2  # y grows downwards (top < bottom)
    assert letters["left"][1] < mid_x < letters["right"][1]
    assert letters["top"][2] < mid_y < letters["bottom"][2]


@pytest.mark.parametrize("linear", list(AXIAL.values()), ids=list(AXIAL))
def test_axial_markers_land_where_radiologists_expect(linear, tmp_path):
    affine = _affine(linear, SHAPE)
    directions = {"right-anterior": ((0, 1), (1, 1)), "left-anterior": ((0, -1), (1, 1)),
                  "right-posterior": ((0, 1), (1, -1))}
    volume, _ = _marked(affine, SHAPE, directions, plane_axis=2)
    fig, view = _draw(volume, affine, tmp_path)
    assert view.plane == "axial"
    x, y = _where_drawn(fig, _colour(1))
    assert x < 0.25 and y < 0.25, (x, y)  # right-anterior: top left
    x, y = _where_drawn(fig, _colour(2))
    assert x > 0.75 and y < 0.25, (x, y)  # left-anterior: top right
    x, y = _where_drawn(fig, _colour(3))
    assert x < 0.25 and y > 0.75, (x, y)  # right-posterior: bottom left
    _assert_letters(fig, {"top": "A", "bottom": "P", "left": "R", "right": "L"})
    unit = linear / np.linalg.norm(linear, axis=0)
    assert view.obliquity_deg == pytest.approx(np.degrees(np.arccos(np.abs(unit).max(axis=0))).max(), abs=0.1)


def test_oblique_acquisition_is_said_so(tmp_path):
    view = View.of(_affine(AXIAL["oblique (20 degrees about z)"], SHAPE), SHAPE)
    assert view.obliquity_deg == pytest.approx(20, abs=0.5)
    assert "oblique (up to 20 degrees)" in view.describe()
    assert "oblique" not in View.of(_affine(AXIAL["RAS"], SHAPE), SHAPE).describe()


def test_slices_are_numbered_by_the_files_voxel_index():
    shape = (6, 6, 5)
    up = View.of(_affine(np.diag([1.0, 1.0, 2.0]), shape), shape)
    down = View.of(_affine(np.diag([1.0, 1.0, -2.0]), shape), shape)
    assert up.slice_numbers == (0, 1, 2, 3, 4)
    # displayed slices go from inferior to superior: the file's last slice is the most inferior
    assert down.slice_numbers == (4, 3, 2, 1, 0)
    volume = np.zeros(shape)
    volume[:, :, 0] = 1  # the file's first slice
    assert down.stack(volume)[4].all() and not down.stack(volume)[:4].any()


# A coronal acquisition as scanners write it: i to the left, j downwards (superior to inferior),
# k (one slice) to anterior.
CORONAL = np.array([[-1.2, 0, 0], [0, 0, 5.0], [0, -1.2, 0]])
# A sagittal one: i to posterior, j downwards, k (one slice) to the right.
SAGITTAL = np.array([[0, 0, 5.0], [-1.2, 0, 0], [0, -1.2, 0]])


@pytest.mark.parametrize("plane, axes, plane_axis, directions, letters, caption", [
    ("coronal", CORONAL, 1, {"right-superior": ((0, 1), (2, 1)), "left-superior": ((0, -1), (2, 1)),
                             "right-inferior": ((0, 1), (2, -1))},
     {"top": "S", "bottom": "I", "left": "R", "right": "L"}, "Coronal slices seen from the front"),
    ("sagittal", SAGITTAL, 0, {"anterior-superior": ((1, 1), (2, 1)), "posterior-superior": ((1, -1), (2, 1)),
                               "anterior-inferior": ((1, 1), (2, -1))},
     {"top": "S", "bottom": "I", "left": "A", "right": "P"}, "Sagittal slices seen from the patient's left"),
], ids=["coronal", "sagittal"])
def test_a_single_slice_is_shown_in_its_acquired_plane(tmp_path, plane, axes, plane_axis, directions, letters,
                                                      caption):
    """Markers 1-3 at the top-left, top-right and bottom-left directions of the plane's standard view."""
    shape = (24, 18, 1)
    affine = _affine(axes, shape)
    volume, _ = _marked(affine, shape, directions, plane_axis=plane_axis)
    fig, view = _draw(volume, affine, tmp_path)
    assert view.plane == plane
    x, y = _where_drawn(fig, _colour(1))
    assert x < 0.25 and y < 0.25, (x, y)
    x, y = _where_drawn(fig, _colour(2))
    assert x > 0.75 and y < 0.25, (x, y)
    x, y = _where_drawn(fig, _colour(3))
    assert x < 0.25 and y > 0.75, (x, y)
    _assert_letters(fig, letters)
    assert caption in view.describe()


def test_pixels_keep_their_aspect():
    """A coronal slice of 1.2 mm x 5 mm voxels (24 wide, 6 tall) is drawn 24 x 1.2 : 6 x 5 = 0.96 : 1."""
    shape = (24, 6, 1)
    linear = np.array([[-1.2, 0, 0], [0, 0, 2.0], [0, -5.0, 0]])  # j: 5 mm, downwards
    view = View.of(_affine(linear, shape), shape)
    assert view.plane == "coronal" and view.pixel_mm == (5.0, 1.2)
    stack = view.stack(np.ones(shape))
    assert stack.shape == (1, 6, 24)
    fig = mosaic(stack, [0], "t", "gray", (0, 1), None, None, view)
    box = fig.axes[0].images[0].get_window_extent(FigureCanvasAgg(fig).get_renderer())
    assert box.width / box.height == pytest.approx(24 * 1.2 / (6 * 5.0), rel=0.02)


@pytest.mark.parametrize("n_slices", [1, 2, 3, 4, 6])
def test_slices_are_drawn_at_a_readable_size(n_slices):
    """One slice at least 500 px wide (figures are written at 100 dpi); with more, each at least
    300 px and the figure within a 1200 px page."""
    shape = (232, 256, max(n_slices, 1))
    view = View.of(_affine(np.diag([1.5, 1.5, 5.0]), shape), shape)
    stack = view.stack(np.random.default_rng(0).uniform(size=shape))
    fig = mosaic(stack, list(range(n_slices)), "t", "gray", (0, 1), None, "units", view)
    renderer = FigureCanvasAgg(fig).get_renderer()
    widths = [image.get_window_extent(renderer).width for image in fig.axes[0].images]
    assert len(widths) == n_slices
    assert min(widths) >= (500 if n_slices == 1 else 300), widths
    assert fig.get_figwidth() * 100 <= 1200


def test_placeholder_affines_are_noted():
    shape = (8, 8, 1)
    assert View.of(np.diag([1.5, 1.5, 5.0, 1.0]), shape).placeholder  # the real data's placeholder
    assert View.of(_affine(np.diag([1.5, 1.5, 5.0]), shape), shape, codes=(0, 0)).placeholder  # no orientation
    scanner = View.of(_affine(np.diag([1.5, 1.5, 5.0]), shape), shape, codes=(1, 1))
    assert not scanner.placeholder and "placeholder" not in scanner.describe()
    assert "placeholder" in View.of(np.diag([1.5, 1.5, 5.0, 1.0]), shape).describe()
