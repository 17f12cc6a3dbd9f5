
import numpy as np
import pytest
import torch

from kudos.rl.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state


def test_round_trip_and_overwrite(tmp_path):
    save_checkpoint(tmp_path, {"step": 1, "weights": torch.arange(4.0)})
    save_checkpoint(tmp_path, {"step": 2, "weights": torch.arange(5.0)})
    state = load_checkpoint(tmp_path)
    assert state["step"] == 2 and torch.equal(state["weights"], torch.arange(5.0))
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME]  # no temp files left


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path):
    save_checkpoint(tmp_path, {"step": 1})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    with pytest.raises(RuntimeError):
        save_checkpoint(tmp_path, {"step": 2, "bad": Unpicklable()})
    assert load_checkpoint(tmp_path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME]


def test_missing_and_corrupt_checkpoints_give_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path)
    save_checkpoint(tmp_path, {"step": 1})
    path = tmp_path / CHECKPOINT_NAME
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        load_checkpoint(tmp_path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        load_checkpoint(tmp_path)
    torch.save({"format_version": 99}, path)
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(tmp_path)


def test_rng_state_round_trip():
    state = rng_state()
    first = (np.random.random(), torch.rand(1).item())
    set_rng_state(state)
    assert (np.random.random(), torch.rand(1).item()) == first
