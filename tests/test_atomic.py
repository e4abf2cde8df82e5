"""Files and folders appear whole or not at all (clare_dist.atomic), the rule every writer uses."""

from __future__ import annotations

import json

import pytest

from clare_dist.atomic import atomic_path, write_json_atomic, write_text_atomic


def test_a_file_appears_only_when_its_block_ends(tmp_path):
    target = tmp_path / "deep" / "report.html"
    with atomic_path(target) as tmp:
        tmp.write_text("half")
        assert not target.exists() and tmp.parent == target.parent
    assert target.read_text() == "half" and sorted(p.name for p in target.parent.iterdir()) == ["report.html"]


def test_a_failed_write_leaves_the_old_version_and_no_leftovers(tmp_path):
    target = write_text_atomic(tmp_path / "done.json", "old\n")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_path(target) as tmp:
            tmp.write_text("new, half written")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["done.json"]


def test_a_folder_replaces_the_folder_there(tmp_path):
    target = tmp_path / "bundle"
    target.mkdir()
    (target / "old.onnx").write_bytes(b"old")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "new.onnx").write_bytes(b"new")
        assert (target / "old.onnx").exists()
    assert [p.name for p in target.iterdir()] == ["new.onnx"] and [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_json_is_indented_with_a_final_newline(tmp_path):
    path = write_json_atomic(tmp_path / "manifest.json", {"a": [1, 2]})
    assert path.read_text() == json.dumps({"a": [1, 2]}, indent=2) + "\n"
