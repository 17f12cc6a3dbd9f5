"""Shared policy weights: versioned, loaded only when they changed, never torn."""

import multiprocessing as mp
import random
import time

import torch
from torch import nn

from kudos.rl.weights import SharedWeights


def _module() -> nn.Module:
    return nn.Sequential(nn.Linear(1024, 1024), nn.Linear(1024, 64))


def test_published_weights_load_once_per_version():
    source, reader = _module(), _module()
    shared = SharedWeights(source.state_dict(), mp.get_context("spawn"))
    assert shared.version == -1 and shared.load_into(reader, current=-1) == -1  # nothing yet
    shared.publish(source.state_dict(), version=3)
    assert shared.load_into(reader, current=-1) == 3
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), reader.state_dict().values()))
    with torch.no_grad():
        reader[0].weight.zero_()
    assert shared.load_into(reader, current=3) == 3  # same version: nothing is copied
    assert reader[0].weight.abs().sum() == 0


def _filled(value: float) -> dict[str, torch.Tensor]:
    return {k: torch.full_like(v, value) for k, v in _module().state_dict().items()}


def _publish_forever(shared: SharedWeights, stop) -> None:
    """Version v holds the value 1 + v % 2 everywhere; a new version every two milliseconds or so, about
    as long as a reader's copy takes, so copies and publications overlap."""
    filled = [_filled(1.0), _filled(2.0)]
    version = 0
    while not stop.is_set():
        version += 1
        shared.publish(filled[version % 2], version)
        time.sleep(0.002)


def test_a_reader_never_sees_a_torn_copy():
    ctx = mp.get_context("spawn")
    reader = _module()
    shared = SharedWeights(reader.state_dict(), ctx)
    stop = ctx.Event()
    writer = ctx.Process(target=_publish_forever, args=(shared, stop), daemon=True)
    writer.start()
    try:
        version, seen = -1, set()
        rng = random.Random(0)
        deadline = time.time() + 60
        while (len(seen) < 40 or not shared.torn_reads) and time.time() < deadline:
            time.sleep(rng.uniform(0.0, 0.002))  # land anywhere in the writer's cycle
            version = shared.load_into(reader, version)
            if version < 1:
                continue
            seen.add(version)
            values = torch.cat([p.detach().flatten() for p in reader.parameters()])
            assert (values == 1 + version % 2).all(), f"version {version} mixed with {values.unique().tolist()}"
        # The writer published while readers copied: the copies that overlapped were retried.
        assert shared.torn_reads > 0
    finally:
        stop.set()
        writer.join(timeout=10)
