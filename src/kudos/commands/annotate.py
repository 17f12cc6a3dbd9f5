"""``kudos annotate``: label a file of captions or caption pairs offline, resumably.

Every label goes to the label store as soon as its batch is answered, and items already in the
store are never asked again, so a run stopped with Ctrl-C (or by a server fault) resumes where it
stopped when the same command is run again.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from kudos.backoff import Backoff
from kudos.errors import KudosError
from kudos.feedback.backend import LLMBackend
from kudos.feedback.endpoints import HTTPConfig
from kudos.feedback.labeler import Labeler, resolve_spec
from kudos.feedback.prompts import GOALS, PromptTemplate
from kudos.feedback.store import Item, LabelStore
from kudos.fsutil import atomic_write

log = logging.getLogger(__name__)


def read_items(path: Path) -> list[Item]:
    """Captions or ordered pairs from a JSONL or CSV file, in file order.

    JSONL: one per line, a JSON string or ``{"caption": ...}`` for a caption, ``{"first": ...,
    "second": ...}`` for a pair. CSV: a header row with a ``caption`` column, or ``first`` and
    ``second`` columns. A file holds captions or pairs, not both.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise KudosError(f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise KudosError(f"{path} is not UTF-8 text ({exc.reason})") from exc
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        items = [_jsonl_item(line, f"{path}:{n}") for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    elif suffix == ".csv":
        items = _csv_items(text, path)
    else:
        raise KudosError(f"{path}: unknown input format {suffix!r}; use a .jsonl or .csv file")
    if len({isinstance(item, str) for item in items}) > 1:
        raise KudosError(f"{path} mixes captions and pairs; put them in separate files")
    return items


def _jsonl_item(line: str, where: str) -> Item:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise KudosError(f"{where}: not JSON ({exc.msg})") from exc
    if isinstance(obj, str):
        return obj
    if isinstance(obj, dict) and isinstance(obj.get("caption"), str):
        return obj["caption"]
    if isinstance(obj, dict) and isinstance(obj.get("first"), str) and isinstance(obj.get("second"), str):
        return obj["first"], obj["second"]
    raise KudosError(f'{where}: expected a string, {{"caption": ...}} or {{"first": ..., "second": ...}}')


def _csv_items(text: str, path: Path) -> list[Item]:
    rows = csv.DictReader(text.splitlines())
    fields = set(rows.fieldnames or ())
    if "caption" in fields:
        return [row["caption"] or "" for row in rows]
    if {"first", "second"} <= fields:
        return [(row["first"] or "", row["second"] or "") for row in rows]
    raise KudosError(f"{path}: the CSV header needs a 'caption' column, or 'first' and 'second' columns")


@dataclass
class AnnotateSummary:
    """What one ``kudos annotate`` run did (counts of distinct items; seconds)."""

    items: int = 0
    already_stored: int = 0
    labelled: int = 0
    unknown: int = 0
    llm_requests: int = 0
    parse_failures: int = 0
    server_errors: int = 0
    seconds: float = 0.0
    interrupted: bool = False


@contextmanager
def _stop_after_batch() -> Iterator[threading.Event]:
    """The first Ctrl-C sets the event (finish and store the batch in flight, then stop), so no
    answer is thrown away; a second Ctrl-C interrupts at once."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # signal handlers can only be set from the main thread
        return

    def on_sigint(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        log.warning("stopping after this batch (Ctrl-C again to stop now)")

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


def annotate_items(
    items: list[Item],
    store: LabelStore,
    labeler: Labeler,
    batch_size: int = 8,
    max_failures: int = 5,
    backoff_s: float = 2.0,
    console: Console | None = None,
) -> AnnotateSummary:
    """Label the distinct ``items`` not yet in ``store``, batch by batch, with a progress bar.

    A batch hit by a server fault is retried (waiting about ``backoff_s``, doubling, jittered) up to
    ``max_failures`` times in a row; then a KudosError says to rerun later. Ctrl-C stops after
    the batch in flight is stored (``summary.interrupted``).
    """
    start = time.perf_counter()
    unique = list(dict.fromkeys(items))
    stored = store.get_many(labeler.prompt_hash, labeler.model_id, unique)
    todo = [item for item in unique if item not in stored]
    summary = AnnotateSummary(items=len(unique), already_stored=len(unique) - len(todo))
    columns = (TextColumn("labelling"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    progress = Progress(*columns, console=console or Console(stderr=True))
    with progress, _stop_after_batch() as stop:
        bar = progress.add_task("labelling", total=len(unique), completed=summary.already_stored)
        try:
            for i in range(0, len(todo), batch_size):
                if stop.is_set():
                    summary.interrupted = True
                    break
                batch, retry = todo[i : i + batch_size], Backoff(backoff_s, backoff_s * 2 ** max_failures)
                while batch:
                    outcome = labeler.label(batch)
                    store.put_many(outcome.records)
                    own = [r for r in outcome.records if r.prompt_hash == labeler.prompt_hash]
                    summary.labelled += len(own)
                    summary.unknown += sum(r.label is None for r in own)
                    progress.advance(bar, len(own))
                    batch = outcome.failed
                    if outcome.error is not None:
                        if retry.failures + 1 >= max_failures:
                            raise KudosError(
                                f"the LLM failed {max_failures} times in a row ({outcome.error}); {summary.labelled} "
                                "labels were stored: rerun the same command to resume"
                            )
                        log.warning("LLM fault (%s); retrying %d items", outcome.error, len(batch))
                        if retry.wait(stop):  # Ctrl-C during the wait: stop now, nothing is in flight
                            break
        except KeyboardInterrupt:
            summary.interrupted = True
    stats = labeler.stats
    summary.llm_requests, summary.parse_failures, summary.server_errors = (
        stats.llm_requests, stats.parse_failures, stats.server_errors
    )
    summary.seconds = time.perf_counter() - start
    return summary


def write_output(path: Path, items: list[Item], store: LabelStore, labeler: Labeler) -> int:
    """One JSON object per input item (duplicates included) with its stored record; atomic."""
    records = store.get_many(labeler.prompt_hash, labeler.model_id, items)
    lines = []
    for item in items:
        record = records.get(item)
        if record is not None:
            obj: dict[str, Any] = asdict(record)
            del obj["id"]
            lines.append(json.dumps(obj, ensure_ascii=False) + "\n")
    atomic_write(path, "".join(lines))
    return len(lines)


def register(subparsers: Any) -> None:
    """Add ``kudos annotate`` to the CLI."""
    p = subparsers.add_parser(
        "annotate",
        help="label a file of captions or caption pairs with the LLM (resumable)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", type=Path, help='.jsonl ("caption" or "first"/"second" per line) or .csv file')
    p.add_argument(
        "--store", default=None,
        help="label store: SQLite file or postgresql:// URL (default: the per-user store `kudos train` uses)",
    )
    p.add_argument("--llm", default="embedded", help="'embedded' or http://host:port/v1[,http://...]")
    p.add_argument(
        "--llm-model", "--model", dest="llm_model", default=None,
        help="model the HTTP endpoints serve (default: the one listed by GET /v1/models)",
    )
    p.add_argument(
        "--client-error-limit-s", type=float, default=HTTPConfig.client_error_limit_s,
        help="stop when the endpoints have rejected every request (HTTP 4xx) for this many seconds",
    )
    p.add_argument("--threads", type=int, default=None, help="llama.cpp threads (embedded; default: all cores)")
    p.add_argument("--goal", choices=sorted(GOALS), default="score", help="goal preset of the prompt")
    p.add_argument("--format", choices=["short", "long"], default="short", help="direct answer or ONI reasoning")
    p.add_argument(
        "--pairwise", choices=["auto", "prompt", "pointwise"], default="auto",
        help="pairs: ask 'which is better' (prompt) or compare per-caption scores (pointwise)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="requests per LLM call")
    p.add_argument("--output", type=Path, default=None, help="also write the labels of the input items here (JSONL)")
    p.set_defaults(handler=run_annotate)


def run_annotate(args: argparse.Namespace) -> int:
    """Handler of ``kudos annotate``."""
    from kudos.feedback.factory import make_backend
    from kudos.feedback.store import default_store_path, open_store

    if args.batch_size < 1:
        raise KudosError("--batch-size must be at least 1")
    items = read_items(args.input)
    kind = "rank" if items and not isinstance(items[0], str) else "classify"
    template = PromptTemplate(kind=kind, goal=args.goal, format=args.format)
    console = Console(stderr=True)
    with open_store(args.store or default_store_path()) as store:
        backend: LLMBackend = make_backend(
            args.llm, threads=args.threads or os.cpu_count() or 1, model=args.llm_model,
            config=HTTPConfig(client_error_limit_s=args.client_error_limit_s),
        )
        try:
            labeler = Labeler(backend, resolve_spec(template, backend, args.pairwise), store)
            summary = annotate_items(items, store, labeler, args.batch_size, console=console)
            if args.output is not None and not summary.interrupted:
                write_output(args.output, items, store, labeler)
        finally:
            backend.close()
    table = Table(title=f"kudos annotate: {args.input}", show_header=False)
    for name, value in asdict(summary).items():
        table.add_row(name.replace("_", " "), f"{value:.1f}" if isinstance(value, float) else str(value))
    if summary.labelled and summary.seconds:
        table.add_row("labels/s", f"{summary.labelled / summary.seconds:.2f}")
    table.add_row("store", store.location)
    console.print(table)
    if summary.interrupted:
        console.print("interrupted: the labels so far are stored; rerun the same command to resume")
        return 130
    return 0
