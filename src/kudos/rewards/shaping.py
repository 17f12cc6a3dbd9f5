"""Reward shaping: from reward-model outputs to the per-step reward the agent is trained on.

For one step of one env::

    r = c_ext * clip(ext_scale * r_env, -ext_clip, ext_clip)
        + c_int * shape(r_int) / N_episode(caption) ** beta

``N_episode(caption)`` is how many times the step's caption has been seen in the episode so far,
this step included (``info["caption_count"]`` of kudos's envs), so a repeated message pays less
every time (ONI/Motif use beta = 3). ``shape`` is optional running normalisation followed by an
optional threshold (values below it become 0); an optional cap limits the intrinsic return of an
episode. All statistics live in :meth:`RewardShaper.state_dict` and resume exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from kudos.errors import ConfigError

ThresholdKind = Literal["none", "zscore", "quantile"]


class RunningMeanStd:
    """Mean and variance of every value seen so far (parallel Welford update, float64).

    ``epsilon`` is the initial pseudo-count, which keeps the first updates stable.
    """

    def __init__(self, epsilon: float = 1e-4) -> None:
        self.mean = 0.0
        self.var = 1.0
        self.count = epsilon

    def update(self, x: np.ndarray) -> None:
        """Add the values of ``x`` (any shape)."""
        if x.size == 0:
            return
        x = x.astype(np.float64, copy=False)
        batch_mean, batch_var, n = float(x.mean()), float(x.var()), x.size
        delta = batch_mean - self.mean
        total = self.count + n
        self.mean += delta * n / total
        self.var = (self.var * self.count + batch_var * n + delta * delta * self.count * n / total) / total
        self.count = total

    @property
    def std(self) -> float:
        return float(np.sqrt(self.var + 1e-8))

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), float(state["count"])


class RecentWindow:
    """The last ``size`` values seen (a ring buffer), for quantile thresholds."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ConfigError(f"the window of recent rewards must hold at least 1 value, got {size}")
        self.values = np.zeros(size, dtype=np.float32)
        self.filled = 0
        self.position = 0

    def update(self, x: np.ndarray) -> None:
        x = x.reshape(-1)[-self.values.size :]
        end = self.position + x.size
        if end <= self.values.size:
            self.values[self.position : end] = x
        else:
            split = self.values.size - self.position
            self.values[self.position :] = x[:split]
            self.values[: end - self.values.size] = x[split:]
        self.position = end % self.values.size
        self.filled = min(self.values.size, self.filled + x.size)

    def quantile(self, q: float) -> float:
        """The ``q`` quantile of the values held; -inf before any value arrived."""
        if self.filled == 0:
            return float("-inf")
        return float(np.quantile(self.values[: self.filled], q))

    def state_dict(self) -> dict[str, Any]:
        # Plain lists, so checkpoints load with torch.load(weights_only=True); float32 -> float is exact.
        return {"values": self.values.tolist(), "filled": self.filled, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        values = np.array(state["values"], dtype=np.float32)
        if values.shape != self.values.shape:
            raise ConfigError(f"saved window holds {values.size} values, this one {self.values.size}")
        self.values = values  # its own, writable array (one Ray unpickled is read-only)
        self.filled, self.position = int(state["filled"]), int(state["position"])


@dataclass
class NormalizerConfig:
    """Running normalisation and threshold of a reward stream.

    ``normalize``: output ``(x - mean) / std`` over all values seen so far instead of ``x``.
    ``threshold``: ``"zscore"`` keeps values whose z-score is above ``threshold_value``;
    ``"quantile"`` keeps values above the ``threshold_value`` quantile (in [0, 1]) of the last
    ``window`` values; ``"none"`` keeps every value. The rest become 0. "Above" is strict, as in
    ONI (``r̂ > eps_threshold_quantile``) and Motif (``r̂ > q``); ``keep_equal`` also keeps values
    exactly at the threshold (``>=``, kudos's earlier rule).
    """

    normalize: bool = False
    threshold: ThresholdKind = "none"
    threshold_value: float = 0.0
    window: int = 10_000
    keep_equal: bool = False

    def __post_init__(self) -> None:
        if self.threshold not in ("none", "zscore", "quantile"):
            raise ConfigError(f"threshold must be 'none', 'zscore' or 'quantile', got {self.threshold!r}")
        if self.threshold == "quantile" and not 0.0 <= self.threshold_value <= 1.0:
            raise ConfigError(f"a quantile threshold must be in [0, 1], got {self.threshold_value}")


class Normalizer:
    """Applies a :class:`NormalizerConfig` to batches of rewards, updating its statistics."""

    def __init__(self, config: NormalizerConfig | None = None) -> None:
        self.config = config or NormalizerConfig()
        self.stats = RunningMeanStd()
        self.recent = RecentWindow(self.config.window)
        #: When False, statistics stay as they are (a frozen reward model's normalisation).
        self.updating = True

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Normalised and thresholded ``x`` (float32, same shape). Statistics include ``x``."""
        cfg = self.config
        if cfg.threshold == "none" and not cfg.normalize:
            return x.astype(np.float32, copy=False)
        if self.updating:
            self.stats.update(x)
            if cfg.threshold == "quantile":
                self.recent.update(x)
        z = (x - self.stats.mean) / self.stats.std
        out = z if cfg.normalize else x
        above = np.greater_equal if cfg.keep_equal else np.greater
        if cfg.threshold == "zscore":
            out = np.where(above(z, cfg.threshold_value), out, 0.0)
        elif cfg.threshold == "quantile":
            out = np.where(above(x, self.recent.quantile(cfg.threshold_value)), out, 0.0)
        return out.astype(np.float32, copy=False)

    def state_dict(self) -> dict[str, Any]:
        return {"stats": self.stats.state_dict(), "recent": self.recent.state_dict(), "updating": self.updating}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stats.load_state_dict(state["stats"])
        self.recent.load_state_dict(state["recent"])
        self.updating = bool(state["updating"])


@dataclass
class ShapingConfig:
    """Coefficients of ``r = c_ext * clip(ext_scale * r_env) + c_int * shape(r_int) / N ** beta``.

    The defaults are ONI's (``scripts/main.py`` and its README's runs): the extrinsic reward is
    scaled by 1 and clipped at +-10 before ``c_ext`` (so a +50 goal counts 10), ``c_int`` = 0.4,
    ``beta`` = 3; ``c_ext`` = 1 is ONI's argparse default (its runs use 0.1 on Score, 10 on the
    goal tasks: ``kudos.envs.TaskSpec.extrinsic_coef``; None in a run's ``reward.shaping`` takes
    the task's, :meth:`kudos.rewards.intrinsic.RewardConfig.shaping_for`; the shaper needs a number). ``episode_cap``: the most intrinsic
    reward (after coefficients) one episode may collect; None for no cap. ``intrinsic``: the
    ``shape`` applied to model outputs.
    """

    c_ext: float | None = 1.0
    ext_scale: float = 1.0
    ext_clip: float = 10.0
    c_int: float = 0.4
    beta: float = 3.0
    episode_cap: float | None = None
    intrinsic: NormalizerConfig = field(default_factory=NormalizerConfig)

    def __post_init__(self) -> None:
        if isinstance(self.intrinsic, dict):  # from YAML
            self.intrinsic = NormalizerConfig(**self.intrinsic)
        if self.ext_clip <= 0:
            raise ConfigError(f"ext_clip must be > 0, got {self.ext_clip}")
        if self.episode_cap is not None and self.episode_cap < 0:
            raise ConfigError(f"episode_cap must be >= 0 or None, got {self.episode_cap}")


class RewardShaper:
    """Combines extrinsic and intrinsic rewards for ``num_envs`` envs stepped in lockstep.

    Call it once per step (arrays ``(B,)``) or once per rollout (arrays ``(T, B)``, in time
    order); the per-episode cap carries over between calls, so each step must be shaped once.
    """

    def __init__(self, config: ShapingConfig | None = None, num_envs: int = 1) -> None:
        self.config = config or ShapingConfig()
        if self.config.c_ext is None:
            raise ConfigError("c_ext None stands for the task's preset: resolve it first (RewardConfig.shaping_for)")
        self.num_envs = num_envs
        self.normalizer = Normalizer(self.config.intrinsic)
        #: Intrinsic reward collected so far in each env's current episode (after coefficients).
        self.episode_intrinsic = np.zeros(num_envs, dtype=np.float64)

    def intrinsic(self, r_int: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """``c_int * shape(r_int) / counts ** beta``, float32, same shape as ``r_int``."""
        counts = np.asarray(counts)
        if counts.shape != np.shape(r_int):
            raise ValueError(f"caption counts have shape {counts.shape}, rewards {np.shape(r_int)}")
        if counts.size and counts.min() < 1:
            raise ValueError("caption counts start at 1 (the first sighting); got a count below 1")
        shaped = self.normalizer(np.asarray(r_int, dtype=np.float32))
        return (self.config.c_int * shaped / counts.astype(np.float64) ** self.config.beta).astype(np.float32)

    def extrinsic(self, r_env: np.ndarray) -> np.ndarray:
        """``c_ext * clip(ext_scale * r_env, -ext_clip, ext_clip)``, float32."""
        cfg = self.config
        scaled = np.clip(cfg.ext_scale * np.asarray(r_env, dtype=np.float64), -cfg.ext_clip, cfg.ext_clip)
        return (cfg.c_ext * scaled).astype(np.float32)

    def __call__(
        self, r_env: np.ndarray, r_int: np.ndarray, counts: np.ndarray, dones: np.ndarray
    ) -> np.ndarray:
        """Shaped rewards, float32 of the input shape (``(B,)`` or ``(T, B)``).

        ``r_env``: extrinsic rewards; ``r_int``: reward-model outputs; ``counts``: caption counts
        (>= 1); ``dones``: True where the step ended its episode (terminated or truncated).
        """
        r_env = np.asarray(r_env)
        if r_env.shape[-1] != self.num_envs or r_env.ndim not in (1, 2):
            raise ValueError(f"expected rewards of shape (B,) or (T, B) with B={self.num_envs}, got {r_env.shape}")
        intrinsic = self.intrinsic(r_int, counts).reshape(-1, self.num_envs)
        dones = np.asarray(dones, dtype=bool).reshape(-1, self.num_envs)
        if dones.shape != intrinsic.shape:
            raise ValueError(f"dones have shape {np.shape(dones)}, rewards {r_env.shape}")
        self.cap(intrinsic, dones, self.episode_intrinsic)
        return self.extrinsic(r_env) + intrinsic.reshape(r_env.shape)

    def cap(self, intrinsic: np.ndarray, dones: np.ndarray, episode_intrinsic: np.ndarray) -> np.ndarray:
        """Apply ``episode_cap`` in place to shaped intrinsic rewards ``(T, B)`` in time order,
        given the intrinsic reward ``episode_intrinsic`` ``(B,)`` each episode has collected so far
        (updated in place; 0 after a step in ``dones`` ``(T, B)``); returns ``intrinsic``. For
        callers that shape episode fragments rather than lockstep envs (``__call__`` uses it on
        its own envs)."""
        cap = self.config.episode_cap
        for t in range(intrinsic.shape[0]):
            if cap is not None:
                # Positive rewards are paid only up to the cap; penalties always go through.
                room = np.maximum(cap - episode_intrinsic, 0.0)
                intrinsic[t] = np.where(intrinsic[t] > 0, np.minimum(intrinsic[t], room), intrinsic[t])
            episode_intrinsic += intrinsic[t]
            episode_intrinsic[dones[t]] = 0.0
        return intrinsic

    def reset_env(self, env: int) -> None:
        """Forget env ``env``'s episode (for wrappers that see resets rather than dones)."""
        self.episode_intrinsic[env] = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"normalizer": self.normalizer.state_dict(), "episode_intrinsic": self.episode_intrinsic.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = np.asarray(state["episode_intrinsic"], dtype=np.float64)
        if saved.shape != self.episode_intrinsic.shape:
            raise ConfigError(f"saved shaping state is for {saved.size} envs, this shaper has {self.num_envs}")
        self.normalizer.load_state_dict(state["normalizer"])
        self.episode_intrinsic[:] = saved
