"""Rollout workers, the slot protocol and the learner side, with real NetHack games: slots are
neither lost nor handed out twice, killed workers are replaced, the actors act with the weights
version they report (per-worker and policy-worker inference, on CPU), the learner trains on the
batches, and nothing outlives the run."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from kudos.envs import NUM_ACTIONS, get_task
from kudos.errors import ConfigError
from kudos.rl import workers
from kudos.rl.appo import APPOConfig
from kudos.rl.learner import Learner
from kudos.rl.policy import NetHackPolicy, get_policy_config
from kudos.rl.sampler import Sampler, SamplerConfig, resolve_device
from test_vector import _alive

POLICY = get_policy_config("small")
T = 4


def _config(**overrides) -> SamplerConfig:
    settings = dict(num_workers=2, envs_per_worker=2, rollout=T, batch_slots=2, seed=0)
    settings.update(overrides)
    return SamplerConfig(**settings)


def _wait_gone(pids: list[int], seconds: float = 30.0) -> list[str]:
    """What is left of ``pids`` after ``seconds``: each survivor's name, state, kernel wait
    channel and, where py-spy is installed, its stacks (then it is killed, so a failure leaves
    nothing behind either)."""
    deadline = time.time() + seconds
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    left = []
    for pid in (p for p in pids if _alive(p)):
        try:
            status = dict(line.split(":\t", 1) for line in open(f"/proc/{pid}/status").read().splitlines() if ":\t" in line)
            wchan = open(f"/proc/{pid}/wchan").read()
            left.append(f"{pid} {status.get('Name')} {status.get('State')} wchan={wchan} threads={status.get('Threads')}")
            if shutil.which("py-spy"):  # where its threads are, when the box has py-spy
                dump = subprocess.run(["py-spy", "dump", "--native", "--pid", str(pid)], capture_output=True, text=True, timeout=60)
                left.append(dump.stdout + dump.stderr)
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass  # gone meanwhile
    return left


def test_every_slot_continues_where_the_last_one_of_its_envs_stopped_and_the_learner_trains_on_them():
    """No slot lost or filled twice: each env's trajectory is continuous across batches (row 0 of
    its next slot is the bootstrap row T of its last one), and the pool's books balance."""
    policy = NetHackPolicy(POLICY, NUM_ACTIONS)
    learner = Learner(policy, APPOConfig(rollout=T))
    before = [p.detach().clone() for p in policy.parameters()]
    with Sampler("Score", POLICY, policy.state_dict(), _config(), device=resolve_device("cpu")) as sampler:
        last_row: dict[int, np.ndarray] = {}
        seen_slots: set[int] = set()
        deadline = time.time() + 120
        while learner.updates < 8 or (len(last_row) < 4 and time.time() < deadline):  # every env delivers
            sample = sampler.next_batch(timeout=120)
            assert sample.batch.actions.shape == (T, 2) and sample.batch.obs["blstats"].shape == (T + 1, 2, 27)
            assert len(sample.captions) == T and all(len(row) == 2 for row in sample.captions)
            assert (sample.caption_counts >= 1).all()
            blstats = sample.batch.obs["blstats"].numpy()
            for column, env in enumerate(sample.env_ids.tolist()):
                if env in last_row:
                    assert np.array_equal(blstats[0, column], last_row[env]), f"env {env} skipped or repeated a slot"
                last_row[env] = blstats[T, column].copy()
            seen_slots.update(sample.slots.tolist())
            learner.update(sample.batch)
            sampler.publish(policy.state_dict(), learner.updates)
        assert sorted(last_row) == [0, 1, 2, 3]
        assert len(seen_slots) > 2  # slots were recycled through the free queue
        sampler.pool.check()
        assert sampler.slots_dropped == 0 and sampler.worker_restarts == 0
        pids = sampler.workers.pids()
    assert learner.samples == learner.updates * T * 2
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))
    assert _wait_gone(pids, seconds=1.0) == []  # close() stopped them


