"""Reinforcement learning: the NetHack policy network, V-trace, the APPO loss and the learner."""

from kudos.rl.appo import APPOConfig, appo_loss, clipped_surrogate, value_loss
from kudos.rl.learner import Learner, RolloutBatch
from kudos.rl.policy import (
    POLICY_OBSERVATION_KEYS,
    POLICY_PRESETS,
    ActOutput,
    NetHackPolicy,
    PolicyConfig,
    PolicyOutput,
    get_policy_config,
    normalize_blstats,
    obs_to_tensors,
)
from kudos.rl.vtrace import VTraceReturns, vtrace

__all__ = [
    "APPOConfig",
    "ActOutput",
    "Learner",
    "NetHackPolicy",
    "POLICY_OBSERVATION_KEYS",
    "POLICY_PRESETS",
    "PolicyConfig",
    "PolicyOutput",
    "RolloutBatch",
    "VTraceReturns",
    "appo_loss",
    "clipped_surrogate",
    "get_policy_config",
    "normalize_blstats",
    "obs_to_tensors",
    "value_loss",
    "vtrace",
]
