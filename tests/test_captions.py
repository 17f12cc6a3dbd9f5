import numpy as np

from kudos.envs.captions import CaptionCounter, clean_caption, decode_caption, join_captions


def _message(raw: bytes) -> np.ndarray:
    buffer = np.zeros(256, dtype=np.uint8)
    buffer[: len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return buffer


def test_empty_message_is_the_empty_caption():
    assert decode_caption(np.zeros(256, dtype=np.uint8)) == ""
    assert decode_caption(b"") == ""
    assert decode_caption(_message(b"   ")) == ""


def test_padding_and_whitespace_are_normalised():
    assert decode_caption(_message(b"  You kill the newt!  ")) == "You kill the newt!"
    assert decode_caption(_message(b"You hear a door open.  It's a wall.")) == "You hear a door open. It's a wall."
    assert decode_caption(_message(b"a\tb\n c")) == "a b c"


def test_bytes_after_the_first_nul_are_ignored():
    assert decode_caption(_message(b"You see here a dagger.\0garbage")) == "You see here a dagger."


def test_non_ascii_bytes_decode_losslessly():
    caption = decode_caption(_message(b"You read: \"\xe9l\xff\x80\"."))
    assert caption == 'You read: "\u00e9l\u00ff\x80".'
    # Latin-1 is one-to-one: distinct byte strings never collapse to one caption.
    assert decode_caption(_message(b"\xe9")) != decode_caption(_message(b"\xe8"))


def test_more_markers_are_dropped():
    assert clean_caption("You kill the newt!--More--") == "You kill the newt!"
    assert decode_caption(_message(b"Welcome!--More--  You hear noises.")) == "Welcome! You hear noises."


def test_more_chain_is_joined_in_order_without_repeats():
    assert join_captions(["You hit the jackal!", "The jackal bites!", "The jackal bites!", ""]) == (
        "You hit the jackal! The jackal bites!"
    )
    assert join_captions([]) == ""
    assert join_captions(["", ""]) == ""


def test_decode_is_stable_across_cache_hits():
    raw = _message(b"You find a hidden passage.")
    assert decode_caption(raw) is decode_caption(raw.copy())


def test_counter_counts_each_sighting_in_the_episode():
    counter = CaptionCounter()
    assert [counter.observe(c) for c in ["a", "", "a", "a", ""]] == [1, 1, 2, 3, 2]
    assert counter["a"] == 3 and counter["never"] == 0 and len(counter) == 2
    counter.reset()
    assert counter.observe("a") == 1