def test_a_worker_killed_mid_rollout_is_restarted_and_its_slots_reclaimed(caplog):
    policy = NetHackPolicy(POLICY, NUM_ACTIONS)
    with Sampler("Score", POLICY, policy.state_dict(), _config(slots_ahead=0, batch_slots=1)) as sampler:
        sampler.next_batch(timeout=120)
        victim = sampler.workers.procs[0].pid
        held = np.flatnonzero(sampler.pool.owner == 0).tolist()
        assert held  # it was filling slots
        os.kill(victim, signal.SIGKILL)
        deadline = time.time() + 60
        envs_after: set[int] = set()
        slots_after: set[int] = set()
        while time.time() < deadline and not (sampler.worker_restarts and {0, 1} <= envs_after and set(held) <= slots_after):
            sample = sampler.next_batch(timeout=120)
            if sampler.worker_restarts:
                envs_after.update(sample.env_ids.tolist())
                slots_after.update(sample.slots.tolist())
        assert sampler.worker_restarts == 1
        assert sampler.workers.procs[0].pid != victim
        assert {0, 1} <= envs_after  # the new worker's envs deliver again
        assert set(held) <= slots_after  # the dead worker's slots came back into use
        sampler.pool.check()
    assert "rollout worker 0 died" in caplog.text


def _marked_weights(version: int) -> dict[str, torch.Tensor]:
    """Weights whose policy always picks action ``version % NUM_ACTIONS``."""
    policy = NetHackPolicy(POLICY, NUM_ACTIONS)
    with torch.no_grad():
        for p in policy.parameters():
            p.zero_()
        policy.actor.bias[version % NUM_ACTIONS] = 50.0
    return policy.state_dict()


@pytest.mark.parametrize("inference", ["worker", "policy-worker"])
def test_actors_act_with_the_weights_version_they_report(inference):
    with Sampler("Score", POLICY, _marked_weights(0), _config(inference=inference), version=0) as sampler:
        versions_seen: set[int] = set()
        for version in range(1, 9):
            sample = sampler.next_batch(timeout=120)
            actions = sample.batch.actions.numpy()
            assert (actions == sample.versions % NUM_ACTIONS).all()
            assert (sample.policy_lag >= 0).all()
            versions_seen.update(np.unique(sample.versions).tolist())
            sampler.publish(_marked_weights(version), version)
        assert len(versions_seen) > 1  # the actors picked up new weights
        assert sampler.workers.policy_worker_restarts == 0


def test_stale_slots_are_dropped_and_counted():
    policy = NetHackPolicy(POLICY, NUM_ACTIONS)
    with Sampler("Score", POLICY, policy.state_dict(), _config(max_policy_lag=0)) as sampler:
        sampler.next_batch(timeout=120)
        deadline = time.time() + 120
        while sampler.slots_delivered < 4 and time.time() < deadline:  # two full slots queued
            time.sleep(0.05)
        sampler.publish(policy.state_dict(), 5)  # everything acted so far is now 5 versions old
        sample = sampler.next_batch(timeout=120)
        assert sampler.slots_dropped >= 1
        assert (sample.versions == 5).all() and (sample.policy_lag == 0).all()
        sampler.pool.check()


