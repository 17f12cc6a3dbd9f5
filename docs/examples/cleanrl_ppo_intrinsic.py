"""CleanRL-style PPO on a kudos NetHack task with an LLM-derived intrinsic reward.

This trainer knows nothing about kudos's own learner: the reward arrives through
``kudos.rewards.IntrinsicRewardWrapper`` around each env, exactly as it would for any other
Gymnasium trainer. Two ways to get the reward model:

- default (offline): fit the char-CNN classifier to the LLM answer probabilities shipped in
  ``bench/data/reward_caption_labels.jsonl.gz`` (labelled by kudos's embedded LLM);
- ``--online``: start the embedded LLM annotator; every caption the agent sees is submitted for
  labelling and an online trainer keeps improving the classifier in a background thread while
  PPO runs (the wrapper always scores with the latest published weights).

Run: ``.venv/bin/python docs/examples/cleanrl_ppo_intrinsic.py --total-steps 20000``
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import tempfile
from contextlib import ExitStack
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from kudos.envs import get_task, make_env
from kudos.rewards import (
    CaptionLabel,
    ClassifierReward,
    IntrinsicRewardWrapper,
    ShapingConfig,
    RewardModelTrainerConfig,
    follow_annotator,
)

LABELS = Path(__file__).resolve().parents[2] / "bench" / "data" / "reward_caption_labels.jsonl.gz"


def features(obs: dict[str, np.ndarray]) -> torch.Tensor:
    """Flat float features of a batch of observations: scaled bottom-line stats and message bytes."""
    blstats = np.sign(obs["blstats"]) * np.log1p(np.abs(obs["blstats"]))
    return torch.as_tensor(np.concatenate([blstats, obs["message"] / 255.0], axis=1), dtype=torch.float32)


def step_info(info: dict, key: str, ended: np.ndarray) -> np.ndarray:
    """``info[key]`` per env; envs whose episode ended this step report it in ``final_info``
    (their ``info`` is already the next episode's reset info)."""
    values = np.asarray(info.get(key, np.zeros(len(ended))), dtype=np.float64)
    if ended.any():
        values = np.where(ended, np.asarray(info["final_info"][key], dtype=np.float64), values)
    return values


class Agent(nn.Module):
    def __init__(self, num_inputs: int, num_actions: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(num_inputs, 128), nn.Tanh(), nn.Linear(128, 128), nn.Tanh())
        self.actor = nn.Linear(128, num_actions)
        self.critic = nn.Linear(128, 1)

    def value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(self.body(x)).squeeze(-1)

    def act(self, x: torch.Tensor, action: torch.Tensor | None = None):
        hidden = self.body(x)
        dist = torch.distributions.Categorical(logits=self.actor(hidden))
        if action is None:
            action = dist.sample()
        return action, dist.log_prob(action), dist.entropy(), self.critic(hidden).squeeze(-1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="Score")
    p.add_argument("--total-steps", type=int, default=20_000)
    p.add_argument("--num-envs", type=int, default=4)
    p.add_argument("--num-steps", type=int, default=128, help="rollout length per env")
    p.add_argument("--online", action="store_true", help="label captions with the embedded LLM while training")
    p.add_argument("--fit-steps", type=int, default=300, help="classifier training steps (offline mode)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)

    # 1. The reward model.
    model = ClassifierReward()
    with ExitStack() as stack:
        submit = None
        if args.online:
            from kudos.feedback import Annotator, PromptTemplate, open_store
            from kudos.feedback.factory import make_backend

            store = stack.enter_context(open_store(Path(tempfile.mkdtemp()) / "labels.sqlite"))
            annotator = stack.enter_context(Annotator(make_backend("embedded"), store, PromptTemplate(kind="classify")))
            stack.enter_context(follow_annotator(model, annotator, RewardModelTrainerConfig(min_labels=16)))
            submit = annotator.submit
        else:
            text = gzip.decompress(LABELS.read_bytes()).decode("utf-8")
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
            model.fit([CaptionLabel(r["caption"], float(r["soft_label"])) for r in rows], steps=args.fit_steps)

        # 2. Envs: the wrapper adds c_int * 1[P(helpful) > 0.5] / N_episode(caption)^3 to the scaled game
        # reward; ONI's coefficients (c_int 0.4, reward clipped at +-10), c_ext the task's ONI preset.
        shaping = ShapingConfig(c_ext=get_task(args.task).extrinsic_coef)

        def make(i: int):
            def thunk() -> gym.Env:
                env = make_env(args.task, observation_keys=("blstats", "message"))
                return IntrinsicRewardWrapper(env, model, shaping, on_caption=submit)
            return thunk

        envs = gym.vector.SyncVectorEnv(
            [make(i) for i in range(args.num_envs)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP
        )
        obs, _ = envs.reset(seed=args.seed)
        x = features(obs)
        agent = Agent(x.shape[1], envs.single_action_space.n)
        optimizer = torch.optim.Adam(agent.parameters(), lr=3e-4, eps=1e-5)

        # 3. PPO (CleanRL's ppo.py, condensed).
        T, B = args.num_steps, args.num_envs
        gamma, lam, clip, epochs, minibatches = 0.99, 0.95, 0.2, 4, 4
        done = torch.zeros(B)
        ext_return, int_return = np.zeros(B), np.zeros(B)
        for update in range(max(1, args.total_steps // (T * B))):
            xs, actions, logps, values, rewards, dones = [], [], [], [], [], []
            for _ in range(T):
                with torch.no_grad():
                    action, logp, _, value = agent.act(x)
                obs, reward, terminated, truncated, info = envs.step(action.numpy())
                xs.append(x), actions.append(action), logps.append(logp), values.append(value), dones.append(done)
                rewards.append(torch.as_tensor(reward, dtype=torch.float32))
                ended = np.logical_or(terminated, truncated)
                ext_return += step_info(info, "r_ext", ended)
                int_return += step_info(info, "r_int", ended)
                for i in np.flatnonzero(ended):
                    logging.info("episode end: game return %.1f, intrinsic (unshaped) %.2f",
                                 ext_return[i], int_return[i])
                ext_return[ended], int_return[ended] = 0.0, 0.0
                x, done = features(obs), torch.as_tensor(ended, dtype=torch.float32)
            with torch.no_grad():
                next_value = agent.value(x)
            advantages, gae = torch.zeros(T, B), torch.zeros(B)
            for t in reversed(range(T)):
                not_done = 1.0 - (dones[t + 1] if t + 1 < T else done)
                following = values[t + 1] if t + 1 < T else next_value
                delta = rewards[t] + gamma * following * not_done - values[t]
                gae = delta + gamma * lam * not_done * gae
                advantages[t] = gae
            returns = advantages + torch.stack(values)
            bx, ba, blp = torch.stack(xs).flatten(0, 1), torch.stack(actions).flatten(), torch.stack(logps).flatten()
            badv, bret = advantages.flatten(), returns.flatten()
            for _ in range(epochs):
                for mb in torch.randperm(T * B).chunk(minibatches):
                    _, logp, entropy, value = agent.act(bx[mb], ba[mb])
                    ratio = (logp - blp[mb]).exp()
                    adv = (badv[mb] - badv[mb].mean()) / (badv[mb].std() + 1e-8)
                    policy_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)).mean()
                    loss = policy_loss + 0.5 * (value - bret[mb]).pow(2).mean() - 0.01 * entropy.mean()
                    optimizer.zero_grad()
                    loss.backward()
                    nn.utils.clip_grad_norm_(agent.parameters(), 0.5)
                    optimizer.step()
            logging.info("update %d: mean shaped reward %.4f, loss %.3f",
                         update, torch.stack(rewards).mean(), loss.item())
        envs.close()


if __name__ == "__main__":
    main()
