"""Reward-model inference throughput on one core, and the cost of online training beside it.

Captions come from real NetHack play (a random agent on the Score task), in batches of 4,096
consecutive steps, as a learner scores a rollout. Models cache their value per distinct caption
(per published snapshot), so the steady state costs a dictionary lookup per caption; the first
pass over a fresh snapshot ("cold") runs the network once per distinct caption. Its figure is
given for the process's first batches and for batches after the rest of the play (a learner that
has run a while: the convolutions have met most input shapes, see ``main``).

Figures (captions/s): retrieval, classification and ranking, cold and steady; then classifier
throughput with the online trainer running in a background thread against without, as a ratio
measured in this run, at the trainer's default warm-up pace (5 steps/s, while it holds fewer than
2,000 labels), its steady pace (2 steps/s) and a fast pace (20 steps/s); weights are published
every 10 steps, and the training steps the trainer actually took are printed. The trainer is a
thread that needs the GIL between torch operations, while this scoring loop is pure Python that
holds it: the trainer gets it back once per switch interval, so this part runs with the interval
``kudos train`` sets (``--switch-interval``; at Python's default 5 ms the trainer is starved).
Targets: classification and ranking >= 200,000/s, retrieval >= 1,000,000/s, ratio >= 0.8.

Run: ``.venv/bin/python bench/reward_inference.py`` (about two minutes).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from kudos.envs import make_env
from kudos.rl.runner import GIL_SWITCH_INTERVAL_S
from kudos.rewards import (
    CaptionLabel,
    ClassifierReward,
    LabelQueue,
    RewardModelTrainer,
    PairLabel,
    RankerReward,
    RetrievalReward,
    RewardModel,
    RewardModelTrainerConfig,
)


def play(steps: int, seed: int) -> list[str]:
    """Captions of ``steps`` random-agent steps on the Score task."""
    env = make_env("Score", observation_keys=("blstats", "message"))
    env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    captions = []
    for _ in range(steps):
        _, _, terminated, truncated, info = env.step(int(rng.integers(env.action_space.n)))
        captions.append(info["caption"])
        if terminated or truncated:
            env.reset()
    env.close()
    return captions


def throughput(model: RewardModel, batches: list[list[str]], seconds: float) -> float:
    """Captions/s scoring ``batches`` round-robin for about ``seconds``."""
    done, start, i = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        batch = batches[i % len(batches)]
        model(batch)
        done += len(batch)
        i += 1
    return done / (time.perf_counter() - start)


def cold(model: ClassifierReward | RankerReward, batches: list[list[str]]) -> float:
    """Median captions/s of a batch scored right after a publish (every distinct caption goes
    through the network), over ``batches``."""
    rates = []
    for batch in batches:
        model.publish()
        start = time.perf_counter()
        model(batch)
        rates.append(len(batch) / (time.perf_counter() - start))
    return float(np.median(rates))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=163_840, help="steps of play to take captions from")
    parser.add_argument("--fresh-batches", type=int, default=10,
                        help="batches the fresh-snapshot figures are measured on (first and last of the play)")
    parser.add_argument("--batch", type=int, default=4_096)
    parser.add_argument("--seconds", type=float, default=3.0, help="timing window per figure")
    parser.add_argument("--windows", type=int, default=6, help="alternating windows for the trainer overhead")
    parser.add_argument("--window-s", type=float, default=1.0)
    parser.add_argument("--switch-interval", type=float, default=GIL_SWITCH_INTERVAL_S,
                        help="GIL switch interval (s) for the trainer-overhead part (default: kudos train's)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    captions = play(args.steps, seed=0)
    batches = [captions[i : i + args.batch] for i in range(0, len(captions) - args.batch + 1, args.batch)]
    distinct = sorted(set(captions))
    per_batch = np.mean([len(set(b)) for b in batches])
    print(f"{len(captions)} captions from real play, {len(distinct)} distinct; batches of {args.batch} "
          f"hold {per_batch:.0f} distinct captions on average; torch threads: {torch.get_num_threads()}")

    # Labels: a caption is helpful when it mentions killing or gold (any labelling will do here).
    helpful = [("kill" in c or "gold" in c) for c in distinct]
    labels = [CaptionLabel(c, float(h)) for c, h in zip(distinct, helpful)]
    retrieval = RetrievalReward()
    retrieval.fit(labels[::2])
    classifier = ClassifierReward()
    classifier.fit(labels, steps=50)
    ranker = RankerReward()
    rng = np.random.default_rng(0)
    pairs = [PairLabel(distinct[a], distinct[b], 0.5 if helpful[a] == helpful[b] else float(helpful[a]))
             for a, b in rng.integers(len(distinct), size=(2000, 2))]
    ranker.fit(pairs, steps=50)

    print(f"retrieval:       {throughput(retrieval, batches, args.seconds):>12,.0f} captions/s (target 1,000,000)")
    n = args.fresh_batches
    for name, model in (("classification", classifier), ("ranking", ranker)):
        # A convolution's first call with a new input shape also builds its oneDNN kernel, so the
        # process's first fresh batches are slower than those of a learner that has run a while.
        first = cold(model, batches[:n])
        cold(model, batches[n:-n])
        fresh = cold(model, batches[-n:])
        steady = throughput(model, batches, args.seconds)
        print(f"{name + ':':<16} {steady:>12,.0f} captions/s steady (target 200,000); on a fresh snapshot "
              f"{fresh:,.0f} captions/s after {len(batches) - n} batches, {first:,.0f} over the process's "
              f"first {n}")

    # The machine's other load drifts, so "with" and "without" windows alternate and the ratio of
    # their medians is reported.
    sys.setswitchinterval(args.switch_interval)
    print(f"online trainer overhead ({args.windows} alternating windows of {args.window_s} s each, "
          f"GIL switch interval {1000 * args.switch_interval:g} ms):")
    rollouts = batches[:n]
    for name, config in (
        ("default warm-up pace", RewardModelTrainerConfig(warmup_labels=len(labels) + 1)),
        ("default steady pace", RewardModelTrainerConfig(warmup_labels=0)),
        ("fast pace", RewardModelTrainerConfig(warmup_labels=0, steady_steps_per_s=20.0)),
    ):
        # warmup_labels above the label count keeps the trainer at its warm-up pace throughout.
        pace = config.warmup_steps_per_s if config.warmup_labels else config.steady_steps_per_s
        trainer = RewardModelTrainer(classifier, LabelQueue(labels), config)
        without, with_trainer = [], []
        steps, version = classifier.steps, classifier.version
        for _ in range(args.windows):
            for batch in rollouts:  # close() published: refill the cache, or "without" pays for it
                classifier(batch)
            without.append(throughput(classifier, rollouts, args.window_s))
            trainer.start()
            with_trainer.append(throughput(classifier, rollouts, args.window_s))
            trainer.close()
        ratio = np.median(with_trainer) / np.median(without)
        taken = (classifier.steps - steps) / (args.windows * args.window_s)
        print(f"  {name} ({pace:g} steps/s): {np.median(with_trainer):,.0f} captions/s with the trainer vs "
              f"{np.median(without):,.0f} without: ratio {ratio:.2f} (target >= 0.8); the trainer took "
              f"{taken:.1f} steps/s of its {pace:g} and published {classifier.version - version} snapshots")


if __name__ == "__main__":
    main()
