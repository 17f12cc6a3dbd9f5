"""The annotator and ``kudos annotate`` end to end on the real embedded LLM (Qwen2.5-Coder-1.5B via
llama.cpp) into a SQLite store: labels with soft labels from log-probs, and a second pass that asks
the LLM nothing."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kudos.commands.main import main
from kudos.feedback.annotator import Annotator, AnnotatorConfig
from kudos.feedback.prompts import PromptTemplate
from kudos.feedback.store import open_store

CAPTIONS = ["You kill the newt!", "It's solid stone.", "You see here 7 gold pieces.", "The door is locked.", ""]
WAIT_S = 600.0  # a few seconds per caption on two busy cores


@pytest.fixture(scope="module")
def llm(embedded_model: Path) -> Iterator[Any]:
    from kudos.feedback.embedded import EmbeddedLLM

    backend = EmbeddedLLM(threads=2)
    yield backend
    backend.close()


def test_annotator_labels_with_the_embedded_model(llm: Any, tmp_path: Path) -> None:
    template = PromptTemplate()
    with open_store(tmp_path / "labels.sqlite") as store:
        with Annotator(llm, store, template, AnnotatorConfig(batch_size=4)) as annotator:
            annotator.submit(CAPTIONS)
            assert annotator.wait_idle(WAIT_S)
            first = annotator.metrics()
        records = store.get_many(annotator.prompt_hash, llm.model_id, CAPTIONS)
        assert set(records) == set(CAPTIONS) and first.server_errors == 0
        for r in records.values():
            assert r.model_id == llm.model_id and r.soft_label is not None and 0.0 < r.soft_label < 1.0
        kill, stone = records["You kill the newt!"], records["It's solid stone."]
        assert (kill.label, stone.label) == (1, 0) and kill.soft_label > stone.soft_label  # type: ignore[operator]

        # Second pass over the same captions: everything comes from the store.
        asked_before = llm.stats["requests"]
        with Annotator(llm, store, template) as again:
            again.submit(CAPTIONS)
            assert again.wait_idle(WAIT_S)
            second = again.metrics()
        assert llm.stats["requests"] == asked_before
        assert (second.llm_requests, second.cache_hits, second.cache_hit_rate) == (0, len(CAPTIONS), 1.0)

        # Pairs derived from these per-caption scores need no LLM call either; "auto" (the default)
        # derives them because the embedded model is pointwise_only.
        config = AnnotatorConfig(obs_subsample=1)  # pairs from every caption seen, not every 10th
        with Annotator(llm, store, PromptTemplate(kind="rank"), config) as ranker:
            ranker.submit(CAPTIONS)
            assert ranker.wait_idle(WAIT_S)
        pairs = store.labels(ranker.prompt_hash, llm.model_id)
        assert pairs and llm.stats["requests"] == asked_before
        assert all(r.label in (0, 1, 2) and r.caption != r.caption2 for r in pairs)


def test_kudos_annotate_command(llm: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "captions.csv"
    source.write_text("caption\nYou kill the newt!\nIt's solid stone.\nYou kill the newt!\n")
    args = ["annotate", str(source), "--store", str(tmp_path / "labels.sqlite"), "--threads", "2",
            "--output", str(tmp_path / "out.jsonl")]
    assert main(args) == 0
    assert re.search(r"labelled\s*│\s*2\b", capsys.readouterr().err)
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    expected = [("You kill the newt!", 1), ("It's solid stone.", 0), ("You kill the newt!", 1)]
    assert [(r["caption"], r["label"]) for r in written] == expected
    assert main(args) == 0  # resumed: everything is in the store
    assert re.search(r"llm requests\s*│\s*0\b", capsys.readouterr().err)
