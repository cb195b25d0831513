"""stformer_data.atomic: outputs appear only when complete."""

from __future__ import annotations

import json

import pytest

from stformer_data.atomic import (
    atomic_dir,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    partial_path,
)


def test_files_are_written_whole_and_leave_no_temporary(tmp_path):
    atomic_write_text(tmp_path / "a" / "b.txt", "hello")
    atomic_write_bytes(tmp_path / "c.bin", b"\x00\x01")
    atomic_write_json(tmp_path / "d.json", {"x": [1, 2]})
    assert (tmp_path / "a" / "b.txt").read_text() == "hello"
    assert (tmp_path / "c.bin").read_bytes() == b"\x00\x01"
    assert json.loads((tmp_path / "d.json").read_text()) == {"x": [1, 2]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "c.bin", "d.json"]


def test_a_failed_file_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "m.json"
    atomic_write_json(target, {"v": 1})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"v": object()})
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_a_folder_appears_only_when_complete_and_replaces_the_old_one(tmp_path):
    out = tmp_path / "run"
    with atomic_dir(out) as tmp:
        (tmp / "x").write_text("1")
        assert tmp == partial_path(out) and not out.exists()
    assert (out / "x").read_text() == "1"
    with atomic_dir(out) as tmp:
        (tmp / "y").write_text("2")
        assert (out / "x").exists()  # the old folder stays until the new one is complete
    assert sorted(p.name for p in out.iterdir()) == ["y"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_failed_folder_is_removed_or_kept_for_resume(tmp_path):
    out = tmp_path / "corpus"
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "shard").write_text("a")
        raise RuntimeError("boom")
    assert not out.exists() and not partial_path(out).exists()
    with pytest.raises(KeyboardInterrupt), atomic_dir(out, keep_on_error=True) as tmp:
        (tmp / "shard").write_text("a")
        raise KeyboardInterrupt
    assert (partial_path(out) / "shard").read_text() == "a" and not out.exists()
    with atomic_dir(out, reuse=True) as tmp:
        assert (tmp / "shard").read_text() == "a"
    assert (out / "shard").read_text() == "a"
