"""Crash safety, reruns and concurrency of the participant level (issue 7): a run killed with
SIGKILL or stopped with SIGTERM leaves no debris and is redone on rerun; finished runs are skipped,
leftovers never pass for finished runs; several processes share one output directory."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from raider_bids.experiments.demo import write_dataset

# A short training (3 epochs of 100 steps) that still exercises the networks.
SHORT = ["--max-epochs", "3", "--patience", "3"]
LONG = ["--max-epochs", "1000", "--patience", "1000"]


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("crash") / "bids"
    write_dataset(root, shape=(16, 16, 2), subjects=("01", "02", "03"))
    return root


@pytest.fixture
def bids(template, tmp_path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "bids"))


def command(bids: Path, out: Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "raider_bids", str(bids), str(out), "participant", "--nprocs", "1", *options]


def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "MPLCONFIGDIR": str(tmp_path / "mpl")}


def run(tmp_path: Path, *args: str | Path, check: int = 0) -> str:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300, env=env(tmp_path))
    assert proc.returncode == check, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr


def start_and_signal(tmp_path: Path, argv: list[str], sig: int, after: str) -> subprocess.Popen:
    """Start the app and send `sig` once a stderr line contains `after`."""
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env(tmp_path))
    seen = []
    assert proc.stderr is not None
    for line in proc.stderr:
        seen.append(line)
        if after in line:
            proc.send_signal(sig)
            break
    else:
        pytest.fail("the run ended before the signal:\n" + "".join(seen))
    seen.append(proc.stderr.read())
    proc.wait(timeout=60)
    proc.log = "".join(seen)  # type: ignore[attr-defined]
    return proc


def files(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def hidden(out: Path) -> list[str]:
    return [p.relative_to(out).as_posix() for p in out.rglob(".*") if p.name != ".bidsignore"]


def maps(out: Path, name: str) -> dict[str, np.ndarray]:
    anat = out / f"sub-{name[4:6]}" / "anat"
    return {s: np.asarray(nib.load(anat / f"{name}_{s}.nii.gz").dataobj)
            for s in ("PDFFmap", "R2starmap", "S0map", "LLRmap")}


def run_files(out: Path, subject: str) -> list[str]:
    return sorted(p.name for p in (out / f"sub-{subject}").rglob("*") if p.is_file())


@pytest.mark.slow  # killed mid-training, then two runs: ~17 s
def test_sigkill_during_training_then_rerun_completes_without_debris(bids, tmp_path):
    reference, out = tmp_path / "reference", tmp_path / "out"
    run(tmp_path, *command(bids, reference, "--participant-label", "01", *SHORT))
    before = files(bids)
    killed = start_and_signal(tmp_path, command(bids, out, "--participant-label", "01", "-v", *LONG),
                              signal.SIGKILL, "epoch 2/")
    assert killed.returncode == -signal.SIGKILL
    assert not (out / "sub-01").exists() or not any((out / "sub-01").rglob("*_provenance.json"))
    err = run(tmp_path, *command(bids, out, "--participant-label", "01", *SHORT))
    assert "already finished with the same options" not in err
    assert files(bids) == before
    assert not hidden(out)
    # The rerun is the run that was never interrupted: same files, identical maps (same seed, CPU).
    assert run_files(out, "01") == run_files(reference, "01")
    for suffix, values in maps(reference, "sub-01").items():
        np.testing.assert_array_equal(maps(out, "sub-01")[suffix], values, err_msg=suffix)


@pytest.mark.slow  # stopped mid-training: ~7 s
def test_sigterm_during_training_exits_143_and_leaves_nothing_of_the_run(bids, tmp_path):
    out = tmp_path / "out"
    run(tmp_path, *command(bids, out, "--participant-label", "01", "--method", "fit"))
    finished = files(out / "sub-01")
    stopped = start_and_signal(tmp_path, command(bids, out, "--participant-label", "02", "-v", *LONG),
                               signal.SIGTERM, "epoch 2/")
    assert stopped.returncode == 143, stopped.log
    assert "Traceback" not in stopped.log and "terminated" in stopped.log
    assert not (out / "sub-02").exists() or not [p for p in (out / "sub-02").rglob("*") if p.is_file()]
    assert not hidden(out)
    assert files(out / "sub-01") == finished  # another run's finished outputs are never touched


def test_rerun_skips_finished_runs_and_says_so(bids, tmp_path):
    out = tmp_path / "out"
    run(tmp_path, *command(bids, out, "--participant-label", "01", "02", "--method", "fit"))
    before = files(out)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*_PDFFmap.nii.gz")}
    err = run(tmp_path, *command(bids, out, "--participant-label", "01", "02", "--method", "fit"))
    assert err.count("already finished with the same options") == 2, err
    assert "0 run(s) processed, 2 skipped" in err
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert files(out) == before


def test_rerun_with_other_options_is_refused_then_replaced_with_overwrite(bids, tmp_path):
    out = tmp_path / "out"
    run(tmp_path, *command(bids, out, "--participant-label", "01", "--method", "fit", "--write-candidates"))
    assert any("desc-water_PDFFmap" in f for f in run_files(out, "01"))
    before = files(out / "sub-01")
    err = run(tmp_path, *command(bids, out, "--participant-label", "01", "--method", "fit", "--random-seed", "1"),
              check=73)
    assert "made with other options (--random-seed 0 -> 1)" in err and "--overwrite" in err, err
    assert files(out / "sub-01") == before  # refused: nothing of the finished run touched
    err = run(tmp_path, *command(bids, out, "--participant-label", "01", "--method", "fit", "--random-seed", "1",
                                 "--overwrite"))
    assert "removing earlier outputs made with other options" in err
    names = run_files(out, "01")
    assert not any("desc-water" in f for f in names), names  # nothing left from the first options
    provenance = json.loads((out / "sub-01" / "anat" / "sub-01_provenance.json").read_text())
    assert provenance["Configuration"]["write_candidates"] is False and provenance["RandomSeed"] == 1


def _touch_echo(bids: Path) -> None:
    """A raw image rewritten (same size, later modification time)."""
    echo = next((bids / "sub-01" / "anat").glob("*echo-1*_MEGRE.nii.gz"))
    stat = echo.stat()
    os.utime(echo, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))


def _edit_echo_time(bids: Path) -> None:
    """A sidecar corrected after the run (the images untouched)."""
    sidecar = next((bids / "sub-01" / "anat").glob("*echo-2*_MEGRE.json"))
    meta = json.loads(sidecar.read_text())
    meta["EchoTime"] += 1e-5
    sidecar.write_text(json.dumps(meta))


@pytest.mark.parametrize("change", [_touch_echo, _edit_echo_time], ids=["image", "sidecar"])
def test_rerun_after_the_inputs_changed_is_refused_then_recomputed_with_overwrite(bids, tmp_path, change):
    out = tmp_path / "out"
    run(tmp_path, *command(bids, out, "--participant-label", "01", "02", "--method", "fit"))
    untouched = {p: p.stat().st_mtime_ns for p in (out / "sub-02").rglob("*.nii.gz")}
    change(bids)
    err = run(tmp_path, *command(bids, out, "--participant-label", "01", "02", "--method", "fit"), check=73)
    assert "sub-01 were made from inputs that have changed since" in err and "--overwrite" in err, err
    err = run(tmp_path, *command(bids, out, "--participant-label", "01", "02", "--method", "fit", "--overwrite"))
    assert "sub-01: removing earlier outputs made from inputs that have changed since" in err, err
    assert "1 run(s) processed, 1 skipped" in err
    assert {p: p.stat().st_mtime_ns for p in untouched} == untouched
    provenance = json.loads((out / "sub-01" / "anat" / "sub-01_provenance.json").read_text())
    recorded = provenance["InputFiles"]
    for path in (bids / "sub-01" / "anat").glob("*_MEGRE.nii.gz"):
        name = path.relative_to(bids).as_posix()
        assert recorded[name] == {"Bytes": path.stat().st_size, "ModifiedNs": path.stat().st_mtime_ns}
    err = run(tmp_path, *command(bids, out, "--participant-label", "01", "02", "--method", "fit"))
    assert "0 run(s) processed, 2 skipped" in err


def _plant_leftovers(out: Path) -> None:
    """What a run killed while writing leaves: some maps, a temporary file, no provenance."""
    anat = out / "sub-01" / "anat"
    (anat / "sub-01_PDFFmap.nii.gz").write_bytes(b"half a map")
    (anat / ".sub-01_R2starmap.nii.gz.x1y2z3.nii.gz").write_bytes(b"temporary")
    (anat / "sub-01_provenance.json").unlink()


def _drop_listed_map(out: Path) -> None:
    """A provenance whose maps are not all there (killed while rewriting the maps)."""
    (out / "sub-01" / "anat" / "sub-01_LLRmap.nii.gz").unlink()


@pytest.mark.parametrize("damage", [_plant_leftovers, _drop_listed_map], ids=["no-provenance", "map-missing"])
def test_leftovers_of_an_interrupted_run_are_not_taken_for_finished(bids, tmp_path, damage):
    out, reference = tmp_path / "out", tmp_path / "reference"
    run(tmp_path, *command(bids, reference, "--participant-label", "01", "--method", "fit"))
    shutil.copytree(reference, out)
    damage(out)
    err = run(tmp_path, *command(bids, out, "--participant-label", "01", "--method", "fit"))
    assert "left by an interrupted or failed run" in err and "already finished with the same options" not in err
    assert not hidden(out)
    assert run_files(out, "01") == run_files(reference, "01")
    np.testing.assert_array_equal(maps(out, "sub-01")["PDFFmap"], maps(reference, "sub-01")["PDFFmap"])


@pytest.fixture(scope="module")
def concurrent(template, tmp_path_factory) -> dict:
    """Three processes, one participant each, started together on one new output directory."""
    root = tmp_path_factory.mktemp("concurrent")
    bids, out = Path(shutil.copytree(template, root / "bids")), root / "out"
    before = files(bids)
    procs = [subprocess.Popen(command(bids, out, "--participant-label", s, *SHORT), stderr=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, text=True, env=env(root)) for s in ("01", "02", "03")]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
    return {"bids": bids, "out": out, "before": before, "results": results}


def _assert_all_finished(concurrent: dict) -> None:
    for code, err in concurrent["results"]:
        assert code == 0 and "Traceback" not in err, err


@pytest.mark.slow  # three processes at once (fixture): ~12 s
def test_three_concurrent_processes_share_one_output_directory(concurrent):
    _assert_all_finished(concurrent)
    out = concurrent["out"]
    assert files(concurrent["bids"]) == concurrent["before"]
    assert not hidden(out)
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["GeneratedBy"][0]["Name"] == "raider-bids"
    ignore = (out / ".bidsignore").read_text().splitlines()
    assert len(ignore) == len(set(ignore)) and "*_PDFFmap.*" in ignore
    assert (out / "descriptions.tsv").read_text().startswith("desc_id\tdescription\n")
    for s in ("01", "02", "03"):
        provenance = json.loads((out / f"sub-{s}" / "anat" / f"sub-{s}_provenance.json").read_text())
        assert all((out / f"sub-{s}" / "anat" / name).is_file() for name in provenance["Outputs"].values())
        assert (out / f"sub-{s}.html").is_file()


@pytest.mark.slow  # the same three processes
def test_bids_validator_accepts_the_concurrent_output(concurrent, bids_validator):
    _assert_all_finished(concurrent)
    bids_validator(concurrent["out"])


@pytest.mark.slow  # nine processes, three at a time: ~18 s
def test_concurrent_starts_race_on_the_shared_files(bids, tmp_path):
    """Processes creating one new output directory at the same moment (a fit takes well under a
    second, so they overlap while writing the shared top-level files) leave them valid."""
    out = tmp_path / "out"
    for _ in range(3):
        procs = [subprocess.Popen(command(bids, out, "--participant-label", s, "--method", "fit"),
                                  stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env(tmp_path))
                 for s in ("01", "02", "03")]
        assert [p.wait(timeout=300) for p in procs] == [0] * 3
        json.loads((out / "dataset_description.json").read_text())
        ignore = (out / ".bidsignore").read_text().splitlines()
        assert len(ignore) == len(set(ignore))
        assert not hidden(out)
        shutil.rmtree(out)
        time.sleep(0.1)


def test_a_folder_that_refuses_new_files_is_named_not_the_temporary_file(tmp_path, monkeypatch):
    """A write where no file can be created (read-only or full) names the folder and the file the
    user would get, not the hidden temporary file it tried first, and leaves nothing behind."""
    import errno
    import tempfile

    from raider_bids.bids_io.files import write_text
    from raider_bids.errors import OutputError

    def refuse(prefix, suffix, dir):
        raise PermissionError(errno.EACCES, "Permission denied", str(Path(dir) / f"{prefix}abc{suffix}"))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(OutputError) as raised:
        write_text(tmp_path / "README", "text")
    assert str(raised.value) == f"{tmp_path}: cannot write README (Permission denied)"
    assert list(tmp_path.iterdir()) == []
