"""r2.fileio: a write either lands whole or leaves the old file and no temporary behind."""

import pytest

from r2.fileio import atomic_path, atomic_write, link_target


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    atomic_write(target, "new ünïcode\n")
    assert target.read_bytes() == "new ünïcode\n".encode("utf-8")
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_failed_write_keeps_old_file_and_leaves_no_partial(tmp_path):
    target = tmp_path / "plot.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.suffix == ".png" and tmp.name.startswith(".")
            tmp.write_bytes(b"half")
            raise RuntimeError("writer crashed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]


def test_link_target_is_the_file_a_symlink_names(tmp_path):
    target = tmp_path / "real" / "out.jsonl"
    target.parent.mkdir()
    link = tmp_path / "out.jsonl"
    link.symlink_to(target)  # the target need not exist yet
    assert link_target(link) == target.resolve()
    atomic_write(link_target(link), "x\n")
    assert link.is_symlink() and target.read_text() == "x\n"
    assert link_target(target) == target and link_target(tmp_path / "new.jsonl") == tmp_path / "new.jsonl"
