"""The one atomic writer: a failed write leaves the old file and no temporary behind."""

import json

import pytest

from driftloop.atomic import replace_file, write_json, write_jsonl


def test_a_write_that_fails_midway_leaves_the_old_file_whole(tmp_path):
    target = tmp_path / "rows.jsonl"
    assert write_jsonl(target, [{"b": 1, "a": 2}]) == 1
    assert target.read_text() == '{"a": 2, "b": 1}\n'

    def rows():
        yield {"a": 3}
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_jsonl(target, rows())
    assert target.read_text() == '{"a": 2, "b": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"], "the temporary file is removed"


def test_json_and_produced_files_replace_whole(tmp_path):
    write_json(tmp_path / "deep" / "state.json", {"z": 1, "a": [1]}, indent=2)
    assert json.loads((tmp_path / "deep" / "state.json").read_text()) == {"a": [1], "z": 1}
    replace_file(tmp_path / "copy.bin", lambda tmp: open(tmp, "wb").write(b"\x00\x01"))
    assert (tmp_path / "copy.bin").read_bytes() == b"\x00\x01"
    with pytest.raises(OSError):
        replace_file(tmp_path / "copy.bin", lambda tmp: (_ for _ in ()).throw(OSError("network")))
    assert (tmp_path / "copy.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.bin", "deep"]