def test_device_cuda_without_a_gpu_is_a_one_line_error():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_nothing_outlives_a_sigkilled_learner():
    """Workers exit when the learner process is SIGKILLed; its shared memory had no name."""
    script = textwrap.dedent(
        """
        import os, sys, time
        from kudos.envs import NUM_ACTIONS
        from kudos.rl.policy import NetHackPolicy, get_policy_config
        from kudos.rl.sampler import Sampler, SamplerConfig
        config = get_policy_config("small")
        sampler = Sampler("Score", config, NetHackPolicy(config, NUM_ACTIONS).state_dict(),
                          SamplerConfig(num_workers=2, envs_per_worker=2, rollout=4, batch_slots=1,
                                        inference="policy-worker"))
        sampler.next_batch(timeout=120)
        print(" ".join(map(str, sampler.workers.pids())), flush=True)
        time.sleep(600)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 3  # two rollout workers and the policy worker
        assert all(_alive(p) for p in pids)
    finally:
        proc.kill()
        proc.wait(timeout=10)
    left = _wait_gone(pids)
    assert not left, "\n".join(left)
    assert not [name for name in os.listdir("/dev/shm") if name.startswith(f"pym-{proc.pid}-")]


@pytest.mark.parametrize(
    "stuck",
    [
        "while True:  # a clean-up that never returns, whatever interrupts it\n"
        "    try:\n        time.sleep(600)\n    except SystemExit:\n        pass",
        "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # the signal never reaches Python\n"
        "time.sleep(600)",
    ],
    ids=["clean-up-hangs", "signal-missed"],
)
def test_a_worker_ends_within_the_deadline_after_its_parent_is_sigkilled(stuck):
    """However stuck its main thread, a worker whose parent died ends within the exit deadline
    (the watching thread notices, and SIGALRM's default action needs no Python)."""
    script = "import signal, time\nfrom kudos.rl import workers\nworkers._EXIT_DEADLINE_S = 1\n"
    script += 'workers._die_with_parent()\nprint("ready", flush=True)\n' + stuck
    # The worker's parent is a shell that we SIGKILL, like a learner.
    parent = subprocess.Popen(
        ["/bin/sh", "-c", f'{sys.executable} -c "$0" & echo $!; wait', script], stdout=subprocess.PIPE, text=True
    )
    try:
        pid = int(parent.stdout.readline())
        assert parent.stdout.readline().strip() == "ready"
        started = time.time()
    finally:
        parent.kill()
        parent.wait(timeout=10)
    left = _wait_gone([pid], seconds=20)
    assert not left, "\n".join(left)
    assert time.time() - started < 15


def _start_after_the_parent_died() -> None:
    """Spawn target of the test below: start watching only once the parent is gone."""
    time.sleep(1.0)
    workers._die_with_parent()
    time.sleep(600)


def test_a_worker_whose_learner_died_while_it_started_exits():
    """The worker watches the pid of the process that started it, not its parent at the time it
    looks: a learner SIGKILLed during a worker's start-up must not leave it watching init."""
    script = textwrap.dedent(
        f"""
        import multiprocessing, os, signal, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import test_workers
        proc = multiprocessing.get_context("spawn").Process(target=test_workers._start_after_the_parent_died, daemon=True)
        proc.start()
        print(proc.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    learner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pid = int(learner.stdout.readline())
    learner.wait(timeout=30)
    left = _wait_gone([pid], seconds=30)
    assert not left, "\n".join(left)


def test_workers_size_the_policy_to_the_tasks_action_set():
    task = get_task("MiniHack-River")
    policy = NetHackPolicy(POLICY, task.num_actions)
    with Sampler(task.name, POLICY, policy.state_dict(), _config(num_workers=1)) as sampler:
        sample = sampler.next_batch(timeout=120)
        assert 0 <= int(sample.batch.actions.min()) and int(sample.batch.actions.max()) < task.num_actions


def test_whole_rounds_give_every_env_once_in_order_and_continue_each_env():
    """What `kudos train` uses: column i is env i in every batch, and each column continues where
    the same column of the previous batch stopped."""
    policy = NetHackPolicy(POLICY, NUM_ACTIONS)
    config = _config(batch_slots=4, whole_rounds=True)
    with Sampler("Score", POLICY, policy.state_dict(), config) as sampler:
        previous = None
        for _ in range(4):
            sample = sampler.next_batch(timeout=120)
            assert sample.env_ids.tolist() == [0, 1, 2, 3]
            blstats = sample.batch.obs["blstats"].numpy()
            if previous is not None:
                assert np.array_equal(blstats[0], previous)
            previous = blstats[T].copy()
        sampler.pool.check()
