"""What a run rewarded: per-caption statistics and the reward-hacking diagnostics built on them.

:class:`RunStats` is fed every rollout by the runner and checkpointed with it. Per caption it
counts the steps that showed it (*seen*), the episodes it appeared in (*episodes*: sightings with
a per-episode count of 1), the raw intrinsic reward it earned (*earned*: the reward model's
reward summed over its sightings, before shaping and the count exponent) and the reward it got at
its last sighting (*last reward*, from the reward model of that moment: scoring every caption
again with the final model at each checkpoint would cost 0.3-0.7 ms per caption, see
``bench/run_stats_cost.py``). Per env it adds up
extrinsic and raw intrinsic episode returns. ``kudos report`` reads all of it back from the
checkpoint; :func:`diagnose` is shared by the live display and the report.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

#: Scores captions with the run's latest reward model: N strings -> float32 (N,).
Scorer = Callable[[Sequence[str]], np.ndarray]
TOP_CAPTIONS = 10  # the "top 10" of the concentration diagnostic
_HELPFUL = 0.5  # a reward at or above this counts as the model saying "helpful"


@dataclass
class DiagnosticsConfig:
    """Reward-hacking diagnostics: computed while training (TensorBoard ``diagnostics/*``, a warning
    line in the live display) and in ``kudos report``. See docs/report.md.

    A warning is raised when the intrinsic and extrinsic returns of the last ``window_episodes``
    episodes correlate below ``min_return_correlation`` (the agent earns intrinsic reward at the
    expense of the task); when the 10 captions that earned most intrinsic reward in the run earn
    more than ``max_top10_share`` of it; when a caption is farmed: seen ``farm_min_count`` times or
    more per episode it appears in, earning ``farm_min_reward`` or more raw intrinsic reward per
    such episode above what the median caption earns per sighting (count x excess reward, what the
    count exponent ``beta`` is there to stop); and when
    the reward model disagrees with the LLM on more than ``max_disagreement`` of the last
    ``recent_labels`` classification labels (a reward >= 0.5 counts as "helpful").
    """

    window_episodes: int = 100
    min_episodes: int = 20  # no correlation warning from fewer episodes than this
    min_return_correlation: float = -0.3
    max_top10_share: float = 0.8
    farm_min_count: float = 10.0
    farm_min_reward: float = 5.0
    recent_labels: int = 500
    max_disagreement: float = 0.3


@dataclass
class Diagnostics:
    """The reward-hacking figures of a run (NaN where there is not enough data yet).

    ``return_correlation``: Pearson correlation of extrinsic and raw intrinsic episode returns over
    the recent episodes. ``top10_share``: share of the positive intrinsic reward earned by the 10
    captions that earned most. ``farmed``: (caption, mean sightings per episode it appears in,
    intrinsic reward above the median caption's per such episode), most rewarding first. ``disagreement``: fraction of
    recent classification labels the reward model contradicts. ``warnings``: one line per
    threshold crossed.
    """

    return_correlation: float = math.nan
    top10_share: float = math.nan
    farmed: list[tuple[str, float, float]] = field(default_factory=list)
    disagreement: float = math.nan
    warnings: list[str] = field(default_factory=list)

    def figures(self) -> dict[str, float]:
        """TensorBoard scalars (``diagnostics/*``); NaN figures are left out."""
        out = {
            "diagnostics/return_correlation": self.return_correlation,
            "diagnostics/top10_share": self.top10_share,
            "diagnostics/farmed_captions": float(len(self.farmed)),
            "diagnostics/disagreement": self.disagreement,
        }
        return {k: v for k, v in out.items() if not math.isnan(v)}


def return_correlation(episodes: Sequence[tuple[float, float]], min_episodes: int) -> float:
    """Pearson correlation of (extrinsic, intrinsic) episode returns; NaN with fewer than
    ``min_episodes`` episodes or when either return is constant."""
    if len(episodes) < max(min_episodes, 2):
        return math.nan
    ext, intr = np.asarray(episodes, dtype=np.float64).T
    if ext.std() == 0 or intr.std() == 0:
        return math.nan
    return float(np.corrcoef(ext, intr)[0, 1])


def disagreement(labels: Sequence[int], rewards: np.ndarray) -> float:
    """Fraction of LLM labels (1 helpful, 0 not) that the rewards (N,) contradict; NaN if none."""
    if len(labels) == 0:
        return math.nan
    return float(np.mean((np.asarray(rewards) >= _HELPFUL) != (np.asarray(labels) == 1)))


def diagnose(
    captions: Sequence[str],
    seen: np.ndarray,
    episodes: np.ndarray,
    earned: np.ndarray,
    recent_episodes: Sequence[tuple[float, float]],
    disagreement_rate: float,
    config: DiagnosticsConfig,
) -> Diagnostics:
    """The diagnostics of a run from its per-caption arrays (each (N,), aligned with ``captions``),
    its recent (extrinsic, intrinsic) episode returns and the reward model's disagreement rate."""
    out = Diagnostics(return_correlation(recent_episodes, config.min_episodes), disagreement=disagreement_rate)
    positive = np.clip(np.asarray(earned, dtype=np.float64), 0.0, None)
    if positive.sum() > 0:
        top = np.sort(positive)[-TOP_CAPTIONS:]
        out.top10_share = float(top.sum() / positive.sum())
    seen = np.asarray(seen, dtype=np.float64)
    episodes = np.maximum(np.asarray(episodes, dtype=np.float64), 1.0)
    per_episode_count = seen / episodes
    # Reward above the typical caption's: a model that gives every caption about the same reward
    # (untrained, or a constant bias) makes no caption worth farming.
    mean_reward = np.asarray(earned, dtype=np.float64) / np.maximum(seen, 1.0)
    baseline = float(np.median(mean_reward)) if len(mean_reward) else 0.0
    per_episode_reward = per_episode_count * (mean_reward - baseline)
    farmed = np.flatnonzero((per_episode_count >= config.farm_min_count) & (per_episode_reward >= config.farm_min_reward))
    farmed = farmed[np.argsort(-per_episode_reward[farmed], kind="stable")]
    out.farmed = [(captions[i], float(per_episode_count[i]), float(per_episode_reward[i])) for i in farmed]
    out.warnings = warning_lines(out.figures(), config)
    return out


def warning_lines(figures: dict[str, float], config: DiagnosticsConfig) -> list[str]:
    """One line per diagnostic threshold crossed, from ``diagnostics/*`` figures."""
    lines = []
    corr = figures.get("diagnostics/return_correlation")
    if corr is not None and corr < config.min_return_correlation:
        lines.append(f"intrinsic and extrinsic episode returns correlate at {corr:+.2f} "
                     f"(< {config.min_return_correlation:+.2f}): intrinsic reward earned at the task's expense?")
    share = figures.get("diagnostics/top10_share")
    if share is not None and share > config.max_top10_share:
        lines.append(f"the top {TOP_CAPTIONS} captions earn {share:.0%} of the intrinsic reward "
                     f"(> {config.max_top10_share:.0%})")
    farmed = figures.get("diagnostics/farmed_captions", 0.0)
    if farmed > 0:
        lines.append(f"{farmed:.0f} caption(s) farmed: seen >= {config.farm_min_count:g} times per episode for "
                     f">= {config.farm_min_reward:g} excess intrinsic reward per episode")
    rate = figures.get("diagnostics/disagreement")
    if rate is not None and rate > config.max_disagreement:
        lines.append(f"the reward model contradicts {rate:.0%} of the recent LLM labels (> {config.max_disagreement:.0%})")
    return lines


class RunStats:
    """Per-caption and per-episode statistics of a run (see the module docstring).

    Args:
        config: the diagnostics' window sizes and thresholds.
        num_envs: B, the envs of the run's rollouts.
    """

    def __init__(self, config: DiagnosticsConfig, num_envs: int) -> None:
        self.config = config
        self.index: dict[str, int] = {}  # caption -> row of the arrays below
        self.captions: list[str] = []
        self._seen: list[int] = []
        self._episodes: list[int] = []
        self._earned: list[float] = []
        self._last: list[float] = []
        self._episode_ext = np.zeros(num_envs, dtype=np.float64)
        self._episode_int = np.zeros(num_envs, dtype=np.float64)
        self.recent_episodes: deque[tuple[float, float]] = deque(maxlen=config.window_episodes)
        self._open_episodes: dict[Any, tuple[float, float]] = {}  # record_fragment's (ext, int) so far
        # (caption, LLM label) of recent classification labels, appended by the annotator thread.
        self.recent_labels: deque[tuple[str, int]] = deque(maxlen=config.recent_labels)
        # (prompt hash, model id) of the classification labels, so reports find them in the store.
        self.label_key: tuple[str, str] | None = None

    def __len__(self) -> int:
        return len(self.captions)

    def record(
        self,
        captions: Sequence[Sequence[str]],
        counts: np.ndarray,
        dones: np.ndarray,
        env_rewards: np.ndarray,
        r_int: np.ndarray,
    ) -> None:
        """Add one rollout: ``captions`` T lists of B strings, ``counts`` int (T, B) per-episode
        sightings, ``dones`` bool (T+1, B) (``dones[t+1]``: step t ended its episode),
        ``env_rewards`` and raw ``r_int`` float (T, B)."""
        for t, row in enumerate(captions):
            self._add_captions(row, (counts[t] == 1).tolist(), r_int[t].tolist())
            self._episode_ext += env_rewards[t]
            self._episode_int += r_int[t]
            for b in np.flatnonzero(dones[t + 1]):
                self.recent_episodes.append((float(self._episode_ext[b]), float(self._episode_int[b])))
                self._episode_ext[b] = self._episode_int[b] = 0.0

    def record_fragment(self, key: Any, captions: Sequence[str], counts: np.ndarray, done: bool,
                        env_rewards: np.ndarray, r_int: np.ndarray) -> None:
        """Add one episode fragment of N steps (engines that hand over fragments of episodes in
        any order, as RLlib does): ``key`` names its episode (the returns add up per key until a
        fragment with ``done``), ``counts`` int (N,), ``env_rewards`` and raw ``r_int`` float (N,).
        The partial returns of unfinished episodes are not checkpointed."""
        self._add_captions(captions, (np.asarray(counts) == 1).tolist(), np.asarray(r_int).tolist())
        ext, intr = self._open_episodes.pop(key, (0.0, 0.0))
        ext, intr = ext + float(np.sum(env_rewards)), intr + float(np.sum(r_int))
        if done:
            self.recent_episodes.append((ext, intr))
        else:
            self._open_episodes[key] = (ext, intr)

    def _add_captions(self, captions: Sequence[str], first: Sequence[bool], rewards: Sequence[float]) -> None:
        """Count one sighting of each caption (``first``: the first of its episode) and its reward."""
        index, seen, episodes, earned, last = self.index, self._seen, self._episodes, self._earned, self._last
        for caption, is_first, reward in zip(captions, first, rewards):
            if not caption:  # steps without a message earn nothing and are not captions
                continue
            i = index.get(caption)
            if i is None:
                i = index[caption] = len(self.captions)
                self.captions.append(caption)
                seen.append(0)
                episodes.append(0)
                earned.append(0.0)
                last.append(0.0)
            seen[i] += 1
            episodes[i] += is_first
            earned[i] += reward
            last[i] = reward

    def follow(self, annotator: Any) -> None:
        """Keep the new labels of the run's classification annotator (for the disagreement figure)
        and remember which prompt version and model they are stored under."""
        self.label_key = (annotator.prompt_hash, annotator.model_id)
        annotator.subscribe(self.observe_labels)

    def observe_labels(self, records: Iterable[Any]) -> None:
        """Annotator callback: keep the classification labels (records with ``label`` 0/1)."""
        self.recent_labels.extend((r.caption, int(r.label)) for r in records if r.label is not None)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``seen`` int64 (N,), ``episodes`` int64 (N,), ``earned`` float64 (N,), aligned with
        :attr:`captions`."""
        return (np.asarray(self._seen, dtype=np.int64), np.asarray(self._episodes, dtype=np.int64),
                np.asarray(self._earned, dtype=np.float64))

    def diagnose(self, scorer: Scorer | None) -> Diagnostics:
        """The diagnostics now; ``scorer`` (the latest reward model) judges the recent labels."""
        labels = list(self.recent_labels)
        rate = math.nan
        if labels and scorer is not None:
            rate = disagreement([label for _, label in labels], scorer([caption for caption, _ in labels]))
        return diagnose(self.captions, *self.arrays(), list(self.recent_episodes), rate, self.config)

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain values only (checkpoints load with ``weights_only=True``)."""
        seen, episodes, earned = self.arrays()
        return {
            "captions": list(self.captions),
            "seen": torch.from_numpy(seen),
            "episodes": torch.from_numpy(episodes),
            "earned": torch.from_numpy(earned),
            "last_reward": torch.tensor(self._last, dtype=torch.float32),
            "episode_ext": torch.from_numpy(self._episode_ext.copy()),
            "episode_int": torch.from_numpy(self._episode_int.copy()),
            "recent_episodes": list(self.recent_episodes),
            "recent_labels": list(self.recent_labels),
            "label_key": self.label_key,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.captions = list(state["captions"])
        self.index = {c: i for i, c in enumerate(self.captions)}
        self._seen = np.asarray(state["seen"], dtype=np.int64).tolist()
        self._episodes = np.asarray(state["episodes"], dtype=np.int64).tolist()
        self._earned = np.asarray(state["earned"], dtype=np.float64).tolist()
        self._last = np.asarray(state["last_reward"], dtype=np.float64).tolist()
        if len(state["episode_ext"]) == len(self._episode_ext):  # else a new env count: start afresh
            self._episode_ext[:] = np.asarray(state["episode_ext"])
            self._episode_int[:] = np.asarray(state["episode_int"])
        self.recent_episodes.extend((float(a), float(b)) for a, b in state["recent_episodes"])
        self.recent_labels.extend((str(c), int(label)) for c, label in state["recent_labels"])
        if self.label_key is None and state.get("label_key"):  # a resumed run keeps what follow() set
            prompt_hash, model_id = state["label_key"]
            self.label_key = (prompt_hash, model_id)
