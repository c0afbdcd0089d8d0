"""--mem and --nprocs: memory sizes read with units, runs that cannot fit refused cleanly, chunks
sized to the working memory, threads capped."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_checks import assert_one_error

from raider_bids import resources
from raider_bids.cli import main
from raider_bids.cli.parser import build_parser
from raider_bids.experiments.demo import ECHO_TIMES_S, FIELD_STRENGTH_T, write_dataset
from raider_bids.physics.solver import fit_voxels
from raider_bids.physics.fat_spectrum import PRESETS
from raider_bids.physics.signal_model import Acquisition
from raider_bids.physics.simulation import simulate_magnitude


@pytest.mark.parametrize("text, expected", [
    ("8GB", 8 * 2**30), ("8G", 8 * 2**30), ("8 GiB", 8 * 2**30), ("500MB", 500 * 2**20), ("1.5g", int(1.5 * 2**30)),
    ("2048k", 2 * 2**20), ("1TB", 2**40),
])
def test_memory_sizes_with_units(text, expected):
    assert resources.parse_memory(text) == expected


@pytest.mark.parametrize("text, fragment", [("8", "give a unit"), ("0GB", "positive"), ("lots", "memory size"),
                                            ("1.5.2GB", "memory size")])
def test_memory_sizes_refused(capsys, tmp_path, text, fragment):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([str(tmp_path), str(tmp_path / "out"), "participant", "--mem", text])
    assert exc.value.code == 64
    assert fragment in capsys.readouterr().err


def test_chunks_follow_the_working_memory():
    try:
        resources.set_working_memory(64 * 2**20)
        assert resources.chunk_voxels(1024, largest=10**6) == 64 * 2**10
        assert resources.chunk_voxels(1024, largest=1000) == 1000
        resources.set_working_memory(1)  # never below the floor
        assert resources.chunk_voxels(10**9, largest=10**6) == 256
        assert resources.chunk_voxels(1024, largest=10**6) == resources.MIN_WORKING_BYTES // 1024
    finally:
        resources.set_working_memory(resources.DEFAULT_WORKING_BYTES)


@pytest.fixture
def bids(tmp_path_factory, tmp_path) -> Path:
    template = tmp_path_factory.getbasetemp() / "resources-template"
    if not template.exists():
        write_dataset(template, shape=(16, 16, 2), subjects=("01", "02"))
    return Path(shutil.copytree(template, tmp_path / "bids"))


def test_run_that_cannot_fit_in_mem_fails_cleanly(capsys, bids, tmp_path):
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "--participant-label", "01", "--method", "fit",
                 "--mem", "50MB"])
    err = capsys.readouterr().err
    assert code == 1
    assert_one_error(err, "sub-01", "needs about", "more than --mem 50 MB")
    assert not list(out.rglob("sub-01_*"))


def test_generous_mem_and_nprocs(capsys, bids, tmp_path):
    threads = torch.get_num_threads()
    try:
        code = main([str(bids), str(tmp_path / "out"), "participant", "--participant-label", "01", "--method", "fit",
                     "--mem", "64GB", "--nprocs", "1"])
        assert code == 0, capsys.readouterr().err
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
        resources.set_working_memory(resources.DEFAULT_WORKING_BYTES)
    assert (tmp_path / "out" / "sub-01" / "anat" / "sub-01_PDFFmap.nii.gz").is_file()


def test_small_working_memory_gives_the_same_fit():
    """Chunks and the pool of starts shrink with the working memory; the answers do not change."""
    acquisition = Acquisition(ECHO_TIMES_S, FIELD_STRENGTH_T, PRESETS["hernando"])
    rng = np.random.default_rng(0)
    n = 6000
    signals = simulate_magnitude(acquisition, np.full(n, 100.0), rng.uniform(0, 1, n), rng.uniform(0, 300, n),
                                 1.0, rng)
    reference = fit_voxels(signals, acquisition, (0.0, 0.58), sigma=1.0)
    try:
        resources.set_working_memory(1)
        assert resources.chunk_voxels(8 * (16 * 6 + 32), 32768) == 4 * 2**20 // (8 * 128)
        small = fit_voxels(signals, acquisition, (0.0, 0.58), sigma=1.0)
    finally:
        resources.set_working_memory(resources.DEFAULT_WORKING_BYTES)
    np.testing.assert_allclose(small.loss, reference.loss, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(small.pdff, reference.pdff, atol=1e-6)


@pytest.mark.parametrize("quota, period, expected", [
    ("150000 100000", None, 2),  # cgroup v2, 1.5 CPUs: rounded up
    ("max 100000", None, None),  # v2, no quota
    ("-1", "100000", None),  # v1, no quota
    ("50000", "100000", 1),  # v1, half a CPU: still one thread
])
def test_available_cpus_follows_affinity_and_cgroup_quota(tmp_path, monkeypatch, quota, period, expected):
    import os

    affinity = len(os.sched_getaffinity(0))
    (tmp_path / "quota").write_text(quota + "\n")
    if period:
        (tmp_path / "period").write_text(period + "\n")
    monkeypatch.setattr(resources, "_CGROUP_QUOTAS",
                        ((str(tmp_path / "quota"), str(tmp_path / "period") if period else None),))
    assert resources.available_cpus() == min(affinity, expected or affinity)
    monkeypatch.setattr(resources, "_CGROUP_QUOTAS", ((str(tmp_path / "absent"), None),))
    assert resources.available_cpus() == affinity


def test_map_chunks_runs_every_chunk_in_order_on_worker_threads_with_one_intra_op_thread():
    """Results in the slices' order, each equal to the same computation on one thread (so the bits
    cannot depend on the worker count), torch's thread count and grad mode as the caller's."""
    import threading
    import time

    from raider_bids.physics.cramer_rao import cramer_rao_sd
    from raider_bids.physics.fat_spectrum import load_fat_spectrum
    from raider_bids.physics.signal_model import Acquisition

    acquisition = Acquisition(tuple(1.15e-3 * k for k in range(1, 7)), 3.0, load_fat_spectrum("hernando"))
    rng = np.random.default_rng(0)
    n = 200_000  # several of the bound's chunks
    s0, pdff, r2 = rng.uniform(50, 150, n), rng.uniform(0, 1, n), rng.uniform(0, 300, n)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = cramer_rao_sd(acquisition, s0, pdff, r2, 1.0)
        torch.set_num_threads(2)
        seen = []

        def probe(sl: slice):
            seen.append((threading.get_ident(), torch.get_num_threads(), torch.is_grad_enabled()))
            time.sleep(0.01)  # long enough for the second worker to take a chunk
            return sl.start

        with torch.no_grad():
            starts = resources.map_chunks(probe, n, 4096, 10_000)
        assert starts == list(range(0, n, 10_000))
        assert {threads for _, threads, _ in seen} == {1} and not any(grad for *_, grad in seen)
        assert len({ident for ident, *_ in seen}) == 2  # two workers, not the caller alone
        assert torch.get_num_threads() == 2
        two = cramer_rao_sd(acquisition, s0, pdff, r2, 1.0)
        for key in one:  # the chunks are the same here: the working memory holds two of 65,536 voxels
            assert np.array_equal(one[key], two[key]), key
    finally:
        torch.set_num_threads(before)
