"""The annotator's backlog: every item accepted for labelling and not yet stored, by stage."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence

from kudos.feedback.store import Item

#: An item taken for a batch, with whether it came from the old end of pending (a fault puts it
#: back there).
Taken = tuple[Item, bool]


class Backlog:
    """Items by stage, bounded by ``max_size`` accepted-but-unstored items. Not thread-safe: the
    annotator calls it under its lock.

    - intake: accepted by ``submit`` (captions, or pairs already sampled), not yet looked up in
      the store;
    - restored: from a checkpoint, or due again after another run held them; looked up too;
    - elsewhere: claimed by another run sharing the store, with when to look again;
    - pending: to ask, oldest first; in flight: in the batch the LLM is answering.

    ``size`` counts accepted items until stored (or found stored); captions once accepted are
    remembered (``seen``) so a caption is accepted once per run.
    """

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.size = 0
        self.seen: set[str] = set()
        self.intake: list[Item] = []
        self.restored: list[Item] = []
        self.elsewhere: list[tuple[float, Item]] = []
        self.pending: OrderedDict[Item, None] = OrderedDict()
        self.in_flight: set[Item] = set()

    @property
    def waiting(self) -> int:
        """Items not in flight (the reported queue depth)."""
        return len(self.intake) + len(self.restored) + len(self.elsewhere) + len(self.pending)

    def accept(self, items: Iterable[Item]) -> tuple[int, int]:
        """Add new items to the intake; (duplicates skipped, dropped because full). Pairs are
        deduplicated later, against pending and the store."""
        duplicates = dropped = 0
        for item in items:
            if item in self.seen:
                duplicates += 1
            elif self.size >= self.max_size:
                dropped += 1
            else:
                if isinstance(item, str):
                    self.seen.add(item)
                self.intake.append(item)
                self.size += 1
        return duplicates, dropped

    def restore(self, items: Sequence[Item]) -> None:
        """Items of a checkpoint: looked up in the store, then asked."""
        self.seen.update(item for item in items if isinstance(item, str))
        self.restored.extend(items)
        self.size += len(items)

    def take_new(self, now: float) -> tuple[list[Item], list[Item], list[Item]]:
        """Empty the intake, and take restored items and those claimed elsewhere that are due
        at ``now`` (monotonic s): (intake, restored + due, due)."""
        intake, self.intake = self.intake, []
        due = [item for when, item in self.elsewhere if when <= now]
        self.elsewhere = [(when, item) for when, item in self.elsewhere if when > now]
        restored, self.restored = self.restored + due, []
        return intake, restored, due

    def retake(self, items: list[Item], taken: int) -> None:
        """Put ``items`` (made of ``taken`` items of :meth:`take_new`, e.g. captions turned into
        pairs) back to be looked up again (the store could not be read)."""
        self.restored[:0] = items
        self.size += len(items) - taken

    def add_pending(self, items: Sequence[Item], taken: int, stored: Iterable[Item], counted: set[Item]) -> int:
        """Queue ``items`` (made of ``taken`` items of :meth:`take_new`) but those ``stored``,
        pending or in flight; returns how many of those queued were not in ``counted`` (new
        cache misses)."""
        stored = set(stored)
        added = misses = 0
        for item in items:
            if item in stored or item in self.pending or item in self.in_flight:
                continue
            self.pending[item] = None
            added += 1
            misses += item not in counted
        self.size += added - taken
        return misses

    def take_batch(self, batch_size: int, oldest: int) -> list[Taken]:
        """Up to ``batch_size`` pending items, ``oldest`` of them from the old end and the rest
        from the new end, now in flight."""
        size = min(batch_size, len(self.pending))
        n_old = min(oldest, size)
        batch = [(self.pending.popitem(last=False)[0], True) for _ in range(n_old)]
        batch += [(self.pending.popitem(last=True)[0], False) for _ in range(size - n_old)]
        self.in_flight.update(item for item, _ in batch)
        return batch

    def requeue(self, batch: Sequence[Taken]) -> None:
        """Put unanswered items back where they were taken from."""
        for item, from_old_end in batch:
            self.in_flight.discard(item)
            self.pending[item] = None
            if from_old_end:
                self.pending.move_to_end(item, last=False)

    def defer(self, items: Iterable[Item], until: float) -> None:
        """In-flight items another run has claimed: look them up again at ``until``."""
        for item in items:
            self.in_flight.discard(item)
            self.elsewhere.append((until, item))

    def done(self, items: Iterable[Item]) -> None:
        """Items answered (stored next) or put back: no longer in flight."""
        self.in_flight.difference_update(items)

    def stored(self, n: int) -> None:
        """``n`` records of accepted items were stored."""
        self.size -= n

    def items(self) -> list[Item]:
        """Every unstored item, oldest first (for a checkpoint)."""
        elsewhere = [item for _, item in self.elsewhere]
        return [*self.restored, *elsewhere, *self.pending, *self.in_flight, *self.intake]
