"""Security of a run: nothing written outside the output and work directories (HOME, the current
directory and the temporary directory stay as they were), and no network connection attempted."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from raider_bids.cli import main
from raider_bids.experiments.demo import write_dataset


def tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_nothing_is_written_outside_the_output_and_work_directories(tmp_path):
    write_dataset(tmp_path / "bids", shape=(16, 16, 2), subjects=("01",))
    for d in ("home", "cwd", "tmp", "work"):
        (tmp_path / d).mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("MPLCONFIGDIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME")}
    env |= {"HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path / "tmp")}
    before = tree(tmp_path / "bids")
    for level, extra in (("participant", ["--method", "fit", "single", "--max-epochs", "2"]),
                         ("group", [])):
        proc = subprocess.run([sys.executable, "-m", "raider_bids", str(tmp_path / "bids"), str(tmp_path / "out"),
                               level, *extra], capture_output=True, text=True, timeout=300, env=env,
                              cwd=tmp_path / "cwd")
        assert proc.returncode == 0, proc.stderr
    # And with a work directory, its caches and log go there.
    proc = subprocess.run([sys.executable, "-m", "raider_bids", str(tmp_path / "bids"), str(tmp_path / "out2"),
                           "participant", "--method", "fit", "-w", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path / "cwd")
    assert proc.returncode == 0, proc.stderr
    assert tree(tmp_path / "home") == [] and tree(tmp_path / "cwd") == [] and tree(tmp_path / "tmp") == []
    assert tree(tmp_path / "bids") == before
    assert "raider-bids.log" in tree(tmp_path / "work")


def test_no_network_connection_is_attempted(tmp_path, monkeypatch, capsys):
    write_dataset(tmp_path / "bids", shape=(16, 16, 2), subjects=("01",))
    attempts = []

    def refuse(self, *args, **kwargs):
        attempts.append(args)
        raise OSError("network access is not allowed in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: refuse(None, *a))
    base = [str(tmp_path / "bids"), str(tmp_path / "out")]
    assert main(base + ["participant", "--method", "fit"]) == 0, capsys.readouterr().err
    assert main(base + ["group"]) == 0
    assert attempts == []


def test_saved_weights_load_with_weights_only(tmp_path):
    """The networks are saved as plain tensors and numbers: loading them never runs pickled code."""
    import torch

    write_dataset(tmp_path / "bids", shape=(16, 16, 2), subjects=("01",))
    assert main([str(tmp_path / "bids"), str(tmp_path / "out"), "participant", "--method", "single",
                 "--max-epochs", "1"]) == 0
    (path,) = (tmp_path / "out").rglob("*_weights.pt")
    saved = torch.load(path, weights_only=True)
    assert saved["kind"] == "full" and all(isinstance(v, torch.Tensor) for v in saved["state_dict"].values())
