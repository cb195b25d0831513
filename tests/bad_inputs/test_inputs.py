"""Bad inputs to ``stformer tokenize`` and ``stformer medians``: medians, library sizes,
coordinates, CSR structure, vocabularies, files that are not what they claim, full and read-only
output folders, and interruptions (kill -9, Ctrl-C) with identical results after the rerun.

Every case runs the real command and checks the exit code, that the message names the file, the
field and a fix the command accepts, and that nothing complete-looking or partial was left.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest


def _tokenize(src, out, *extra):
    return (
        "tokenize",
        *[str(s) for s in (src if isinstance(src, list) else [src])],
        "--out",
        str(out),
        "--no-progress",
        "--model-input-size",
        "16",
        *extra,
    )


def _assert_refused(rc, msg, out: Path, leftovers, *names):
    assert rc == 2, msg
    for name in names:
        assert name in msg, f"{name!r} not in: {msg}"
    assert "Fix:" in msg
    assert not out.exists(), "a failed command left its output"
    assert leftovers(out.parent) == []


# --- medians -----------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0.0, -1.5, float("nan")], ids=["zero", "negative", "nan"])
def test_invalid_medians_are_refused_naming_the_count_and_file(
    tmp_path, write_h5ad, run_cli, leftovers, assert_fix_is_an_option, bad
):
    src = write_h5ad()
    medians = {f"ENSG{i:011d}": 1.0 + i for i in range(20)}
    medians["ENSG00000000003"] = medians["ENSG00000000007"] = bad
    mfile = tmp_path / "medians.json"
    mfile.write_text(json.dumps(medians))
    out = tmp_path / "corpus"
    rc, msg = run_cli(*_tokenize(src, out, "--medians", mfile))
    _assert_refused(rc, msg, out, leftovers, str(mfile), "2 of 20 genes", "--drop-invalid-medians")
    assert_fix_is_an_option("tokenize", msg)
    rc, msg = run_cli(*_tokenize(src, out, "--medians", mfile, "--drop-invalid-medians"))
    assert rc == 0, msg
    assert f"{mfile}: dropped 2 of 20 genes" in msg


# --- library sizes -----------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), -3.0, 0.0], ids=["nan", "negative", "zero"])
def test_invalid_library_sizes_are_refused(
    tmp_path, write_h5ad, run_cli, leftovers, assert_fix_is_an_option, bad
):
    sizes = np.full(12, 50.0)
    sizes[4] = bad
    src = write_h5ad(obs={"total": sizes})
    out = tmp_path / "corpus"
    for command in (
        _tokenize(src, out, "--n-counts-key", "total"),
        ("medians", src, "--out", tmp_path / "m.json", "--n-counts-key", "total"),
    ):
        rc, msg = run_cli(*command)
        _assert_refused(rc, msg, out, leftovers, str(src), "obs['total']", "cell4")
        assert_fix_is_an_option(command[0], msg)
        assert not (tmp_path / "m.json").exists()


# --- coordinates -------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["one_point", "nan"])
def test_degenerate_or_nan_coordinates_are_refused(
    tmp_path, write_h5ad, run_cli, leftovers, assert_fix_is_an_option, case
):
    xy = np.random.default_rng(0).uniform(0, 100, (12, 2))
    if case == "one_point":
        xy[:] = (5.0, 5.0)
    else:
        xy[3, 1] = np.nan
    src = write_h5ad(obsm={"spatial": xy})
    out = tmp_path / "corpus"
    rc, msg = run_cli(*_tokenize(src, out, "--mode", "neighborhood"))
    _assert_refused(rc, msg, out, leftovers, str(src), "obsm['spatial']")
    assert ("one point" if case == "one_point" else "NaN") in msg
    assert_fix_is_an_option("tokenize", msg)


# --- files that are not what they claim --------------------------------------------------------
def test_decreasing_csr_indptr_is_refused(tmp_path, write_h5ad, run_cli, leftovers):
    src = write_h5ad()
    with h5py.File(src, "r+") as f:
        indptr = f["X/indptr"][:]
        indptr[5], indptr[6] = indptr[6], indptr[5] - 1
        f["X/indptr"][:] = indptr
    out = tmp_path / "corpus"
    rc, msg = run_cli(*_tokenize(src, out))
    _assert_refused(rc, msg, out, leftovers, str(src), "X/indptr", "decreas", "re-export")
    rc, msg = run_cli("medians", src, "--out", tmp_path / "m.json")
    assert rc == 2 and "X/indptr" in msg and not (tmp_path / "m.json").exists()


def test_zarr_store_named_h5ad_says_it_is_zarr(tmp_path, write_h5ad, run_cli, leftovers):
    import anndata as ad

    adata = ad.io.read_h5ad(write_h5ad())
    store = tmp_path / "cells_zarr.h5ad"
    adata.write_zarr(store)
    out = tmp_path / "corpus"
    rc, msg = run_cli(*_tokenize(store, out))
    _assert_refused(
        rc, msg, out, leftovers, str(store), "zarr store", "anndata.read_zarr", "rename"
    )


@pytest.mark.parametrize(
    "payload, problem",
    [
        (["<pad>", "<mask>", "ENSG00000000000"], "is a JSON list"),
        ({"<pad>": 0, "<mask>": 1, "ENSG00000000000": "2"}, "'ENSG00000000000' has id '2'"),
        ({"<pad>": 0, "<mask>": 1, "ENSG00000000000": -2}, "'ENSG00000000000' has id -2"),
        ({"<pad>": 0, "<mask>": 1, "ENSG00000000000": 1}, "id 1 is used by '<mask>' and"),
    ],
    ids=["list", "string_id", "negative_id", "duplicate_id"],
)
def test_malformed_json_vocabulary_is_refused_naming_the_file(
    tmp_path, write_h5ad, write_vocab, run_cli, leftovers, payload, problem
):
    src, vocab = write_h5ad(), write_vocab(payload)
    out = tmp_path / "corpus"
    rc, msg = run_cli(*_tokenize(src, out, "--vocab", vocab))
    _assert_refused(rc, msg, out, leftovers, str(vocab), "token dictionary", problem)


# --- full and read-only output folders ---------------------------------------------------------
def _disk_full(monkeypatch, after: int = 0):
    """Make every write after the first ``after`` bytes fail with ENOSPC, as on a full disk."""
    import builtins
    import io

    real_open = builtins.open
    state = {"left": after}

    class Full(io.FileIO):
        def write(self, b):
            state["left"] -= len(b)
            if state["left"] < 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return super().write(b)

    def fake_open(file, mode="r", *args, **kwargs):
        if any(m in mode for m in "wax") and "b" in mode and not args and not kwargs:
            return Full(file, mode.replace("b", ""))
        return real_open(file, mode, *args, **kwargs)

    real_write = os.write

    def fake_os_write(fd, data):
        state["left"] -= len(data)
        if state["left"] < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "write", fake_os_write)


def test_disk_full_gives_one_message_and_removes_partial_output(
    tmp_path, write_h5ad, run_cli, leftovers, monkeypatch
):
    src = write_h5ad()
    out = tmp_path / "corpus"
    medians = tmp_path / "m.json"
    _disk_full(monkeypatch)
    rc, msg = run_cli("medians", src, "--out", medians)
    assert rc == 2, msg
    assert str(medians) in msg and "no space left" in msg.lower() and "free space" in msg
    assert not medians.exists() and leftovers(tmp_path) == []
    rc, msg = run_cli(*_tokenize(src, out))
    assert rc == 2, msg
    assert "no space left" in msg.lower() and "free space" in msg
    assert not out.exists() and leftovers(tmp_path) == []


_IN_NAMESPACE = """
import sys
from stformer_cli.main import cli
src, full, ro = sys.argv[1:]
print("medians rc", cli(["medians", src, "--out", full + "/m.json"]), flush=True)
print("tokenize full rc", cli(["tokenize", src, "--out", full + "/c", "--no-progress"]), flush=True)
print("tokenize rc", cli(["tokenize", src, "--out", ro + "/corpus", "--no-progress"]), flush=True)
"""


def test_full_and_read_only_disks_on_private_tmpfs(tmp_path, write_h5ad):
    """Real ENOSPC and EROFS: a 4 KiB tmpfs and a read-only tmpfs in a private mount namespace
    (``unshare -rm``; skipped where that is not allowed)."""
    import shutil

    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("`unshare` is not installed, so no private tmpfs can be made")
    probe = subprocess.run(
        [unshare, "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m none {tmp_path} && echo ok"],
        capture_output=True,
        text=True,
    )
    if probe.stdout.strip() != "ok":
        pytest.skip(f"cannot mount a private tmpfs here: {probe.stderr.strip()[:200]}")
    src = write_h5ad(n_cells=40, n_genes=1000)
    full, ro = tmp_path / "full", tmp_path / "ro"
    full.mkdir()
    ro.mkdir()
    script = (
        f"mount -t tmpfs -o size=4k none {full} && mount -t tmpfs -o ro none {ro} && "
        f"{sys.executable} -c '{_IN_NAMESPACE}' {src} {full} {ro}; ls -a {full} {ro}"
    )
    res = subprocess.run(
        [unshare, "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=120
    )
    err = " ".join(res.stderr.split())
    for rc in ("medians rc 2", "tokenize full rc 2", "tokenize rc 2"):
        assert rc in res.stdout, res.stdout + err
    assert f"{full}/c: output cannot be written: no space left" in err
    assert f"{full}/m.json: output cannot be written: no space left" in err
    assert f"{ro}/corpus: output is not writable: the file system is read-only" in err
    assert "Fix: free space on that file system" in err and "(--out)" in err
    listing = res.stdout.split("tokenize rc 2", 1)[1].split()
    assert [n for n in listing if not n.endswith(":")] == [".", "..", ".", ".."]  # nothing left


def test_permission_denied_is_one_message_even_as_root(tmp_path, write_h5ad, run_cli, monkeypatch):
    """EACCES simulated in-process (root ignores chmod, so the real case below may be skipped)."""
    src = write_h5ad()
    locked = tmp_path / "locked"
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        if str(path).startswith(str(locked)):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    for command in (
        _tokenize(src, locked / "corpus"),
        ("medians", src, "--out", locked / "m.json"),
    ):
        rc, msg = run_cli(*command)
        assert rc == 2, msg
        assert (
            "is not writable: permission denied" in msg and "Fix: make the folder writable" in msg
        )
    assert not locked.exists()


def test_read_only_output_folder_gives_one_message(tmp_path, write_h5ad, run_cli, leftovers):
    if os.geteuid() == 0:
        pytest.skip(
            "running as root, which ignores file permissions: a read-only folder "
            "cannot be simulated with chmod"
        )
    src = write_h5ad()
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        for command, target in (
            (_tokenize(src, ro / "corpus"), ro / "corpus"),
            (("medians", src, "--out", ro / "m.json"), ro / "m.json"),
        ):
            rc, msg = run_cli(*command)
            assert rc == 2, msg
            assert str(target) in msg and "not writable" in msg and "Fix:" in msg
            assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


# --- interruptions -----------------------------------------------------------------------------
def _digest(corpus: Path) -> dict[str, str]:
    """Every file of a corpus by content; the manifest without its timing."""
    out = {}
    for f in sorted(p for p in corpus.rglob("*") if p.is_file()):
        data = f.read_bytes()
        if f.name == "manifest.json":
            manifest = json.loads(data)
            manifest.pop("seconds", None)
            data = json.dumps(manifest, sort_keys=True).encode()
        out[str(f.relative_to(corpus))] = hashlib.sha256(data).hexdigest()
    return out


_SLOW_TOKENIZE = (
    "import sys, time\n"
    "import stformer_data.corpus.write as w\n"
    "from stformer_cli.main import cli\n"
    "real = w._run_unit\n"
    "def slow(job, on_chunk=None):\n"
    "    r = real(job, on_chunk); time.sleep(0.25); return r\n"
    "w._run_unit = slow\n"
    "sys.exit(cli(sys.argv[1:]))\n"
)


@pytest.fixture
def four_files(write_h5ad):
    """Four tiny files (one shard each), so an interrupted run has finished some shards."""
    return [write_h5ad(f"part{i}.h5ad", n_cells=10, seed=i) for i in range(4)]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_interrupted_default_tokenize_resumes_to_the_identical_corpus(
    tmp_path, four_files, run_cli, sig
):
    reference = tmp_path / "reference"
    rc, msg = run_cli(*_tokenize(four_files, reference))
    assert rc == 0, msg
    out = tmp_path / "corpus"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_TOKENIZE, *_tokenize(four_files, out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    shards = tmp_path / ".corpus.partial" / "shards"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None and not list(shards.glob("*.json")):
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    finished = len(list(shards.glob("*.json")))
    assert 1 <= finished < 4 and not out.exists()
    if sig == signal.SIGINT:
        assert "interrupted;" in err and "rerun the same command to resume" in err
    rc, msg = run_cli(*_tokenize(four_files, out))
    assert rc == 0, msg
    assert f"resuming: reusing {finished} of 4 finished shards" in msg
    assert _digest(out) == _digest(reference)
    assert not (tmp_path / ".corpus.partial").exists()


def test_thread_and_process_count_do_not_change_the_corpus(
    tmp_path, four_files, write_h5ad, run_cli
):
    one_file = write_h5ad("big.h5ad", n_cells=60, n_genes=30, seed=9)
    for inputs in (four_files, one_file):
        digests = []
        for i, n in enumerate(("1", "2")):
            out = tmp_path / f"c{n}_{len(digests)}_{i}_{isinstance(inputs, list)}"
            rc, msg = run_cli(*_tokenize(inputs, out, "--num-proc", n, "--chunk-size", "7"))
            assert rc == 0, msg
            d = _digest(out)
            d.pop("manifest.json")  # records num_proc
            digests.append(d)
        assert digests[0] == digests[1]
