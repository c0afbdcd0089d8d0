"""Tests of raider_bids.bids_io on tiny BIDS datasets built in tmp_path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from raider_bids.bids_io.raw import find_runs, load_filters, load_run, parse_entities
from raider_bids.errors import InputDataError, MissingInputError, NoFilesSelectedError, UsageError

TES = (0.0012, 0.0024, 0.0036, 0.0048)  # seconds


# ---------------------------------------------------------------- dataset builders

def make_bids(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps({"Name": "test", "BIDSVersion": "1.9.0"}))
    return root


def write_json(path: Path, meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta))


def add_echo(root: Path, sub: str, echo: int, meta: dict | None, *, ses=None, acq=None, run=None,
             part=None, value=1.0, shape=(4, 4, 2), pad=1) -> Path:
    """One echo image (constant `value`) and, unless meta is None, its JSON sidecar."""
    anat = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    entities = [("sub", sub), ("ses", ses), ("acq", acq), ("run", run), ("echo", f"{echo:0{pad}d}"), ("part", part)]
    stem = "_".join(f"{k}-{v}" for k, v in entities if v is not None) + "_MEGRE"
    nib.save(nib.Nifti1Image(np.full(shape, value, dtype=np.float32), np.eye(4)), anat / f"{stem}.nii.gz")
    if meta is not None:
        write_json(anat / f"{stem}.json", meta)
    return anat / f"{stem}.nii.gz"


def add_run(root: Path, sub: str = "01", tes=TES, field=3.0, value=None, **kw) -> list[Path]:
    """A run whose echo i has EchoTime tes[i-1] and constant image value i (or value(i))."""
    paths = []
    for i, te in enumerate(tes, 1):
        meta = {"EchoTime": te} if field is None else {"EchoTime": te, "MagneticFieldStrength": field}
        paths.append(add_echo(root, sub, i, meta, value=i if value is None else value(i), **kw))
    return paths


@pytest.fixture
def bids(tmp_path) -> Path:
    return make_bids(tmp_path / "bids")


def only(found):
    """The one run found; the problem of the one unusable run is raised."""
    runs, problems = found
    if problems:
        raise next(iter(problems.values()))
    assert len(runs) == 1, [r.name for r in runs]
    return runs[0]


def run_names(found) -> list[str]:
    runs, problems = found
    assert not problems, problems
    return [r.name for r in runs]


# ---------------------------------------------------------------- finding runs

def test_parse_entities_keeps_padding():
    assert parse_entities(Path("sub-01_ses-1_run-01_echo-02_part-mag_MEGRE.nii.gz")) == [
        ("sub", "01"), ("ses", "1"), ("run", "01"), ("echo", "02"), ("part", "mag")]


def test_magnitude_found_and_phase_ignored(bids):
    tes = (0.0036, 0.0012, 0.0048, 0.0024)  # echo index order differs from echo-time order
    add_run(bids, tes=tes, part="mag")
    add_run(bids, tes=tes, part="phase", value=lambda i: -np.pi)  # phase would fail load_run (negative)
    run = only(find_runs(bids))
    assert run.name == "sub-01" and run.entities == (("sub", "01"),)
    assert run.subject == "01" and run.session is None
    assert run.echo_times_s == tuple(sorted(tes))
    assert run.field_strength_t == 3.0
    assert run.relative_files() == [f"sub-01/anat/sub-01_echo-{i}_part-mag_MEGRE.nii.gz" for i in (2, 4, 1, 3)]
    data, _ = load_run(run)
    np.testing.assert_array_equal(data[0, 0, 0], [2, 4, 1, 3])


def test_dataset_without_part(bids):
    add_run(bids, sub="02", field=1.5)
    run = only(find_runs(bids))
    assert run.name == "sub-02" and run.field_strength_t == 1.5
    assert run.echo_times_s == TES
    assert run.relative_files() == [f"sub-02/anat/sub-02_echo-{i}_MEGRE.nii.gz" for i in range(1, 5)]
    assert all(f.is_absolute() for f in run.echo_files)


def test_only_phase_files_select_nothing(bids):
    add_run(bids, part="phase")
    with pytest.raises(NoFilesSelectedError) as exc:
        only(find_runs(bids))
    assert exc.value.exit_code == 18


def test_derivatives_sourcedata_and_code_ignored(bids):
    add_run(bids)
    for folder in ("derivatives/other", "sourcedata", "code"):
        add_run(bids / folder, sub="09")
    assert run_names(find_runs(bids)) == ["sub-01"]


def test_sessions_acquisitions_and_runs_are_separate(bids):
    combos = [(ses, acq, run) for ses in ("1", "2") for acq in ("lo", "hi") for run in ("1", "2")]
    for ses, acq, run in combos:
        add_run(bids, ses=ses, acq=acq, run=run, part="mag")
    add_run(bids, sub="02", ses="1")  # no acq, no run, no part
    runs, problems = find_runs(bids)
    assert not problems
    expected = sorted([f"sub-01_ses-{s}_acq-{a}_run-{r}" for s, a, r in combos] + ["sub-02_ses-1"])
    assert [r.name for r in runs] == expected
    for r in runs:
        keys = [k for k, _ in r.entities]
        assert "echo" not in keys and "part" not in keys
        assert len(r.echo_files) == 4 and r.echo_times_s == TES
        assert all(f.name.startswith(r.name + "_echo-") for f in r.echo_files)
    r = runs[0]
    assert r.entities == (("sub", "01"), ("ses", "1"), ("acq", "hi"), ("run", "1"))
    assert (r.subject, r.session) == ("01", "1")
    assert r.relative_files()[0] == "sub-01/ses-1/anat/sub-01_ses-1_acq-hi_run-1_echo-1_part-mag_MEGRE.nii.gz"


def test_zero_padded_echoes_with_string_echo_times(bids):
    rng = np.random.default_rng(0)
    tes = rng.permutation(np.arange(1, 11) * 0.0011)  # echo index i has echo time tes[i-1]
    for i, te in enumerate(tes, 1):
        add_echo(bids, "01", i, {"EchoTime": f"{te:.4f}", "MagneticFieldStrength": "3"}, value=i, pad=2)
    run = only(find_runs(bids))
    assert all(isinstance(t, float) for t in run.echo_times_s)
    np.testing.assert_allclose(run.echo_times_s, np.sort(tes))
    order = np.argsort(tes) + 1  # echo indices by increasing echo time
    assert [f.name for f in run.echo_files] == [f"sub-01_echo-{i:02d}_MEGRE.nii.gz" for i in order]
    assert run.field_strength_t == 3.0
    data, ref = load_run(run)
    assert data.shape == (4, 4, 2, 10) and data.dtype == np.float32
    np.testing.assert_array_equal(data[1, 2, 1], order)
    assert Path(ref.get_filename()) == run.echo_files[0]


# ---------------------------------------------------------------- metadata inheritance

@pytest.mark.parametrize("sidecar", ["MEGRE.json", "sub-01/sub-01_MEGRE.json", "sub-01/anat/sub-01_MEGRE.json"])
def test_field_strength_inherited(bids, sidecar):
    add_run(bids, field=None)
    write_json(bids / sidecar, {"MagneticFieldStrength": 7, "Manufacturer": "X"})
    assert only(find_runs(bids)).field_strength_t == 7.0


def test_echo_times_inherited_from_subject_level(bids):
    for i, te in enumerate(TES, 1):
        add_echo(bids, "01", i, None, value=i)
        write_json(bids / f"sub-01/sub-01_echo-{i}_MEGRE.json", {"EchoTime": te})
    write_json(bids / "MEGRE.json", {"MagneticFieldStrength": 1.5})
    run = only(find_runs(bids))
    assert run.echo_times_s == TES and run.field_strength_t == 1.5


def test_partless_sidecars_apply_to_magnitude_not_phase_sidecars(bids):
    for i, te in enumerate(TES, 1):
        add_echo(bids, "01", i, None, part="mag", value=i)
        add_echo(bids, "01", i, None, part="phase")
        write_json(bids / f"sub-01/anat/sub-01_echo-{i}_MEGRE.json", {"EchoTime": te})
    write_json(bids / "part-phase_MEGRE.json", {"MagneticFieldStrength": 1.5})
    write_json(bids / "MEGRE.json", {"MagneticFieldStrength": 3})
    run = only(find_runs(bids))
    assert run.echo_times_s == TES and run.field_strength_t == 3.0


def test_missing_field_strength(bids):
    add_run(bids, field=None)
    with pytest.raises(MissingInputError, match="--field-strength") as exc:
        only(find_runs(bids))
    assert "sub-01_echo-1_MEGRE.nii.gz" in str(exc.value) and exc.value.exit_code == 66
    assert only(find_runs(bids, field_strength_t=2.89)).field_strength_t == 2.89


def test_field_strength_argument_overrides_sidecar(bids):
    add_run(bids, field=3.0)
    assert only(find_runs(bids, field_strength_t=2.89)).field_strength_t == 2.89


def test_conflicting_field_strengths(bids):
    paths = add_run(bids)
    write_json(paths[0].with_name(paths[0].name.replace(".nii.gz", ".json")),
               {"EchoTime": TES[0], "MagneticFieldStrength": 1.5})
    with pytest.raises(InputDataError, match="different MagneticFieldStrength"):
        only(find_runs(bids))


# ---------------------------------------------------------------- selection

@pytest.fixture
def three_subjects(bids):
    for sub in ("01", "02", "03"):
        add_run(bids, sub=sub)
    return bids


@pytest.mark.parametrize("labels, subjects", [
    (["01"], ["01"]),
    (["sub-02"], ["02"]),
    (["sub-03", "01"], ["01", "03"]),
    (["sub-02", "02"], ["02"]),
    (None, ["01", "02", "03"]),
])
def test_participant_labels(three_subjects, labels, subjects):
    assert [r.subject for r in find_runs(three_subjects, participant_labels=labels)[0]] == subjects


@pytest.mark.parametrize("labels", [["04"], ["sub-1"], ["01", "sub-99"]])
def test_unknown_participant_label(three_subjects, labels):
    with pytest.raises(UsageError, match="it has: 01, 02, 03") as exc:
        only(find_runs(three_subjects, participant_labels=labels))
    assert exc.value.exit_code == 64


@pytest.fixture
def varied(bids):
    """sub-01 with sessions 1 and 2; ses-1 has acq-x and a run-less / run-1 pair."""
    add_run(bids, ses="1")
    add_run(bids, ses="1", run="1")
    add_run(bids, ses="1", acq="x", run="2")
    add_run(bids, ses="2", run="1")
    return bids


@pytest.mark.parametrize("sessions, names", [
    (["1"], ["sub-01_ses-1", "sub-01_ses-1_acq-x_run-2", "sub-01_ses-1_run-1"]),
    (["ses-2"], ["sub-01_ses-2_run-1"]),
    (["1", "ses-2"], ["sub-01_ses-1", "sub-01_ses-1_acq-x_run-2", "sub-01_ses-1_run-1", "sub-01_ses-2_run-1"]),
])
def test_session_labels(varied, sessions, names):
    assert run_names(find_runs(varied, session_labels=sessions)) == names


@pytest.mark.parametrize("spec, names", [
    ({"megre": {"acquisition": "x"}}, ["sub-01_ses-1_acq-x_run-2"]),
    ({"megre": {"acquisition": "*"}}, ["sub-01_ses-1_acq-x_run-2"]),
    ({"megre": {"run": None}}, ["sub-01_ses-1"]),
    ({"megre": {"run": 1}}, ["sub-01_ses-1_run-1", "sub-01_ses-2_run-1"]),
    ({"megre": {"session": "2", "run": [1, 2]}}, ["sub-01_ses-2_run-1"]),
    ({}, ["sub-01_ses-1", "sub-01_ses-1_acq-x_run-2", "sub-01_ses-1_run-1", "sub-01_ses-2_run-1"]),
])
def test_filter_file(varied, tmp_path, spec, names):
    path = tmp_path / "filter.json"
    path.write_text(json.dumps(spec))
    assert run_names(find_runs(varied, filters=load_filters(path))) == names


def test_no_filter_file():
    assert load_filters(None) == {}


def test_filter_selecting_nothing(varied, tmp_path):
    path = tmp_path / "filter.json"
    path.write_text(json.dumps({"megre": {"acquisition": "nope"}}))
    with pytest.raises(NoFilesSelectedError, match="nope") as exc:
        only(find_runs(varied, filters=load_filters(path)))
    assert exc.value.exit_code == 18


def test_unknown_session_label(varied):
    with pytest.raises(UsageError, match="1, 2"):
        only(find_runs(varied, session_labels=["3"]))


@pytest.mark.parametrize("text", ['{"megre": {"acquisition": ', "[1, 2]", '{"megre": "x"}', None])
def test_malformed_filter_file(tmp_path, text):
    path = tmp_path / "filter.json"
    if text is not None:  # None: the file does not exist
        path.write_text(text)
    with pytest.raises(UsageError) as exc:
        load_filters(path)
    assert str(path) in str(exc.value) and exc.value.exit_code == 64


def test_filter_value_that_is_an_object(tmp_path):
    path = tmp_path / "filter.json"
    path.write_text(json.dumps({"megre": {"run": {"value": 1}}}))
    with pytest.raises(UsageError, match="filter.json"):
        load_filters(path)


def test_star_inside_a_list_means_any_value(varied):
    path = varied / "filter.json"
    path.write_text(json.dumps({"megre": {"acquisition": ["*"]}}))
    runs, _ = find_runs(varied, filters=load_filters(path))
    assert runs and all(dict(r.entities).get("acq") for r in runs)


def test_unknown_query_name(tmp_path):
    path = tmp_path / "filter.json"
    path.write_text(json.dumps({"megre": {}, "bold": {"task": "rest"}}))
    with pytest.raises(UsageError, match="bold"):
        load_filters(path)


def test_unknown_entity_in_filter(varied):
    with pytest.raises(UsageError, match="invalid BIDS filter"):
        only(find_runs(varied, filters={"notanentity": "x"}))


# ---------------------------------------------------------------- error paths

def test_echo_time_in_milliseconds(bids):
    add_run(bids, tes=(1.15, 2.3, 3.45, 4.6))
    with pytest.raises(InputDataError, match="milliseconds") as exc:
        only(find_runs(bids))
    assert exc.value.exit_code == 65


@pytest.mark.parametrize("te, error, match", [
    ("abc", InputDataError, "not a number"),
    (-0.001, InputDataError, "positive"),
    (0, InputDataError, "positive"),
])
def test_bad_echo_time(bids, te, error, match):
    add_run(bids, tes=(te,) + TES[1:])
    with pytest.raises(error, match=match):
        only(find_runs(bids))


def test_missing_echo_time(bids):
    add_run(bids)
    add_echo(bids, "01", 5, {"MagneticFieldStrength": 3})
    with pytest.raises(MissingInputError, match="sub-01_echo-5_MEGRE.nii.gz: no EchoTime") as exc:
        only(find_runs(bids))
    assert exc.value.exit_code == 66


def test_fewer_than_four_echoes(bids):
    add_run(bids, tes=TES[:3])
    with pytest.raises(InputDataError, match="3 echoes"):
        only(find_runs(bids))


def test_mixed_part_mag_and_partless_files(bids):
    add_run(bids, part="mag")
    add_run(bids)
    with pytest.raises(InputDataError, match="same EchoTime"):
        only(find_runs(bids))


@pytest.mark.parametrize("remove", ["dataset_description.json", "."])
def test_missing_dataset(tmp_path, remove):
    bids = make_bids(tmp_path / "bids")
    add_run(bids)
    target = bids / remove
    if target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink()
    with pytest.raises(MissingInputError) as exc:
        only(find_runs(bids))
    assert exc.value.exit_code == 66


def test_echo_images_of_different_shapes(bids):
    paths = add_run(bids)
    nib.save(nib.Nifti1Image(np.ones((4, 4, 3), np.float32), np.eye(4)), paths[2])
    with pytest.raises(InputDataError, match="shape") as exc:
        load_run(only(find_runs(bids)))
    assert str(paths[2]) in str(exc.value)


def test_negative_values(bids):
    add_run(bids, value=lambda i: -1.0 if i == 2 else 1.0)
    with pytest.raises(InputDataError, match="negative") as exc:
        load_run(only(find_runs(bids)))
    assert "echo-2" in str(exc.value) and exc.value.exit_code == 65


def test_non_finite_values_come_back_as_nan(bids):
    paths = add_run(bids)
    volume = np.ones((4, 4, 2), np.float32)
    volume[0, 0, 0], volume[1, 1, 1] = np.nan, -np.inf
    nib.save(nib.Nifti1Image(volume, np.eye(4)), paths[1])
    data, _ = load_run(only(find_runs(bids)))
    assert np.isnan(data[0, 0, 0, 1]) and np.isnan(data[1, 1, 1, 1]) and np.isfinite(data).sum() == data.size - 2
    add_run(bids, value=lambda i: np.nan if i == 1 else float(i))  # an echo without a finite value
    with pytest.raises(InputDataError, match="no positive finite value"):
        load_run(only(find_runs(bids)))


def test_singleton_fourth_axis_and_corrupt_file(bids):
    paths = add_run(bids)
    nib.save(nib.Nifti1Image(np.full((4, 4, 2, 1), 1, np.float32), np.eye(4)), paths[0])
    data, _ = load_run(only(find_runs(bids)))
    assert data.shape == (4, 4, 2, 4)
    paths[1].write_bytes(b"not a nifti")
    with pytest.raises(InputDataError, match="cannot read"):
        load_run(only(find_runs(bids)))
