"""Policy weights in shared memory, published by the learner and read by the actors.

One writer (the learner) and any number of readers (rollout or policy workers) share one flat
float32 copy of the policy's ``state_dict`` and a seqlock: the writer makes the sequence number
odd, copies, then makes it even again with the new version. A reader copies only when the
version changed, straight into its own module, and keeps the copy only if the sequence number
was the same even number before and after it; otherwise it copies again. A reader therefore
never acts with a torn mix of two versions, and the writer never waits for readers.

Ordering relies on x86-64's store order (the learner and the workers run on one host; aligned
8-byte stores and loads of the counters are atomic there).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

_SEQ, _VERSION = 0, 1


class SharedWeights:
    """A shared, versioned copy of the weights of modules shaped like ``template``.

    Args:
        template: a ``state_dict`` (names, shapes; floating tensors) fixing the layout.
        ctx: the multiprocessing context the readers are started with.

    Picklable to spawned children. Nothing is readable before the first :meth:`publish`.
    """

    def __init__(self, template: Mapping[str, torch.Tensor], ctx: Any) -> None:
        self.specs: list[tuple[str, tuple[int, ...]]] = []
        for name, tensor in template.items():
            if not tensor.is_floating_point():
                raise TypeError(f"SharedWeights holds float tensors only; {name} is {tensor.dtype}")
            self.specs.append((name, tuple(tensor.shape)))
        total = sum(int(np.prod(shape)) for _, shape in self.specs)
        self._raw_data = ctx.RawArray("f", max(total, 1))
        self._raw_header = ctx.RawArray("q", 2)  # [sequence number, version]
        self._attach()

    def _attach(self) -> None:
        self._header = np.frombuffer(self._raw_header, dtype=np.int64)
        flat = torch.from_numpy(np.frombuffer(self._raw_data, dtype=np.float32))
        self._views: dict[str, torch.Tensor] = {}
        offset = 0
        for name, shape in self.specs:
            n = int(np.prod(shape))
            self._views[name] = flat[offset : offset + n].view(shape)
            offset += n
        #: Copies abandoned because the writer published meanwhile (this process).
        self.torn_reads = 0

    def __getstate__(self) -> dict[str, Any]:
        return {"specs": self.specs, "_raw_data": self._raw_data, "_raw_header": self._raw_header}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._attach()

    @property
    def version(self) -> int:
        """The last published version; -1 before the first :meth:`publish`."""
        return int(self._header[_VERSION]) if self._header[_SEQ] > 0 else -1

    @torch.no_grad()
    def publish(self, state_dict: Mapping[str, torch.Tensor], version: int) -> None:
        """Copy ``state_dict`` (any device) in as ``version``."""
        header = self._header
        header[_SEQ] += 1  # odd: a copy is under way
        for name, _ in self.specs:
            self._views[name].copy_(state_dict[name].detach())
        header[_VERSION] = version
        header[_SEQ] += 1  # even: consistent again

    @torch.no_grad()
    def load_into(self, module: nn.Module, current: int) -> int:
        """Load the published weights into ``module`` if their version is not ``current``.

        Returns the version ``module`` now holds (``current`` when nothing changed or nothing was
        published yet).
        """
        header = self._header
        targets = module.state_dict()
        while True:
            seq = int(header[_SEQ])
            if seq == 0:
                return current
            if seq % 2:
                os.sched_yield()
                continue
            version = int(header[_VERSION])
            if version == current:
                return current
            for name, _ in self.specs:
                targets[name].copy_(self._views[name])
            if int(header[_SEQ]) == seq:
                return version
            self.torn_reads += 1
