"""Random-agent message census of the MiniHack tasks (docs/tasks.md): how often a uniformly random
agent succeeds, how many distinct captions it sees, and in what share of episodes each progress
message of the task appears at least once.

A task suits the learning benchmark when the random agent rarely succeeds (the extrinsic reward
is sparse) and its progress messages do appear (there is something for the LLM to reward).

    python bench/minihack_census.py --episodes 200 --seed 0
"""

from __future__ import annotations

import argparse
import re

from kudos.envs import EndStatus
from kudos.eval.episodes import RandomPolicy, run_episodes

#: Per task: (progress step, pattern of its message) in the order the task needs them.
PROGRESS: dict[str, tuple[tuple[str, str], ...]] = {
    "MiniHack-KeyRoom-S5": (
        ("sees the key", r"You see here a key named The Master Key"),
        ("picks up the key", r"^[a-zA-Z] - a key named The Master Key"),
        ("meets the locked door", r"This door is locked"),
        ("unlocks the door", r"You succeed in (unlocking the door|picking the lock)"),
        ("opens the door", r"The door opens"),
    ),
    "MiniHack-River": (
        ("moves a boulder", r"With great effort you move the boulder"),
        ("pushes a boulder into the water", r"You push the boulder into the water"),
        ("falls into the water", r"You fall into the water"),
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for task, steps in PROGRESS.items():
        reports = run_episodes(task, lambda env: RandomPolicy(env.action_space, seed=args.seed), args.episodes, seed=args.seed)
        n = len(reports)
        successes = sum(r.end_status == EndStatus.TASK_SUCCESSFUL for r in reports)
        distinct = {c for r in reports for c in r.captions if c}
        steps_total = sum(r.length for r in reports)
        print(f"\n{task}: {n} random episodes, {steps_total:,} steps, success {successes}/{n} ({successes / n:.1%}), "
              f"{len(distinct)} distinct captions")
        for name, pattern in steps:
            regex = re.compile(pattern)
            hit = sum(any(regex.search(c) for c in r.captions) for r in reports)
            print(f"  {name:34} in {hit:4}/{n} episodes ({hit / n:.1%})")


if __name__ == "__main__":
    main()
