"""Trajectory slots: the free/held/full bookkeeping, caption storage, and shared memory that
children see and that has no name left in /dev/shm."""

import multiprocessing as mp
import os

import numpy as np
import pytest

from kudos.rl.trajectory import (
    FREE,
    FULL,
    CaptionDecoder,
    SlotError,
    SlotPool,
    TrajectoryBuffers,
    TrajectoryLayout,
    encode_caption,
)

LAYOUT = TrajectoryLayout(
    num_slots=3, steps=4, envs=2, hidden_size=8, observations=(("blstats", (27,), "<i8"), ("message", (256,), "|u1"))
)


def test_slots_move_free_held_full_free_and_are_never_handed_out_twice():
    pool = SlotPool(3)
    taken = [pool.take(worker=0), pool.take(worker=1), pool.take(worker=1)]
    assert sorted(taken) == [0, 1, 2]
    assert pool.take(worker=0) is None  # none left: nothing is handed out twice
    pool.deliver(1, taken[1])
    with pytest.raises(SlotError):
        pool.deliver(0, taken[1])  # already full
    with pytest.raises(SlotError):
        pool.deliver(0, taken[2])  # held by worker 1
    with pytest.raises(SlotError):
        pool.release(taken[0])  # not full yet
    pool.release(taken[1])
    assert pool.owner.tolist().count(FREE) == 1 and pool.num_free == 1
    pool.check()


def test_a_dead_workers_slots_are_reclaimed_and_nothing_is_lost():
    pool = SlotPool(5)
    held = {w: [pool.take(w), pool.take(w)] for w in (0, 1)}
    pool.deliver(0, held[0][0])  # full: the learner has it, not the worker
    assert sorted(pool.reclaim(0)) == [held[0][1]]
    assert sorted(pool.reclaim(1)) == sorted(held[1])
    assert pool.owner[held[0][0]] == FULL
    pool.check()
    pool.release(held[0][0])
    assert pool.num_free == 5
    assert sorted(pool.take(2) for _ in range(5)) == [0, 1, 2, 3, 4]
    pool.check()


def test_captions_round_trip_and_long_ones_are_cut():
    decode = CaptionDecoder()
    rows = np.zeros((3, 16), dtype=np.uint8)
    for i, caption in enumerate(["You kill the newt!", "", "caf\xe9 au lait, tr\xe8s cher"]):
        encoded, cut = encode_caption(caption, 16)
        rows[i] = np.frombuffer(encoded, dtype=np.uint8)
        assert cut == (len(caption) > 16)
    assert decode(rows) == ["You kill the new", "", "caf\xe9 au lait, tr"]


def _write_from_child(buffers: TrajectoryBuffers) -> None:
    buffers.arrays["actions"][1, 2] = [7, 9]
    buffers.obs("message")[2, 4, 1, :3] = [65, 66, 67]


def test_children_write_into_the_same_memory_and_no_name_is_left_in_dev_shm():
    buffers = TrajectoryBuffers(LAYOUT, mp.get_context("spawn"))
    child = mp.get_context("spawn").Process(target=_write_from_child, args=(buffers,))
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert buffers.arrays["actions"][1, 2].tolist() == [7, 9]
    assert buffers.obs("message")[2, 4, 1, :3].tolist() == [65, 66, 67]
    assert buffers.arrays["dones"].shape == (3, 5, 2) and buffers.obs("blstats").shape == (3, 5, 2, 27)
    # The backing file was unlinked when it was made: mapped, but with no name anyone can leak.
    with open("/proc/self/maps") as f:
        mapped = [line for line in f if "/pym-" in line]
    assert mapped and all(line.rstrip().endswith("(deleted)") for line in mapped)
    assert not [name for name in os.listdir("/dev/shm") if name.startswith(f"pym-{os.getpid()}-")]
