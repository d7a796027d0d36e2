"""abscot_plugin.core.fileio: what a reader sees of a file or folder while, and after, it is written."""

from __future__ import annotations

import os
import stat

import pytest

from abscot_plugin.core.fileio import atomic_dir, atomic_path, file_digest, json_digest, write_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "manifest.json"
    write_atomic(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed while writing")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["manifest.json"]
    write_atomic(target, "new")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["manifest.json"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~_umask()  # not mkstemp's private 0600


def test_a_folder_appears_complete_or_not_at_all(tmp_path):
    out = tmp_path / "model"
    with pytest.raises(RuntimeError), atomic_dir(out) as tmp:
        (tmp / "config.json").write_text("{}")
        raise RuntimeError("killed while saving")
    assert not out.exists() and os.listdir(tmp_path) == []
    with atomic_dir(out) as tmp:
        (tmp / "config.json").write_text("{}")
    assert (out / "config.json").read_text() == "{}" and os.listdir(tmp_path) == ["model"]
    with pytest.raises(FileExistsError, match="model already exists"), atomic_dir(out) as tmp:
        (tmp / "config.json").write_text('{"other": 1}')
    with atomic_dir(out, exist_ok=True) as tmp:  # a rank that lost the race keeps the first copy
        (tmp / "config.json").write_text('{"other": 1}')
    assert (out / "config.json").read_text() == "{}" and os.listdir(tmp_path) == ["model"]


def test_digests(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    assert file_digest(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert json_digest({"b": 1, "a": [2]}, 12) == json_digest({"a": [2], "b": 1}, 12)
    assert len(json_digest({"a": 1})) == 64 and json_digest({"a": 1}) != json_digest({"a": 2})


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
