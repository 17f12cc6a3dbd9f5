"""The NetHack actor-critic: the network of the sample-factory NetHack baselines (Motif, ONI),
written for a CPU-sized default.

Per step, three encoders read the observation and a GRU core carries memory across steps:

- **crop**: the ``crop_size x crop_size`` window of the terminal (``tty_chars`` + ``tty_colors``)
  centred on the hero, each cell a char embedding concatenated with a colour embedding, then a
  small conv net. The baselines render this crop to pixels; embedding the characters is cheaper
  on a CPU and loses nothing the pixels carry. The centre is the hero's position from
  ``blstats``, not ``tty_cursor``: the cursor moves to the message line while a prompt is open.
- **bottom-line stats**: ``blstats`` normalised to roughly [-1, 1] (:func:`normalize_blstats`),
  then an MLP.
- **message**: the 256 caption bytes through a byte embedding and a 1D conv net with max pooling,
  so a word is recognised wherever it sits in the line.

The three codes are concatenated, projected to ``hidden_size``, layer-normalised and fed to a GRU
cell; linear actor (logits over the actions) and critic (state value) heads read the GRU state.
The layer norm keeps the GRU's input in range: without it, large constant parts of the screen
drove the core into saturation early in training, after which it stopped telling states apart.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping, NamedTuple

import numpy as np
import torch
from nle import nethack
from torch import Tensor, nn

from kudos.errors import ConfigError

#: Observation keys the policy reads (a subset of ``kudos.envs.DEFAULT_OBSERVATION_KEYS``).
POLICY_OBSERVATION_KEYS: tuple[str, ...] = ("tty_chars", "tty_colors", "blstats", "message")

_NUM_BYTES = 256  # tty characters and message bytes are both single bytes
_NUM_COLORS = 16  # NetHack's colour indices 0-15
_BLANK = ord(" ")  # what the terminal shows off the edge of the screen
_NUM_CONDITIONS = nethack.BL_MASK_BITS  # bits of the blstats condition mask (blind, stunned, ...)


@dataclass(frozen=True)
class PolicyConfig:
    """Sizes of :class:`NetHackPolicy`. The default is small enough for one CPU core; see
    :data:`POLICY_PRESETS` for one closer to the published baselines."""

    crop_size: int = 9  # side of the terminal window around the hero, in cells
    char_embedding_dim: int = 16
    color_embedding_dim: int = 4
    crop_channels: tuple[int, ...] = (16, 32)  # 3x3 conv layers over the crop: stride 1, then 2
    crop_hidden: int = 128  # width of the crop code
    blstats_hidden: int = 64  # width of the two-layer blstats MLP
    message_embedding_dim: int = 16
    message_channels: int = 32  # width of the two 1D conv layers over the message
    message_hidden: int = 64
    hidden_size: int = 128  # encoder output, GRU input and GRU state size (H)


#: Named sizes: "small" (default, CPU), "baseline" (close to the sample-factory NetHack
#: baselines: 12x12 crop, 128-wide blstats and message codes, 512-unit GRU) and "gpu" (the
#: baseline with the crop encoder as wide as ONI's pixel encoder, 32-64-128 conv channels into a
#: 512-wide code; for a learner on a GPU).
POLICY_PRESETS: dict[str, PolicyConfig] = {
    "small": PolicyConfig(),
    "baseline": PolicyConfig(
        crop_size=12,
        char_embedding_dim=32,
        color_embedding_dim=8,
        crop_channels=(32, 64, 64),
        crop_hidden=512,
        blstats_hidden=128,
        message_embedding_dim=32,
        message_channels=64,
        message_hidden=128,
        hidden_size=512,
    ),
}
POLICY_PRESETS["gpu"] = dataclasses.replace(POLICY_PRESETS["baseline"], crop_channels=(32, 64, 128))


class PolicyOutput(NamedTuple):
    """``logits`` (T, B, A) float32; ``values`` (T, B) float32; ``core_state`` (B, H), the GRU
    state after the last step."""

    logits: Tensor
    values: Tensor
    core_state: Tensor


class ActOutput(NamedTuple):
    """One acting step for B envs: ``actions`` (B,) int64, their ``log_probs`` (B,) and the
    state ``values`` (B,) under the acting policy, and the next ``core_state`` (B, H)."""

    actions: Tensor
    log_probs: Tensor
    values: Tensor
    core_state: Tensor


def obs_to_tensors(obs: Mapping[str, np.ndarray], keys: tuple[str, ...] = POLICY_OBSERVATION_KEYS) -> dict[str, Tensor]:
    """The policy's observation arrays as tensors, sharing memory with ``obs`` where possible.

    Works for any leading shape: ``(B, ...)`` from ``VectorNetHack``, ``(T+1, B, ...)`` stacked
    rollouts. Dtypes are kept (the policy converts them itself).
    """
    return {k: torch.from_numpy(np.ascontiguousarray(obs[k])) for k in keys}


# --- bottom-line stats ------------------------------------------------------------------------

# Counters without a useful upper bound are compressed with log1p before scaling.
_LOG_STATS = (nethack.NLE_BL_SCORE, nethack.NLE_BL_GOLD, nethack.NLE_BL_EXP, nethack.NLE_BL_TIME,
              nethack.NLE_BL_HPMAX, nethack.NLE_BL_ENEMAX)
# Divisors that bring each stat (after log1p where listed above) to about [-1, 1].
_STAT_DIVISORS = {
    nethack.NLE_BL_X: 79.0,
    nethack.NLE_BL_Y: 21.0,
    nethack.NLE_BL_STR25: 25.0,
    nethack.NLE_BL_STR125: 125.0,
    nethack.NLE_BL_DEX: 25.0,
    nethack.NLE_BL_CON: 25.0,
    nethack.NLE_BL_INT: 25.0,
    nethack.NLE_BL_WIS: 25.0,
    nethack.NLE_BL_CHA: 25.0,
    nethack.NLE_BL_SCORE: 10.0,
    nethack.NLE_BL_HP: 1.0,  # replaced by HP / max HP
    nethack.NLE_BL_HPMAX: 6.0,
    nethack.NLE_BL_DEPTH: 10.0,
    nethack.NLE_BL_GOLD: 10.0,
    nethack.NLE_BL_ENE: 1.0,  # replaced by energy / max energy
    nethack.NLE_BL_ENEMAX: 6.0,
    nethack.NLE_BL_AC: 10.0,
    nethack.NLE_BL_HD: 10.0,
    nethack.NLE_BL_XP: 30.0,
    nethack.NLE_BL_EXP: 10.0,
    nethack.NLE_BL_TIME: 10.0,
    nethack.NLE_BL_HUNGER: 6.0,
    nethack.NLE_BL_CAP: 5.0,
    nethack.NLE_BL_DNUM: 10.0,
    nethack.NLE_BL_DLEVEL: 10.0,
    nethack.NLE_BL_ALIGN: 1.0,
}
_STAT_INDEX = torch.tensor(list(_STAT_DIVISORS))
_DIVISORS = torch.tensor(list(_STAT_DIVISORS.values()))
_IS_LOG = torch.isin(_STAT_INDEX, torch.tensor(_LOG_STATS))
_HP_COLUMN = list(_STAT_DIVISORS).index(nethack.NLE_BL_HP)
_ENERGY_COLUMN = list(_STAT_DIVISORS).index(nethack.NLE_BL_ENE)
#: Width of :func:`normalize_blstats`'s output: every stat but the condition mask, plus its bits.
NUM_BLSTATS_FEATURES = len(_STAT_DIVISORS) + _NUM_CONDITIONS


def normalize_blstats(blstats: Tensor) -> Tensor:
    """Network-friendly features from NLE's bottom-line stats.

    Args:
        blstats: ``(N, 27)`` integer stats (``nle.nethack.NLE_BL_*`` order).

    Returns:
        ``(N, NUM_BLSTATS_FEATURES)`` float32: each stat scaled to about [-1, 1] (unbounded
        counters log-compressed; HP and energy as fractions of their maxima), clipped to [-5, 5],
        followed by the 13 condition flags as 0/1.
    """
    device = blstats.device
    stats = blstats.float()
    x = stats[:, _STAT_INDEX.to(device)]
    x = torch.where(_IS_LOG.to(device), torch.log1p(x.clamp(min=0.0)), x) / _DIVISORS.to(device)
    x[:, _HP_COLUMN] = stats[:, nethack.NLE_BL_HP] / stats[:, nethack.NLE_BL_HPMAX].clamp(min=1.0)
    x[:, _ENERGY_COLUMN] = stats[:, nethack.NLE_BL_ENE] / stats[:, nethack.NLE_BL_ENEMAX].clamp(min=1.0)
    bits = torch.arange(_NUM_CONDITIONS, device=device)
    conditions = (blstats[:, nethack.NLE_BL_CONDITION, None] >> bits) & 1
    return torch.cat([x.clamp(-5.0, 5.0), conditions.float()], dim=1)


# --- encoders ---------------------------------------------------------------------------------


def crop_around(grid: Tensor, rows: Tensor, cols: Tensor, size: int, fill: int) -> Tensor:
    """The ``size x size`` windows of ``grid`` centred on (``rows``, ``cols``).

    Args:
        grid: ``(N, H, W)`` any dtype.
        rows, cols: ``(N,)`` integer centres (the centre lands at index ``size // 2``).
        size: side of the window, in cells.
        fill: value of cells outside the grid.

    Returns:
        ``(N, size, size)``, dtype of ``grid``.
    """
    n, height, width = grid.shape
    offsets = torch.arange(size, device=grid.device) - size // 2
    r = rows.long()[:, None] + offsets  # (N, S)
    c = cols.long()[:, None] + offsets
    inside = ((r >= 0) & (r < height))[:, :, None] & ((c >= 0) & (c < width))[:, None, :]
    flat = r.clamp(0, height - 1)[:, :, None] * width + c.clamp(0, width - 1)[:, None, :]
    window = grid.reshape(n, -1).gather(1, flat.reshape(n, -1)).reshape(n, size, size)
    return window.masked_fill(~inside, fill)


class CropEncoder(nn.Module):
    """Terminal window around the hero -> ``(N, out_dim)`` code."""

    def __init__(self, config: PolicyConfig) -> None:
        super().__init__()
        self.size = config.crop_size
        self.chars = nn.Embedding(_NUM_BYTES, config.char_embedding_dim)
        self.colors = nn.Embedding(_NUM_COLORS, config.color_embedding_dim)
        layers: list[nn.Module] = []
        channels, side = config.char_embedding_dim + config.color_embedding_dim, self.size
        for i, out_channels in enumerate(config.crop_channels):
            # The first layer reads cell by cell; later ones halve the resolution, which costs
            # little on a window this small and makes the training pass much cheaper.
            stride = 1 if i == 0 else 2
            layers += [nn.Conv2d(channels, out_channels, kernel_size=3, stride=stride, padding=1), nn.ELU()]
            channels, side = out_channels, (side - 1) // stride + 1
        self.conv = nn.Sequential(*layers, nn.Flatten())
        # Compress the flattened map so it does not outweigh the other codes by sheer width.
        self.fc = nn.Sequential(nn.Linear(channels * side**2, config.crop_hidden), nn.ELU())
        self.out_dim = config.crop_hidden

    def forward(self, tty_chars: Tensor, tty_colors: Tensor, blstats: Tensor) -> Tensor:
        """``tty_chars`` (N, 24, 80) uint8, ``tty_colors`` (N, 24, 80) int8, ``blstats`` (N, 27)
        -> (N, out_dim)."""
        # The hero's cell: blstats x is the terminal column, y + 1 the terminal row (row 0 is
        # the message line). The terminal cursor leaves the hero while a prompt is open.
        row = blstats[:, nethack.NLE_BL_Y] + 1
        col = blstats[:, nethack.NLE_BL_X]
        chars = crop_around(tty_chars, row, col, self.size, _BLANK).long()
        colors = crop_around(tty_colors, row, col, self.size, 0).long().clamp(0, _NUM_COLORS - 1)
        cells = torch.cat([self.chars(chars), self.colors(colors)], dim=-1)  # (N, S, S, E)
        return self.fc(self.conv(cells.permute(0, 3, 1, 2)))


class BlstatsEncoder(nn.Module):
    """Bottom-line stats -> ``(N, blstats_hidden)`` code."""

    def __init__(self, config: PolicyConfig) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(NUM_BLSTATS_FEATURES, config.blstats_hidden),
            nn.ELU(),
            nn.Linear(config.blstats_hidden, config.blstats_hidden),
            nn.ELU(),
        )
        self.out_dim = config.blstats_hidden

    def forward(self, blstats: Tensor) -> Tensor:
        """``blstats`` (N, 27) integer -> (N, out_dim)."""
        return self.mlp(normalize_blstats(blstats))


class MessageEncoder(nn.Module):
    """Caption bytes -> ``(N, message_hidden)`` code: byte embedding, conv, pool, conv, max over
    positions (so a word is recognised wherever it sits), linear."""

    def __init__(self, config: PolicyConfig) -> None:
        super().__init__()
        channels = config.message_channels
        self.bytes = nn.Embedding(_NUM_BYTES, config.message_embedding_dim, padding_idx=0)
        self.conv = nn.Sequential(
            nn.Conv1d(config.message_embedding_dim, channels, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool1d(kernel_size=3, stride=3),
            nn.Conv1d(channels, channels, kernel_size=3, padding=1),
            nn.ReLU(),
        )
        self.fc = nn.Sequential(nn.Linear(channels, config.message_hidden), nn.ReLU())
        self.out_dim = config.message_hidden

    def forward(self, message: Tensor) -> Tensor:
        """``message`` (N, L) uint8, NUL-padded -> (N, out_dim)."""
        # Most steps repeat a few captions (often the empty one), and this conv is the costliest
        # part of the network: encode each distinct message once.
        distinct, index = torch.unique(message, dim=0, return_inverse=True)
        x = self.bytes(distinct.long()).transpose(1, 2)  # (U, E, L)
        return self.fc(self.conv(x).amax(dim=2))[index]


# --- the policy -------------------------------------------------------------------------------


class NetHackPolicy(nn.Module):
    """Recurrent actor-critic over NetHack observations (see the module docstring).

    Args:
        config: network sizes.
        num_actions: A, the size of the task's action set (``TaskSpec.num_actions``).
    """

    def __init__(self, config: PolicyConfig, num_actions: int) -> None:
        super().__init__()
        self.config = config
        self.num_actions = num_actions
        self.crop = CropEncoder(config)
        self.blstats = BlstatsEncoder(config)
        self.message = MessageEncoder(config)
        joint = self.crop.out_dim + self.blstats.out_dim + self.message.out_dim
        self.project = nn.Sequential(nn.Linear(joint, config.hidden_size), nn.LayerNorm(config.hidden_size), nn.ELU())
        self.core = nn.GRUCell(config.hidden_size, config.hidden_size)
        self.actor = nn.Linear(config.hidden_size, num_actions)
        self.critic = nn.Linear(config.hidden_size, 1)
        # A near-uniform initial policy: every action gets tried before any is preferred.
        nn.init.orthogonal_(self.actor.weight, gain=0.01)
        nn.init.zeros_(self.actor.bias)

    @property
    def hidden_size(self) -> int:
        """H, the size of the core state."""
        return self.config.hidden_size

    def initial_state(self, batch_size: int) -> Tensor:
        """The core state at the start of an episode: zeros ``(batch_size, H)``."""
        return torch.zeros(batch_size, self.config.hidden_size, device=self.actor.weight.device)

    def encode(self, obs: Mapping[str, Tensor]) -> Tensor:
        """Per-step features, no memory: obs of leading shape ``(N,)`` -> ``(N, H)``."""
        codes = [
            self.crop(obs["tty_chars"], obs["tty_colors"], obs["blstats"]),
            self.blstats(obs["blstats"]),
            self.message(obs["message"]),
        ]
        return self.project(torch.cat(codes, dim=1))

    def forward(
        self,
        obs: Mapping[str, Tensor],
        core_state: Tensor,
        done: Tensor,
        bptt_horizon: int | None = None,
    ) -> PolicyOutput:
        """Run T steps for B envs.

        Args:
            obs: the :data:`POLICY_OBSERVATION_KEYS` arrays with leading ``(T, B)``.
            core_state: ``(B, H)`` the core state before step 0.
            done: ``(T, B)`` bool; ``done[t, b]`` means ``obs[t, b]`` is the first observation of
                a new episode, so the core state is reset to zeros before reading it.
            bptt_horizon: backpropagate through at most this many steps of the core (the state
                is detached every ``bptt_horizon`` steps); None: through all T.

        Returns:
            :class:`PolicyOutput` with logits ``(T, B, A)``, values ``(T, B)``, final state.
        """
        steps, batch = done.shape
        features = self.encode({k: obs[k].flatten(0, 1) for k in POLICY_OBSERVATION_KEYS})
        features = features.view(steps, batch, -1)
        keep = (~done.bool()).unsqueeze(-1).to(features.dtype)  # (T, B, 1)
        state = core_state
        outputs = []
        for t in range(steps):
            if bptt_horizon is not None and t > 0 and t % bptt_horizon == 0:
                state = state.detach()
            state = self.core(features[t], state * keep[t])
            outputs.append(state)
        core_out = torch.stack(outputs)  # (T, B, H)
        return PolicyOutput(self.actor(core_out), self.critic(core_out).squeeze(-1), state)

    @torch.no_grad()
    def act(
        self, obs: Mapping[str, Tensor], core_state: Tensor, done: Tensor, deterministic: bool = False
    ) -> ActOutput:
        """One acting step for B envs (no gradient).

        Args:
            obs: the :data:`POLICY_OBSERVATION_KEYS` arrays with leading ``(B,)``.
            core_state: ``(B, H)``.
            done: ``(B,)`` bool, True where ``obs`` starts a new episode.
            deterministic: take the most likely action instead of sampling.

        Runs under ``no_grad`` rather than ``inference_mode`` on purpose: the returned core state
        is stored as a rollout's initial state and later fed to a training forward, which
        inference-mode tensors may not be.
        """
        out = self.forward({k: obs[k].unsqueeze(0) for k in POLICY_OBSERVATION_KEYS}, core_state, done.unsqueeze(0))
        dist = torch.distributions.Categorical(logits=out.logits[0], validate_args=False)
        actions = out.logits[0].argmax(dim=-1) if deterministic else dist.sample()
        return ActOutput(actions, dist.log_prob(actions), out.values[0], out.core_state)


def get_policy_config(name: str) -> PolicyConfig:
    """The preset ``name`` from :data:`POLICY_PRESETS`; ConfigError naming the presets if unknown."""
    try:
        return POLICY_PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown policy preset {name!r} (known: {', '.join(POLICY_PRESETS)})") from None
