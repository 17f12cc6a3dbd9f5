"""atomic_write: the file is replaced whole, or left as it was with no temp file beside it."""

import os
import stat

import pytest
import torch

from kudos.fsutil import atomic_write


def test_text_and_bytes_replace_the_content(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("old: 1\n")
    assert atomic_write(path, "new: é\n") == path
    assert path.read_text(encoding="utf-8") == "new: é\n"
    atomic_write(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert os.listdir(tmp_path) == ["config.yaml"]


def test_callback_writes_into_the_temp_file_and_parents_are_created(tmp_path):
    path = tmp_path / "run" / "model.pt"
    atomic_write(path, lambda f: torch.save({"w": torch.arange(3)}, f))
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(3))
    assert os.listdir(path.parent) == ["model.pt"]


def test_the_file_gets_a_plain_files_mode_not_mkstemps_0600(tmp_path):
    plain = tmp_path / "plain"
    plain.write_text("x")
    atomic_write(tmp_path / "atomic", "x")
    assert stat.S_IMODE((tmp_path / "atomic").stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


def test_an_error_keeps_the_original_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "labels.jsonl"
    path.write_text("original\n")

    def fails_halfway(f):
        f.write(b"partial")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write(path, fails_halfway)
    assert path.read_text() == "original\n"
    assert os.listdir(tmp_path) == ["labels.jsonl"]


def test_an_error_before_any_file_existed_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "checkpoint.pt", lambda f: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert os.listdir(tmp_path) == []
