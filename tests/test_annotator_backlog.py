"""The annotator's two bookkeeping parts on their own: the backlog's stages and bound, and the
pair reservoir's sampling."""

from __future__ import annotations

from collections import Counter

from kudos.feedback.backlog import Backlog
from kudos.feedback.reservoir import PairReservoir


def test_backlog_accepts_each_caption_once_up_to_its_bound() -> None:
    backlog = Backlog(max_size=3)
    assert backlog.accept(["a", "b", "a"]) == (1, 0)
    assert backlog.accept(["c", "d", "b"]) == (1, 1)  # d finds it full; b was seen
    assert backlog.intake == ["a", "b", "c"] and backlog.size == 3 and backlog.waiting == 3
    assert backlog.accept([("a", "b"), ("a", "b")]) == (0, 2)  # pairs count towards the bound too


def test_backlog_moves_items_through_its_stages_and_counts_them_until_stored() -> None:
    backlog = Backlog(max_size=10)
    backlog.accept(["a", "b", "c", "d"])
    intake, restored, due = backlog.take_new(now=0.0)
    assert (intake, restored, due) == (["a", "b", "c", "d"], [], [])
    misses = backlog.add_pending(intake, taken=4, stored=["b"], counted=set())
    assert misses == 3 and list(backlog.pending) == ["a", "c", "d"] and backlog.size == 3  # b: already stored
    batch = backlog.take_batch(batch_size=2, oldest=1)
    assert batch == [("a", True), ("d", False)] and backlog.in_flight == {"a", "d"}
    assert backlog.waiting == 1
    backlog.requeue([("a", True)])  # a fault: a goes back to the old end
    backlog.done(["d"])
    backlog.stored(1)
    assert list(backlog.pending) == ["a", "c"] and not backlog.in_flight and backlog.size == 2


def test_backlog_items_claimed_elsewhere_come_back_when_due() -> None:
    backlog = Backlog(max_size=10)
    backlog.accept(["a", "b"])
    intake, _, _ = backlog.take_new(now=0.0)
    backlog.add_pending(intake, taken=2, stored=[], counted=set())
    backlog.take_batch(batch_size=2, oldest=0)
    backlog.defer(["a"], until=5.0)
    assert backlog.in_flight == {"b"} and backlog.items() == ["a", "b"]
    assert backlog.take_new(now=4.0) == ([], [], [])
    assert backlog.take_new(now=5.0) == ([], ["a"], ["a"])
    # looked up again: not counted as a second cache miss
    assert backlog.add_pending(["a"], taken=1, stored=[], counted={"a"}) == 0
    assert backlog.size == 2


def test_backlog_keeps_items_a_store_fault_left_unread() -> None:
    backlog = Backlog(max_size=10)
    backlog.accept(["a", "b"])
    intake, restored, _ = backlog.take_new(now=0.0)
    backlog.retake([("a", "b")], taken=len(intake) + len(restored))  # two captions became one pair
    assert backlog.restored == [("a", "b")] and backlog.size == 1


def test_backlog_restores_a_checkpoint_and_remembers_its_captions() -> None:
    backlog = Backlog(max_size=10)
    backlog.restore(["a", ("b", "c")])
    assert backlog.size == 2 and backlog.items() == ["a", ("b", "c")]
    assert backlog.accept(["a"]) == (1, 0)


def test_reservoir_keeps_a_uniform_sample_of_every_caption_offered() -> None:
    kept: Counter[str] = Counter()
    for seed in range(400):
        reservoir = PairReservoir(size=5, seed=seed)
        for i in range(50):
            reservoir.offer(str(i))
        assert len(reservoir) == 5 and reservoir.offered == 50
        kept.update(reservoir.captions)
    early, late = sum(kept[str(i)] for i in range(25)), sum(kept[str(i)] for i in range(25, 50))
    assert abs(early - late) < 0.2 * (early + late)  # each caption kept with probability 5/50


def test_reservoir_observes_every_subsample_th_caption() -> None:
    reservoir = PairReservoir(size=100, subsample=3)
    reservoir.observe([str(i) for i in range(10)])
    assert reservoir.captions == ["0", "3", "6", "9"] and reservoir.observed == 10


def test_reservoir_pairs_never_pair_a_caption_with_itself() -> None:
    reservoir = PairReservoir(size=10, seed=1)
    assert reservoir.sample_pairs(5) == []  # nothing to draw from yet
    for caption in ("a", "b", "c"):
        reservoir.offer(caption)
    pairs = reservoir.sample_pairs(200)
    assert pairs and all(first != second for first, second in pairs) and len(pairs) < 200
    new = reservoir.pair_new("d", 50)
    assert len(new) == 50 and all("d" in pair for pair in new)
    assert {pair.index("d") for pair in new} == {0, 1}  # both positions
    assert "d" in reservoir.captions


def test_reservoir_state_round_trips() -> None:
    reservoir = PairReservoir(size=3, subsample=2, seed=4)
    reservoir.observe([str(i) for i in range(20)])
    again = PairReservoir(size=3, subsample=2)
    again.load_state_dict(reservoir.state_dict())
    assert (again.captions, again.offered, again.observed) == (reservoir.captions, 10, 20)
