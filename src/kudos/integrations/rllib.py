"""kudos's intrinsic reward on Ray RLlib's APPO (new API stack, ray 2.60; install ``kudos[ray]``).

Who does what in an RLlib run (:func:`appo_config` builds the config, :class:`KudosAPPO` runs it):

- env runners (Ray actors, any node) step :class:`RLlibNetHackEnv`, kudos's task env, and act
  with :class:`NetHackRLModule`, kudos's recurrent :class:`~kudos.rl.policy.NetHackPolicy`;
- the learner runs :class:`IntrinsicRewardConnector` first in its connector pipeline: it scores
  each training batch's captions with the newest reward-model snapshot it holds, replaces the
  episodes' rewards by kudos's shaped reward and submits the captions for labelling;
- :class:`RewardService`, one Ray actor per run, owns kudos's
  :class:`~kudos.rewards.intrinsic.IntrinsicReward` (annotator, label store, reward-model trainer)
  and hands out versioned, scoring-only snapshots of the reward model
  (:mod:`kudos.rewards.snapshot`) through the object store.

Nothing on the training path waits for the LLM or the service: a connector asks for a newer
snapshot in the background and picks it up at a later batch. Labels go to the label store, so a
restarted service (Ray restarts it when its actor dies) relearns from every label already got,
and runs on several machines share one PostgreSQL store (the store's claims keep them from asking
the LLM twice for the same caption).

Differences from kudos's own trainer, on purpose: RLlib resets an env on the step *after* it
ends, so the policy sees each terminal observation (kudos's vector resets within the step); the
GRU state is reset by RLlib at episode starts (sequences never cross episodes), and
backpropagates through ``max_seq_len = appo.recurrence`` steps. ``reward.shaping.episode_cap`` is kept
per episode (RLlib hands the learner fragments of many episodes interleaved); the ``cosine``
reward's snapshot carries its goal only, and each learner embeds with its own sentence encoder.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import ray
import torch
from ray.rllib.algorithms.appo import APPO, APPOConfig as RLlibAPPOConfig
from ray.rllib.connectors.connector_v2 import ConnectorV2
from ray.rllib.core.columns import Columns
from ray.rllib.core.learner.utils import make_target_network
from ray.rllib.core.rl_module.apis import TARGET_NETWORK_ACTION_DIST_INPUTS, TargetNetworkAPI, ValueFunctionAPI
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.core.rl_module.torch import TorchRLModule

from kudos.cpu import CPUBudget
from kudos.envs import get_task, make_env
from kudos.errors import ConfigError
from kudos.rl.experiment import KudosConfig
from kudos.feedback.config import LLMConfig
from kudos.rewards.base import RewardModel
from kudos.rewards.intrinsic import IntrinsicReward, RewardConfig
from kudos.rewards.service import carry_scoring_statistics, load_scoring_statistics, scoring_statistics
from kudos.rewards.shaping import RewardShaper, ShapingConfig
from kudos.rewards.snapshot import Snapshot, SnapshotPublisher
from kudos.rewards.trainer import RewardModelTrainerConfig
from kudos.rewards.wrapper import intrinsic_rewards
from kudos.rl.policy import POLICY_OBSERVATION_KEYS, NetHackPolicy, PolicyConfig
from kudos.rl.runstats import DiagnosticsConfig, RunStats

log = logging.getLogger(__name__)

#: Where :func:`appo_config` puts kudos's settings in RLlib's config (``learner_config_dict``).
SETTINGS_KEY = "kudos"


# --- the env ------------------------------------------------------------------------------------


class RLlibNetHackEnv(gym.Env):
    """kudos's task env (:func:`kudos.envs.make_env`) as RLlib builds envs: from one ``env_config``
    dict (``task``, optional ``max_episode_steps`` and ``macros``). Observations are the policy's
    keys only, copied (NLE refills its arrays in place, and RLlib keeps every observation of a
    fragment); ``info`` of every step holds ``caption`` and ``caption_count`` as in kudos."""

    def __init__(self, env_config: dict[str, Any] | None = None) -> None:
        env_config = dict(env_config or {})
        self.env = make_env(
            env_config.get("task", "Score"),
            observation_keys=POLICY_OBSERVATION_KEYS,
            max_episode_steps=env_config.get("max_episode_steps"),
            macros=env_config.get("macros", "oni"),
        )
        self.observation_space = self.env.observation_space
        self.action_space = self.env.action_space

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        return {k: v.copy() for k, v in obs.items()}, {"end_status": int(info.get("end_status", 0))}

    def step(self, action: int) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(int(action))
        return {k: v.copy() for k, v in obs.items()}, reward, terminated, truncated, info

    def close(self) -> None:
        self.env.close()


# --- the policy ---------------------------------------------------------------------------------


class NetHackRLModule(TorchRLModule, ValueFunctionAPI, TargetNetworkAPI):
    """kudos's :class:`NetHackPolicy` (encoders + GRU core, actor and critic heads) as a stateful
    Torch RLModule, with APPO's target network (a lagged copy of the whole policy).

    ``model_config``: ``policy`` (a :class:`~kudos.rl.policy.PolicyConfig`, the run's ``policy``
    section; default the small sizes) and ``max_seq_len`` (steps per training sequence, RLlib's key). RLlib hands the
    module batches of shape ``(B, T, ...)`` with the GRU state ``{"h": (B, H)}`` before step 0;
    the policy runs time-major.
    """

    def setup(self) -> None:
        self.policy = NetHackPolicy(self.model_config.get("policy", PolicyConfig()), self.action_space.n)

    def get_initial_state(self) -> dict[str, np.ndarray]:
        return {"h": np.zeros(self.policy.hidden_size, dtype=np.float32)}

    @staticmethod
    def _run(policy: NetHackPolicy, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits (B, T, A), values (B, T), final state (B, H)) of ``policy`` on ``batch``."""
        obs = {k: batch[Columns.OBS][k].transpose(0, 1) for k in POLICY_OBSERVATION_KEYS}  # (T, B, ...)
        steps, size = obs["blstats"].shape[:2]
        # RLlib cuts sequences at episode starts and gives each its start state: no resets inside.
        done = torch.zeros(steps, size, dtype=torch.bool, device=obs["blstats"].device)
        out = policy(obs, batch[Columns.STATE_IN]["h"], done)
        return out.logits.transpose(0, 1), out.values.transpose(0, 1), out.core_state

    def _forward(self, batch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        logits, values, state = self._run(self.policy, batch)
        # The values ride along as the "embeddings" compute_values() receives: one forward pass.
        return {Columns.ACTION_DIST_INPUTS: logits, Columns.STATE_OUT: {"h": state}, Columns.EMBEDDINGS: values}

    def compute_values(self, batch: dict[str, Any], embeddings: Any = None) -> torch.Tensor:
        return self._run(self.policy, batch)[1] if embeddings is None else embeddings

    def make_target_networks(self) -> None:
        self._target = make_target_network(self.policy)

    def get_target_network_pairs(self) -> list[tuple[torch.nn.Module, torch.nn.Module]]:
        return [(self.policy, self._target)]

    def forward_target(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {TARGET_NETWORK_ACTION_DIST_INPUTS: self._run(self._target, batch)[0]}


# --- the reward service -------------------------------------------------------------------------


class RewardService:
    """One run's :class:`IntrinsicReward` in a Ray actor (start it with :meth:`start`).

    Args:
        reward, llm, goal, trainer, cpu: as for :class:`IntrinsicReward`.
        diagnostics: how many recent classification labels to keep for ``kudos report``.
        state: ``[ref]``, an object-store reference to a :meth:`state_dict` to resume from (None:
            a fresh service). A reference, not the dict: Ray re-runs ``__init__`` with the same
            arguments when it restarts the actor, and inlined large arguments may be gone by then
            (ray-project/ray#53727); the caller keeps the reference alive.

    Snapshots are numbered from 1 within one incarnation of the actor, and each incarnation has
    its own ``epoch`` id, so a connector notices a restarted service and takes its snapshot.
    """

    def __init__(self, reward: RewardConfig, llm: LLMConfig, goal: str, trainer: RewardModelTrainerConfig | None = None,
                 state: list[Any] | None = None, diagnostics: DiagnosticsConfig | None = None,
                 cpu: CPUBudget | None = None) -> None:
        self.reward = IntrinsicReward(reward, llm, goal, trainer, cpu)
        if state:
            self.reward.load_state_dict(ray.get(state[0]))
        # The recent classification labels and their store key; the connector keeps the rest.
        self.labels = RunStats(diagnostics or DiagnosticsConfig(), num_envs=0)
        if "classify" in self.reward.annotators:
            self.labels.follow(self.reward.annotators["classify"])
        self.reward.start()
        # Thread-safe: the actor serves a few calls at once (max_concurrency).
        self.snapshots = SnapshotPublisher(self.reward.model)

    @classmethod
    def start(cls, settings: dict[str, Any], state: list[Any] | None = None) -> Any:
        """The service as a Ray actor, restarted by Ray whenever it dies (the labels are in the
        store; the reward model relearns them), for a run's :func:`appo_config` settings."""
        actor = ray.remote(cls).options(max_restarts=-1, max_task_retries=-1, max_concurrency=4, num_cpus=0)
        return actor.remote(settings["reward"], settings["llm"], settings["goal"], settings.get("trainer"), state,
                            settings.get("diagnostics"), settings.get("cpu"))

    def submit(self, captions: list[str]) -> None:
        """Hand a batch's captions (repeats included) to the annotators, as kudos's learner does."""
        self.reward.submit(captions)

    def snapshot_since(self, epoch: str | None, version: int) -> Snapshot | None:
        """The newest snapshot if it is newer than (``epoch``, ``version``), else None."""
        return self.snapshots.since(epoch, version)

    def metrics(self) -> dict[str, float]:
        return {**self.reward.metrics(), "reward_service/snapshot_version": float(self.snapshots.version)}

    def state_dict(self) -> dict[str, Any]:
        return self.reward.state_dict()

    def recent_labels(self) -> dict[str, Any]:
        """The :class:`RunStats` fields the service holds: ``label_key`` and ``recent_labels``."""
        return {"label_key": self.labels.label_key, "recent_labels": list(self.labels.recent_labels)}

    def close(self) -> None:
        self.reward.close()


# --- the learner connector ----------------------------------------------------------------------


class IntrinsicRewardConnector(ConnectorV2):
    """First piece of the learner's connector pipeline: kudos's shaped reward for every step of
    the batch's episodes, in place of the env's reward.

    Per batch: reward t of an episode pairs with the caption and episode count the env returned
    with action t (``infos[t + 1]``; ``infos[0]`` is the reset's), and the batch is shaped as
    :func:`~kudos.rewards.wrapper.shaped_rewards` shapes a rollout (one update of the normalisation
    statistics per batch, as kudos's learner makes per rollout), the episode cap added up per
    episode across fragments. The batch's captions go to the
    :class:`RewardService` without waiting (all of them, repeats included, as kudos's learner
    submits them: ranking samples pairs by frequency); a newer snapshot is asked for in the
    background and used from the batch after it arrived, with the normalisation statistics this
    connector's scoring moved (a ranker's; they go into :meth:`get_state`).

    Args:
        shaping: the run's shaping coefficients (``reward.shaping_for(task coefficient)``).
        skip_empty_caption: ``""`` earns 0 (``llm.annotator.skip_empty``; ONI scores it).
        scorer: the reward model to start with (the service's first snapshot); None scores 0
            until one arrives (and is what ``reward.type=none`` uses).
        diagnostics: settings of the run statistics the connector keeps (:attr:`run_stats`: what
            the run rewarded, per caption, as kudos's trainer keeps them for ``kudos report``).
    """

    def __init__(self, input_observation_space: Any = None, input_action_space: Any = None, *,
                 shaping: ShapingConfig, skip_empty_caption: bool = False, scorer: RewardModel | None = None,
                 diagnostics: DiagnosticsConfig | None = None, **kwargs: Any) -> None:
        super().__init__(input_observation_space, input_action_space, **kwargs)
        self.shaper = RewardShaper(shaping, num_envs=1)
        #: Intrinsic reward collected so far by each unfinished episode (``episode_cap`` only).
        self.episode_intrinsic: dict[str, float] = {}
        self.skip_empty_caption = skip_empty_caption
        self.scorer = scorer
        self.service: Any = None
        self.epoch: str | None = None
        self.version = 0
        self.faults = 0  # failed calls to the service (it is restarted by Ray; training goes on)
        self._pending: Any = None
        self.run_stats = RunStats(diagnostics or DiagnosticsConfig(), num_envs=0)
        self._totals = np.zeros(4)  # since the last figures(): steps, env reward, intrinsic, nonzero intrinsic
        self.steps_shaped = 0  # env steps this connector shaped, all fragments (not checkpointed)

    def attach(self, service: Any, snapshot: Snapshot | None) -> None:
        """Use ``service`` (a :class:`RewardService` actor) from now on, starting with ``snapshot``."""
        self.service, self._pending = service, None
        if snapshot is not None:
            self._take(snapshot)

    def _take(self, snapshot: Snapshot) -> None:
        """Score with ``snapshot`` from now on, with the statistics scoring moved here so far (the
        snapshot brings the service's, which no scoring moves)."""
        self.epoch, self.version = snapshot.epoch, snapshot.version
        self.scorer = carry_scoring_statistics(self.scorer, snapshot.model)

    def _refresh(self) -> None:
        """Take a snapshot that arrived since the last batch and ask for the next one; never waits."""
        if self.service is None:
            return
        if self._pending is not None:
            ready, _ = ray.wait([self._pending], timeout=0)
            if not ready:
                return
            try:
                newer = ray.get(self._pending)
            except ray.exceptions.RayError as exc:
                self.faults += 1
                log.warning("reward service call failed (%s); keeping snapshot %d", type(exc).__name__, self.version)
                newer = None
            if newer is not None:
                self._take(newer)
        self._pending = self.service.snapshot_since.remote(self.epoch, self.version)

    def _submit(self, captions: list[str]) -> None:
        if self.service is not None:
            self.service.submit.remote(captions)  # fire and forget: a lost call only delays those labels

    def shape(self, episodes: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
        """Shaped rewards for ``episodes`` (written into them), concatenated in episode order,
        with the raw intrinsic rewards: two float32 ``(N,)`` arrays, N the steps of all episodes."""
        episodes = [e for e in episodes if len(e)]
        if not episodes:
            return np.zeros(0, np.float32), np.zeros(0, np.float32)
        lengths = [len(e) for e in episodes]
        infos = [info for e in episodes for info in e.get_infos()[1:]]
        r_env = np.concatenate([np.asarray(e.get_rewards(), dtype=np.float32) for e in episodes])[:, None]
        captions = [[info["caption"]] for info in infos]
        counts = np.array([info["caption_count"] for info in infos])[:, None]
        ends = np.concatenate([(np.arange(n) == n - 1) & e.is_done for n, e in zip(lengths, episodes)])[:, None]
        self._submit([info["caption"] for info in infos])
        if self.scorer is None:
            r_int = np.zeros_like(r_env)
        else:
            r_int = intrinsic_rewards(self.scorer, [c[0] for c in captions], self.skip_empty_caption)[:, None]
        # The shaper's steps, with the episode cap kept per episode (fragments of one episode
        # arrive in order, but other episodes' fragments come in between).
        intrinsic = self.shaper.intrinsic(r_int, counts)  # one normalisation update per batch
        offsets = np.cumsum([0, *lengths])
        if self.shaper.config.episode_cap is not None:
            for episode, start, stop in zip(episodes, offsets[:-1], offsets[1:]):
                collected = np.array([self.episode_intrinsic.pop(episode.id_, 0.0)])
                self.shaper.cap(intrinsic[start:stop], ends[start:stop], collected)
                if not episode.is_done:
                    self.episode_intrinsic[episode.id_] = float(collected[0])
        total = self.shaper.extrinsic(r_env) + intrinsic
        for episode, start, stop in zip(episodes, offsets[:-1], offsets[1:]):
            episode.set_rewards(new_data=total[start:stop, 0])
            self.run_stats.record_fragment(episode.id_, [c[0] for c in captions[start:stop]], counts[start:stop, 0],
                                           episode.is_done, r_env[start:stop, 0], r_int[start:stop, 0])
        self._totals += (len(r_env), r_env.sum(), r_int.sum(), np.count_nonzero(r_int))
        self.steps_shaped += len(r_env)
        return total[:, 0], r_int[:, 0]

    def figures(self) -> dict[str, float]:
        """The per-step figures kudos's trainer logs, over the steps shaped since the last call,
        and the run statistics' diagnostics (TensorBoard keys)."""
        steps, env_reward, intrinsic, nonzero = self._totals
        self._totals = np.zeros(4)
        out = self.run_stats.diagnose(None).figures()
        if steps:
            out.update({"reward/extrinsic_per_step": env_reward / steps, "intrinsic/mean": intrinsic / steps,
                        "intrinsic/nonzero_fraction": nonzero / steps})
        return out

    def __call__(self, *, rl_module: Any, batch: dict[str, Any], episodes: list[Any], explore: Any = None,
                 shared_data: Any = None, metrics: Any = None, **kwargs: Any) -> Any:
        self._refresh()
        _, r_int = self.shape(episodes)
        if metrics is not None and r_int.size:
            metrics.log_value(("kudos", "intrinsic_mean"), float(r_int.mean()), window=20)
            metrics.log_value(("kudos", "snapshot_version"), self.version, reduce="max", window=1)
            metrics.log_value(("kudos", "service_faults"), self.faults, reduce="max", window=1)
        return batch

    def get_state(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {"shaper": self.shaper.state_dict(), "run_stats": self.run_stats.state_dict(),
                "episode_intrinsic": dict(self.episode_intrinsic),
                "scoring": scoring_statistics(self.scorer) if self.scorer is not None else []}

    def set_state(self, state: dict[str, Any]) -> None:
        if "shaper" in state:
            self.shaper.load_state_dict(state["shaper"])
        if "run_stats" in state:
            self.run_stats.load_state_dict(state["run_stats"])
        self.episode_intrinsic = dict(state.get("episode_intrinsic", {}))
        if self.scorer is not None:  # the next snapshot attached (a resumed service's) takes them on
            load_scoring_statistics(self.scorer, state.get("scoring", []))


def _reward_connectors(learner: Any) -> list[IntrinsicRewardConnector]:
    pipeline = getattr(learner, "_learner_connector", None)
    return [c for c in (pipeline.connectors if pipeline is not None else []) if isinstance(c, IntrinsicRewardConnector)]


# --- the algorithm ------------------------------------------------------------------------------


class KudosAPPO(APPO):
    """RLlib's APPO with kudos's reward: creates the run's :class:`RewardService`, attaches it to
    the learners' :class:`IntrinsicRewardConnector`\\ s, and checkpoints the service (reward
    model, trainer, annotator backlog) and the connectors' shaping statistics with the run."""

    def setup(self, config: Any) -> None:
        super().setup(config)
        self.kudos_settings: dict[str, Any] = dict(config.learner_config_dict[SETTINGS_KEY])
        self.reward_service: Any = None
        self._start_service(None)

    def _start_service(self, state: dict[str, Any] | None) -> None:
        if self.kudos_settings["reward"].type == "none":
            return
        if self.reward_service is not None:
            ray.kill(self.reward_service, no_restart=True)
        # Held here for as long as the service may restart from it.
        self._service_state = None if state is None else [ray.put(state)]
        self.reward_service = RewardService.start(self.kudos_settings, self._service_state)
        snapshot = ray.get(self.reward_service.snapshot_since.remote(None, 0))
        service = self.reward_service

        def attach(learner: Any) -> int:
            for connector in _reward_connectors(learner):
                connector.attach(service, snapshot)
            return len(_reward_connectors(learner))

        attached = self.learner_group.foreach_learner(attach)
        if not sum(r.get() if hasattr(r, "get") else r for r in attached):
            raise ConfigError("KudosAPPO found no IntrinsicRewardConnector in the learners: build the config "
                              "with kudos.integrations.rllib.appo_config")

    def training_step(self) -> None:
        super().training_step()
        if self.reward_service is not None:
            ready, _ = ray.wait([ref := self.reward_service.metrics.remote()], timeout=5.0)
            if ready:
                for key, value in ray.get(ref).items():
                    self.metrics.log_value(("kudos", key), value, window=1)

    def get_state(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        state = super().get_state(*args, **kwargs)
        shapers = self.learner_group.foreach_learner(lambda l: [c.get_state() for c in _reward_connectors(l)])
        state[SETTINGS_KEY] = {
            "service": ray.get(self.reward_service.state_dict.remote()) if self.reward_service is not None else None,
            "connectors": [r.get() if hasattr(r, "get") else r for r in shapers],
        }
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        saved = state.get(SETTINGS_KEY)
        if saved is None:
            return
        by_learner = saved["connectors"]

        def restore(learner: Any) -> None:
            # Every learner gets the first learner's statistics (learners are identical copies).
            for connector, connector_state in zip(_reward_connectors(learner), by_learner[0]):
                connector.set_state(connector_state)

        self.learner_group.foreach_learner(restore)
        if saved["service"] is not None:
            self._start_service(saved["service"])

    def cleanup(self) -> None:
        if self.reward_service is not None:
            try:
                ray.get(self.reward_service.close.remote(), timeout=30)
            except ray.exceptions.RayError as exc:
                log.warning("reward service did not close cleanly: %s", exc)
            ray.kill(self.reward_service, no_restart=True)
            self.reward_service = None
        super().cleanup()


def appo_config(config: KudosConfig, num_env_runners: int = 2, envs_per_runner: int | None = None,
                trainer: RewardModelTrainerConfig | None = None) -> RLlibAPPOConfig:
    """RLlib's APPO config for a kudos run: kudos's task env, policy, reward and APPO settings.

    ``num_env_runners`` env-runner actors step ``envs_per_runner`` envs each (default: the run's
    ``env.num_envs`` spread over them). One learner in the driver (``num_learners=0``); no
    aggregator actors (ray-project/ray#62425). The mapping of kudos's APPO options to RLlib's:
    gamma, lr, grad_clip (max_grad_norm), entropy_coeff, vf_loss_coeff, clip_param (clip_ratio),
    vtrace clips, rollout_fragment_length (rollout), max_seq_len (recurrence). ``trainer`` paces
    the reward-model trainer in the service.
    """
    task = get_task(config.env.task)
    shaping = config.reward.shaping_for(task.extrinsic_coef)
    per_runner = envs_per_runner or max(1, config.env.num_envs // max(1, num_env_runners))
    appo = config.appo
    # The service's LLM and trainer threads from the run's budget; the env runners are Ray's.
    cpu = config.cpu.resolve(None, llm_in_process=config.llm_in_process)
    settings = {"reward": config.reward, "llm": config.llm, "goal": task.goal, "trainer": trainer,
                "diagnostics": config.diagnostics, "cpu": cpu}
    rllib = (
        RLlibAPPOConfig(algo_class=KudosAPPO)
        .environment(RLlibNetHackEnv, env_config={
            "task": task.name, "max_episode_steps": config.env.max_episode_steps, "macros": config.env.macros,
        })
        .env_runners(num_env_runners=num_env_runners, num_envs_per_env_runner=per_runner,
                     rollout_fragment_length=appo.rollout)
        .learners(num_learners=0, num_aggregator_actors_per_learner=0,
                  learner_connector=lambda obs_space, act_space: IntrinsicRewardConnector(
                      shaping=shaping, skip_empty_caption=config.llm.annotator.skip_empty,
                      diagnostics=config.diagnostics),
                  learner_config_dict={SETTINGS_KEY: settings})
        .rl_module(rl_module_spec=RLModuleSpec(
            module_class=NetHackRLModule, model_config={"policy": config.policy, "max_seq_len": appo.recurrence},
        ))
        .training(
            gamma=appo.gamma, lr=appo.learning_rate, grad_clip=appo.max_grad_norm or None,
            entropy_coeff=appo.entropy_coef, vf_loss_coeff=appo.value_coef, clip_param=appo.clip_ratio,
            vtrace_clip_rho_threshold=appo.vtrace_clip_rho, vtrace_clip_pg_rho_threshold=appo.vtrace_clip_rho,
            train_batch_size_per_learner=per_runner * max(1, num_env_runners) * appo.rollout,
        )
        .fault_tolerance(restart_failed_env_runners=True)
        .debugging(seed=config.env.seed)
    )
    return rllib


# --- a run ---------------------------------------------------------------------------------------

#: Folder of the RLlib checkpoint inside a run's output directory (beside config.yaml).
CHECKPOINT_DIR = "rllib_checkpoint"
#: RLlib's learner results -> kudos's TensorBoard keys, where both engines have the figure.
LEARNER_KEYS = {"total_loss": "learner/loss", "policy_loss": "learner/policy_loss", "vf_loss": "learner/value_loss",
                "entropy": "learner/entropy"}


def env_steps_trained(result: dict[str, Any]) -> int:
    """Env steps the learner has trained on so far, from one ``algo.train()`` result."""
    learners = result.get("learners", {}).get("__all_modules__", {})
    return int(learners.get("num_env_steps_trained_lifetime", 0))


def run_figures(algo: KudosAPPO, result: dict[str, Any]) -> dict[str, float]:
    """The TensorBoard scalars of kudos's trainer that an RLlib run has, from one ``algo.train()``
    result and the learner's connector: episode returns and lengths (the env's reward), the
    learner's losses, ``reward/*`` and ``intrinsic/*`` per step, the run statistics'
    ``diagnostics/*`` and the reward service's metrics (``llm/*``, ``reward_model/*``, ...).
    Success rate, score and depth per episode are not collected by RLlib's env runners."""
    runners = result.get("env_runners", {})
    figures = {key: float(runners[name]) for name, key in (("episode_return_mean", "episode/return"),
                                                         ("episode_len_mean", "episode/length")) if name in runners}
    learner = result.get("learners", {}).get("default_policy", {})
    figures.update({key: float(learner[name]) for name, key in LEARNER_KEYS.items() if name in learner})
    figures.update(on_connector(algo, lambda c: c.figures()))
    figures.update({key: float(value) for key, value in result.get(SETTINGS_KEY, {}).items()})
    return figures


def on_connector(algo: KudosAPPO, fn: Any) -> Any:
    """``fn(connector)`` on the first learner's :class:`IntrinsicRewardConnector`."""
    results = algo.learner_group.foreach_learner(lambda learner: fn(_reward_connectors(learner)[0]))
    return [r.get() if hasattr(r, "get") else r for r in results][0]


def save_run(algo: KudosAPPO, config: KudosConfig, output: Any, steps: int, result: dict[str, Any]) -> None:
    """Write the RLlib checkpoint to ``output/rllib_checkpoint`` and, as kudos's trainer does, a
    ``checkpoint.pt`` with what ``kudos report`` reads: counters, run statistics (the connector's,
    with the service's recent labels) and the reward service's state (its reward model). That
    file cannot resume a run: ``--resume`` reads the RLlib checkpoint."""
    from kudos.rl.checkpoint import save_checkpoint

    algo.save_to_path(str(output / CHECKPOINT_DIR))
    run_stats = on_connector(algo, lambda c: c.run_stats.state_dict())
    reward = None
    if algo.reward_service is not None:
        reward = ray.get(algo.reward_service.state_dict.remote())
        run_stats.update(ray.get(algo.reward_service.recent_labels.remote()))
    runners = result.get("env_runners", {})
    save_checkpoint(output, {
        "engine": "rllib",
        "progress": {"env_steps": steps, "updates": int(result.get("training_iteration", 0)),
                     "episodes": int(runners.get("num_episodes_lifetime", 0))},
        "task": get_task(config.env.task).name,
        "reward_type": config.reward.type,
        "reward": reward,
        "run_stats": run_stats,
    })


def train(config: KudosConfig, resume: bool = False, address: str | None = None, num_env_runners: int = 2,
          on_progress: Any = None) -> int:
    """Train ``config`` on RLlib to ``run.steps`` env steps; returns the env steps trained on.

    ``address``: an existing Ray cluster (``ray start --head`` / ``ray start --address``); None
    starts a local one. The output directory is laid out as kudos's trainer lays it out:
    ``config.yaml``, TensorBoard scalars in ``tensorboard/`` (every ``run.log_every_s``; keys of
    :func:`run_figures`) and a ``checkpoint.pt`` for ``kudos report`` (:func:`save_run`), plus
    the RLlib checkpoint in :data:`CHECKPOINT_DIR`, written every ``run.checkpoint_every_s`` and
    at the end; ``resume`` continues from it. ``on_progress(env_steps, result)`` is called after
    every training iteration.
    """
    import time
    from pathlib import Path

    from torch.utils.tensorboard import SummaryWriter

    from kudos.rl.experiment import log_config, save_config
    from kudos.rl.checkpoint import CheckpointError, load_checkpoint
    from kudos.rl.runner import record_revision

    output = Path(config.run.output_dir).resolve()
    checkpoint = output / CHECKPOINT_DIR
    if resume and not checkpoint.is_dir():
        raise CheckpointError(f"no RLlib checkpoint at {checkpoint}: is this the output of `kudos train --engine rllib`?")
    record_revision(config)
    save_config(config, output)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    algo = appo_config(config, num_env_runners=num_env_runners).build_algo()
    tensorboard = SummaryWriter(str(output / "tensorboard"))
    try:
        steps, result = 0, {}
        if resume:
            algo.restore_from_path(str(checkpoint))
            steps = load_checkpoint(output)["progress"]["env_steps"]  # written with the RLlib checkpoint
        steps_at_start = steps
        log_config(tensorboard, config, steps)
        started = last_save = next_report = time.monotonic()
        while steps < config.run.steps:
            result = algo.train()
            steps = env_steps_trained(result)
            now = time.monotonic()
            if on_progress is not None:
                on_progress(steps, result)
            if now >= next_report or steps >= config.run.steps:
                figures = run_figures(algo, result)
                figures["throughput/env_steps_per_s"] = (steps - steps_at_start) / max(now - started, 1e-9)
                for key, value in figures.items():
                    tensorboard.add_scalar(key, value, steps)
                next_report = now + config.run.log_every_s
            if now - last_save >= config.run.checkpoint_every_s:
                save_run(algo, config, output, steps, result)
                last_save = now
        save_run(algo, config, output, steps, result)
        return steps
    finally:
        tensorboard.close()
        algo.stop()
        if started_here:
            ray.shutdown()
