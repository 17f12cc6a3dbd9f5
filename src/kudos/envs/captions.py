"""Captions: the game message of a step as a clean string, and per-episode caption counts.

The caption is what the LLM is asked about and what the reward model scores, so it must be
canonical: the same message always gives the same string, whatever padding or spacing NetHack
used. The empty caption ``""`` is a first-class value (most steps have no message).
"""

from __future__ import annotations

import re
from collections import Counter

import numpy as np

_WHITESPACE = re.compile(r"\s+")
# NetHack separates messages that share the top line with two spaces; --More-- is a prompt
# drawn after a message, never part of it.
_MORE = "--More--"
# Captions are decoded many times per second with a small vocabulary: memoise raw bytes.
_CACHE_LIMIT = 65_536
_cache: dict[bytes, str] = {}


def clean_caption(text: str) -> str:
    """Strip, drop ``--More--`` markers and collapse whitespace runs to one space."""
    if _MORE in text:
        text = text.replace(_MORE, " ")
    return _WHITESPACE.sub(" ", text).strip()


def decode_caption(message: np.ndarray | bytes) -> str:
    """Decode an NLE ``message`` observation (uint8, shape ``(256,)``, NUL-padded) to a caption.

    Bytes outside ASCII are decoded as Latin-1, so no input can fail to decode and the mapping
    stays one-to-one.
    """
    raw = message.tobytes() if isinstance(message, np.ndarray) else bytes(message)
    end = raw.find(b"\0")
    if end >= 0:
        raw = raw[:end]
    if not raw:
        return ""
    cached = _cache.get(raw)
    if cached is None:
        cached = clean_caption(raw.decode("latin-1"))
        if len(_cache) >= _CACHE_LIMIT:
            _cache.clear()
        _cache[raw] = cached
    return cached


def join_captions(parts: list[str]) -> str:
    """Join the messages shown during one agent step (a ``--More--`` chain) into one caption.

    Consecutive duplicates are dropped: NetHack redraws the pending message after some prompts.
    """
    kept: list[str] = []
    for part in parts:
        if part and (not kept or kept[-1] != part):
            kept.append(part)
    return " ".join(kept)


class CaptionCounter:
    """How many times each caption has been seen in the current episode.

    ``observe(caption)`` returns the count *including* this sighting (1 the first time), which is
    the ``N_episode(caption)`` that reward shaping divides by.
    """

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def observe(self, caption: str) -> int:
        self._counts[caption] += 1
        return self._counts[caption]

    def reset(self) -> None:
        self._counts.clear()

    def __getitem__(self, caption: str) -> int:
        return self._counts[caption]

    def __len__(self) -> int:
        return len(self._counts)
