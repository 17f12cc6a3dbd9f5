"""The multi-process vector: shapes, agreement with single envs, crash recovery, Ctrl-C."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from kudos.envs import DEFAULT_OBSERVATION_KEYS, NUM_ACTIONS, make_env
from kudos.envs.vector import VectorNetHack


@pytest.fixture(scope="module")
def vec():
    with VectorNetHack("Score", 4, num_workers=2, seed=100) as v:
        yield v


def test_shapes_and_types(vec):
    obs = vec.reset()
    assert set(obs) == set(DEFAULT_OBSERVATION_KEYS)
    assert obs["glyphs"].shape == (4, 21, 79) and obs["tty_chars"].shape == (4, 24, 80)
    out = vec.step(np.zeros(4, dtype=np.int64))
    assert out.reward.shape == (4,) and out.reward.dtype == np.float32
    assert out.terminated.dtype == np.bool_ and out.truncated.dtype == np.bool_
    assert len(out.captions) == 4 and all(isinstance(c, str) for c in out.captions)
    assert out.caption_counts.dtype == np.int32 and (out.caption_counts >= 1).all()
    with pytest.raises(ValueError, match="shape"):
        vec.step(np.zeros(3, dtype=np.int64))


def test_vector_matches_single_envs_step_for_step(vec):
    rng = np.random.default_rng(0)
    actions = rng.integers(NUM_ACTIONS, size=(60, 4))
    vec.reset()
    got = [vec.step(a) for a in actions]
    for i in range(4):
        env = make_env("Score")
        env.reset(seed=100 + i)
        for t, a in enumerate(actions[:, i]):
            obs, reward, terminated, truncated, info = env.step(int(a))
            assert got[t].captions[i] == info["caption"]
            assert got[t].caption_counts[i] == info["caption_count"]
            assert got[t].reward[i] == np.float32(reward)
            if terminated or truncated:
                obs, _ = env.reset()
            np.testing.assert_array_equal(got[t].obs["glyphs"][i], obs["glyphs"])
        env.close()


def test_episodes_are_summarised_and_autoreset():
    with VectorNetHack("Score", 2, num_workers=1, seed=0, max_episode_steps=3) as v:
        v.reset()
        outs = [v.step(np.full(2, 19)) for _ in range(3)]  # WAIT
        assert not outs[1].truncated.any()
        assert outs[2].truncated.all()
        assert sorted(e.env for e in outs[2].episodes) == [0, 1]
        assert all(e.length == 3 for e in outs[2].episodes)
        assert (v.step(np.full(2, 19)).caption_counts >= 1).all()  # fresh episodes go on


def test_a_crashed_worker_is_restarted(caplog):
    with VectorNetHack("Score", 4, num_workers=2, seed=0) as v:
        v.reset()
        v.step(np.zeros(4, dtype=np.int64))
        victim = v._procs[0].pid
        os.kill(victim, signal.SIGKILL)
        out = v.step(np.zeros(4, dtype=np.int64))
        assert v.restarts == 1
        assert out.truncated[:2].all() and (out.reward[:2] == 0).all()
        assert v._procs[0].pid != victim and v._procs[0].is_alive()
        for _ in range(5):  # and it keeps going
            out = v.step(np.random.default_rng(1).integers(NUM_ACTIONS, size=4))
        assert len(out.captions) == 4
    assert "died with exit code -9; restarting it" in caplog.text


def test_ctrl_c_shuts_down_cleanly(tmp_path):
    script = textwrap.dedent(
        """
        import numpy as np
        from kudos.envs.vector import VectorNetHack
        with VectorNetHack("Score", 4, num_workers=2, seed=0) as v:
            v.reset()
            print(" ".join(str(p.pid) for p in v._procs), flush=True)
            while True:
                v.step(np.zeros(4, dtype=np.int64))
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )
    workers = [int(p) for p in proc.stdout.readline().split()]
    assert len(workers) == 2
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    try:
        proc.wait(timeout=20)
    finally:
        proc.kill()
    assert "KeyboardInterrupt" in proc.stderr.read()
    deadline = time.time() + 5
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie has exited
        return f.read().split()[2] != "Z"
