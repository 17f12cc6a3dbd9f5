"""``kudos annotate``: input files, resuming after Ctrl-C with nothing asked twice, server faults.
(The end-to-end run on the real embedded model is in test_annotator_embedded.py.)"""

from __future__ import annotations

import io
import json
import os
import signal
from collections.abc import Sequence
from pathlib import Path

import pytest
import threading
from rich.console import Console
from test_annotator import FaultyBackend, truth

from kudos.errors import KudosError
from kudos.commands.annotate import annotate_items, read_items, write_output
from kudos.feedback.backend import LLMReply, LLMRequest
from kudos.feedback.labeler import Labeler
from kudos.feedback.prompts import PromptTemplate
from kudos.feedback.store import SQLiteLabelStore

QUIET = Console(file=io.StringIO())


def test_read_jsonl_and_csv(tmp_path: Path) -> None:
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text('"It\'s a wall."\n\n{"caption": "You kill the newt!", "extra": 1}\n{"caption": ""}\n')
    assert read_items(jsonl) == ["It's a wall.", "You kill the newt!", ""]
    pairs = tmp_path / "p.jsonl"
    pairs.write_text('{"first": "a", "second": "b"}\n')
    assert read_items(pairs) == [("a", "b")]
    csv_file = tmp_path / "c.csv"
    csv_file.write_text('id,caption\n1,"You see here 5 gold pieces, and a key."\n2,\n')
    assert read_items(csv_file) == ["You see here 5 gold pieces, and a key.", ""]
    csv_pairs = tmp_path / "p.csv"
    csv_pairs.write_text("first,second\na,b\n")
    assert read_items(csv_pairs) == [("a", "b")]


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("x.txt", "a\n", "unknown input format"),
        ("x.jsonl", '"a"\n{"first": "a", "second": "b"}\n', "mixes captions and pairs"),
        ("x.jsonl", "{oops\n", r"x.jsonl:1: not JSON"),
        ("x.jsonl", '"a"\n{"text": "b"}\n', r"x.jsonl:2: expected a string"),
        ("x.csv", "text\na\n", "needs a 'caption' column"),
        ("missing.jsonl", None, "cannot read"),
    ],
)
def test_bad_input_files_are_user_errors(tmp_path: Path, name: str, content: str | None, message: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(KudosError, match=message):
        read_items(path)


class CtrlCBackend(FaultyBackend):
    """FaultyBackend whose user presses Ctrl-C (a real SIGINT) during the given generate() call."""

    def __init__(self, interrupt_on_call: int) -> None:
        super().__init__()
        self.interrupt_on_call = interrupt_on_call

    def generate(self, requests: Sequence[LLMRequest], cancel: threading.Event | None = None) -> list[LLMReply]:
        if len(self.calls) + 1 == self.interrupt_on_call:
            os.kill(os.getpid(), signal.SIGINT)
        return super().generate(requests, cancel)


def test_resume_after_ctrl_c_asks_nothing_twice(tmp_path: Path) -> None:
    captions = [f"You kill the rat {i}!" if i % 2 else f"It's a wall {i}." for i in range(20)]
    items = captions + captions[:5]  # duplicates in the file are asked once
    template = PromptTemplate()
    with SQLiteLabelStore(tmp_path / "labels.sqlite") as store:
        first = CtrlCBackend(interrupt_on_call=2)
        summary = annotate_items(items, store, Labeler(first, template, store), batch_size=4, console=QUIET)
        # The batch in flight at Ctrl-C was finished and stored, then the run stopped.
        assert summary.interrupted and summary.labelled == 8 and summary.items == 20
        second = FaultyBackend()
        labeler = Labeler(second, template, store)
        summary = annotate_items(items, store, labeler, batch_size=4, console=QUIET)
        assert not summary.interrupted and (summary.already_stored, summary.labelled) == (8, 12)
        assert not set(first.asked) & set(second.asked) and set(first.asked) | set(second.asked) == set(captions)
        out = tmp_path / "out.jsonl"
        assert write_output(out, items, store, labeler) == 25
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(line["caption"], line["label"]) for line in lines] == [(c, int(truth(c))) for c in items]


def test_server_faults_are_retried_then_reported(tmp_path: Path) -> None:
    captions = [f"caption {i}" for i in range(6)]
    with SQLiteLabelStore(tmp_path / "labels.sqlite") as store:
        backend = FaultyBackend()
        backend.down_calls = 2
        labeler = Labeler(backend, PromptTemplate(), store)
        summary = annotate_items(captions, store, labeler, batch_size=4, backoff_s=0.001, console=QUIET)
        assert summary.labelled == 6 and summary.server_errors == 2
        backend.down_calls = 10**6
        with pytest.raises(KudosError, match="failed 3 times in a row.*rerun the same command"):
            annotate_items(captions + ["new"], store, labeler, max_failures=3, backoff_s=0.001, console=QUIET)
