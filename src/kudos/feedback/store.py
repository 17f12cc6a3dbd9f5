"""LabelStore: durable LLM labels keyed by (prompt version hash, model id, caption or caption pair).

A label asked once is never asked again: by this run, a resumed run, another process or another
machine sharing the store. Two back ends with one interface:

- SQLite (default): a file at a path the user sets, WAL journal so readers never block the writer,
  writers serialised by SQLite's lock with a generous busy timeout; safe for several processes.
- PostgreSQL: a ``postgresql://`` URL (psycopg 3), for a store shared by many machines.

Rows carry an id that increases in commit order, so a reward-model trainer can poll
``labels(prompt_hash, model_id, since_id=last_id)`` for new labels and never miss one.

Claims keep runs that share a store from asking the LLM twice for the same new item: before
asking, a run ``claim_many``-s the items it misses and asks only for those it got; the others are
being asked by another run and arrive through the store. A claim is a row in the ``claims`` table
with an owner and a lease (an expiry time on the database's clock for PostgreSQL, on the host's
for SQLite): an owner that dies stops renewing, its claims expire, and the next run to ask takes
them, so no item stays unlabelled. Storing a label deletes its claim in the same transaction.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit, urlunsplit

from kudos.errors import KudosError
from kudos.fsutil import atomic_write
from kudos.paths import cache_dir

log = logging.getLogger(__name__)

Item = str | tuple[str, str]  # a caption (classification) or an ordered caption pair (ranking)

_COLUMNS = (
    "id, prompt_hash, model_id, kind, caption, caption2, label, soft_label, reply, latency_s, created_at"
)
_INSERT_COLUMNS = (
    "key, prompt_hash, model_id, kind, caption, caption2, label, soft_label, reply, latency_s, created_at"
)
_CHUNK = 500  # keys per SELECT ... IN (...): well under SQLite's variable limit
_EXPORT_PAGE = 10_000


class StoreError(KudosError):
    """The label store cannot be read or written (corrupt file, unreachable server, ...)."""


@dataclass(frozen=True)
class LabelRecord:
    """One LLM answer about a caption (``caption2`` None) or an ordered pair (caption, caption2).

    label: the parsed label (classification 1/0; pairs 1/2 for the better caption, 0 for a tie),
    None when the reply stayed unreadable after one re-ask ("unknown").
    soft_label: P(helpful), or P(first better) for pairs, from answer-token log-probs; None if the
    backend gave none. latency_s: wall seconds of the LLM request(s). timestamp: unix seconds.
    id: assigned by the store, increasing in commit order; None before the record is stored.
    """

    prompt_hash: str
    model_id: str
    kind: str
    caption: str
    caption2: str | None
    label: int | None
    soft_label: float | None
    reply: str
    latency_s: float
    timestamp: float
    id: int | None = None

    @property
    def item(self) -> Item:
        return self.caption if self.caption2 is None else (self.caption, self.caption2)


def item_parts(item: Item) -> tuple[str, str | None]:
    return (item, None) if isinstance(item, str) else (item[0], item[1])


def label_key(prompt_hash: str, model_id: str, item: Item) -> bytes:
    """16-byte key of (prompt hash, model id, item); length-prefixed parts, so it is unambiguous."""
    first, second = item_parts(item)
    text = f"{len(prompt_hash)}:{prompt_hash}{len(model_id)}:{model_id}{len(first)}:{first}"
    text += "-" if second is None else f"{len(second)}:{second}"
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def _row(record: LabelRecord) -> tuple[Any, ...]:
    return (
        label_key(record.prompt_hash, record.model_id, record.item),
        record.prompt_hash,
        record.model_id,
        record.kind,
        record.caption,
        record.caption2,
        record.label,
        record.soft_label,
        record.reply,
        record.latency_s,
        record.timestamp,
    )


def _record(row: Sequence[Any]) -> LabelRecord:
    """A LabelRecord from a row in ``_COLUMNS`` order."""
    (id_, prompt_hash, model_id, kind, caption, caption2, label, soft, reply, latency, created) = row
    return LabelRecord(
        prompt_hash=prompt_hash,
        model_id=model_id,
        kind=kind,
        caption=caption,
        caption2=caption2,
        label=label,
        soft_label=soft,
        reply=reply,
        latency_s=latency,
        timestamp=created,
        id=id_,
    )


_JSON_FIELDS = ("prompt_hash", "model_id", "kind", "caption", "caption2", "label", "soft_label", "reply",
                "latency_s", "timestamp")


def _record_from_json(obj: Any, where: str) -> LabelRecord:
    if not isinstance(obj, dict) or any(name not in obj for name in _JSON_FIELDS):
        raise KudosError(f"{where}: not a label record (needs the fields {', '.join(_JSON_FIELDS)})")
    record = LabelRecord(**{name: obj[name] for name in _JSON_FIELDS})
    well_typed = (
        all(isinstance(v, str) for v in (record.prompt_hash, record.model_id, record.kind, record.caption, record.reply))
        and (record.caption2 is None or isinstance(record.caption2, str))
        and (record.label is None or isinstance(record.label, int))
        and (record.soft_label is None or isinstance(record.soft_label, (int, float)))
        and isinstance(record.latency_s, (int, float))
        and isinstance(record.timestamp, (int, float))
    )
    if not well_typed:
        raise KudosError(f"{where}: malformed label record (a field has the wrong type)")
    return record


# (column, SQLite type, PostgreSQL type)
_SCHEMA = (
    ("id", "INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY"),
    ("key", "BLOB NOT NULL UNIQUE", "BYTEA NOT NULL UNIQUE"),
    ("prompt_hash", "TEXT NOT NULL", "TEXT NOT NULL"),
    ("model_id", "TEXT NOT NULL", "TEXT NOT NULL"),
    ("kind", "TEXT NOT NULL", "TEXT NOT NULL"),
    ("caption", "TEXT NOT NULL", "TEXT NOT NULL"),
    ("caption2", "TEXT", "TEXT"),
    ("label", "INTEGER", "INTEGER"),
    ("soft_label", "REAL", "DOUBLE PRECISION"),
    ("reply", "TEXT NOT NULL", "TEXT NOT NULL"),
    ("latency_s", "REAL NOT NULL", "DOUBLE PRECISION NOT NULL"),
    ("created_at", "REAL NOT NULL", "DOUBLE PRECISION NOT NULL"),
)


def _schema(postgres: bool) -> str:
    columns = ",\n    ".join(f"{name} {types[int(postgres)]}" for name, *types in _SCHEMA)
    key_type, time_type = ("BYTEA", "DOUBLE PRECISION") if postgres else ("BLOB", "REAL")
    return (
        f"CREATE TABLE IF NOT EXISTS labels (\n    {columns}\n);\n"
        "CREATE INDEX IF NOT EXISTS labels_by_prompt ON labels (prompt_hash, model_id, id);\n"
        # expires_at: unix seconds; a claim past it is free for any owner.
        f"CREATE TABLE IF NOT EXISTS claims (key {key_type} PRIMARY KEY, owner TEXT NOT NULL, "
        f"expires_at {time_type} NOT NULL);\n"
        "CREATE INDEX IF NOT EXISTS claims_by_owner ON claims (owner)"
    )


def new_claim_owner() -> str:
    """A claim owner id unique to this process and call: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LabelStore(ABC):
    """Durable label store; use ``open_store(path_or_url)``. Thread-safe and multi-process safe."""

    location: str

    def __init__(self) -> None:
        # One connection per thread (neither driver shares one well across threads), all kept
        # here so close() can close them.
        self._local = threading.local()
        self._connections: list[Any] = []
        self._lock = threading.Lock()

    def _own(self, conn: Any) -> Any:
        """Make ``conn`` this thread's connection."""
        self._local.conn = conn
        with self._lock:
            self._connections.append(conn)
        return conn

    def close(self) -> None:
        """Close every connection this object opened."""
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    # -- back-end primitives ------------------------------------------------------------------
    @abstractmethod
    def _select_keys(self, keys: Sequence[bytes]) -> list[tuple[bytes, tuple[Any, ...]]]:
        """(key, row in _COLUMNS order) for the stored keys among ``keys``."""

    @abstractmethod
    def _insert(self, rows: Sequence[tuple[Any, ...]]) -> int:
        """Insert rows (in _INSERT_COLUMNS order) in one transaction, skipping stored keys; count new."""

    @abstractmethod
    def _claim(self, keys: Sequence[bytes], owner: str, lease_s: float) -> set[bytes]:
        """In one transaction serialised with label writes: take the keys that have no label and no
        live claim of another owner (renewing ``owner``'s own); return the keys ``owner`` now holds."""

    @abstractmethod
    def _write_claims(self, sql: str, params: Sequence[Any]) -> int:
        """Run one UPDATE/DELETE on claims ('?' placeholders; '?now' = the store's clock); count rows."""

    @abstractmethod
    def _select_since(self, where: str, params: tuple[Any, ...], limit: int) -> list[tuple[Any, ...]]:
        """Rows with id > since, in id order; ``where`` uses '?' placeholders (translated per back end)."""

    # -- public interface ---------------------------------------------------------------------
    def get_many(self, prompt_hash: str, model_id: str, items: Sequence[Item]) -> dict[Item, LabelRecord]:
        """Stored records for the items that have one (items without a label are absent)."""
        by_key = {label_key(prompt_hash, model_id, item): item for item in items}
        keys = list(by_key)
        found: dict[Item, LabelRecord] = {}
        for start in range(0, len(keys), _CHUNK):
            for key, row in self._select_keys(keys[start : start + _CHUNK]):
                found[by_key[key]] = _record(row)
        return found

    def get(self, prompt_hash: str, model_id: str, item: Item) -> LabelRecord | None:
        return self.get_many(prompt_hash, model_id, [item]).get(item)

    def put_many(self, records: Sequence[LabelRecord]) -> int:
        """Store records atomically; a key already stored keeps its first record. Returns how many were new."""
        if not records:
            return 0
        return self._insert([_row(r) for r in records])

    def claim_many(
        self, prompt_hash: str, model_id: str, items: Sequence[Item], owner: str, lease_s: float = 60.0
    ) -> list[Item]:
        """Claim the items for ``owner`` for ``lease_s`` seconds; returns those it holds now, in order.

        An item is not claimed when it already has a label or another owner holds a live claim on it;
        claims ``owner`` already holds are renewed. Ask the LLM only for the returned items, then
        ``put_many`` their records (which releases the claims) or ``release_claims`` on failure.
        """
        by_key = {label_key(prompt_hash, model_id, item): item for item in items}
        keys = list(by_key)
        held: set[bytes] = set()
        for start in range(0, len(keys), _CHUNK):
            held |= self._claim(keys[start : start + _CHUNK], owner, lease_s)
        return [by_key[key] for key in keys if key in held]

    def renew_claims(self, owner: str, lease_s: float = 60.0) -> int:
        """Extend every claim ``owner`` holds to ``lease_s`` seconds from now (the heartbeat); count them."""
        return self._write_claims("UPDATE claims SET expires_at = ?now + ? WHERE owner = ?", (lease_s, owner))

    def release_claims(self, owner: str, prompt_hash: str | None = None, model_id: str | None = None,
                       items: Sequence[Item] | None = None) -> int:
        """Drop ``owner``'s claims on ``items`` (all its claims when items is None); count them."""
        if items is None:
            return self._write_claims("DELETE FROM claims WHERE owner = ?", (owner,))
        if prompt_hash is None or model_id is None:
            raise ValueError("release_claims with items needs their prompt_hash and model_id")
        keys = [label_key(prompt_hash, model_id, item) for item in items]
        return sum(
            self._write_claims("DELETE FROM claims WHERE owner = ? AND key = ?", (owner, key)) for key in keys
        )

    def labels(
        self, prompt_hash: str, model_id: str, since_id: int = 0, limit: int | None = None
    ) -> list[LabelRecord]:
        """Records of one (prompt, model) with id > since_id, in id (= commit) order: poll for new labels."""
        rows = self._select_since(
            "prompt_hash = ? AND model_id = ? AND id > ?", (prompt_hash, model_id, since_id), limit or -1
        )
        return [_record(r) for r in rows]

    def iter_all(self) -> Iterator[LabelRecord]:
        """Every record, in id order, paged so memory stays bounded."""
        since = 0
        while True:
            rows = self._select_since("id > ?", (since,), _EXPORT_PAGE)
            if not rows:
                return
            for row in rows:
                yield _record(row)
            since = rows[-1][0]

    def export_jsonl(self, path: str | Path) -> int:
        """Write every record as one JSON object per line (atomically: :func:`~kudos.fsutil.atomic_write`)."""
        count = 0

        def write(f: BinaryIO) -> None:
            nonlocal count
            for record in self.iter_all():
                obj = asdict(record)
                del obj["id"]
                f.write((json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8"))
                count += 1

        atomic_write(path, write)
        return count

    def import_jsonl(self, path: str | Path) -> int:
        """Add the records of a JSONL export; records already stored are kept. Returns how many were new."""
        path = Path(path)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise KudosError(f"cannot read {path}: {exc.strerror}") from exc
        records = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise KudosError(f"{path}:{number}: not JSON ({exc.msg})") from exc
            records.append(_record_from_json(obj, f"{path}:{number}"))
        return sum(self.put_many(records[i : i + _EXPORT_PAGE]) for i in range(0, len(records), _EXPORT_PAGE))

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# SQLite result codes (the low byte of sqlite_errorcode) that mean the file itself is bad.
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26


class ClaimHeartbeat:
    """Renews ``owner``'s claims every ``lease_s / 3`` seconds in a daemon thread until ``close()``,
    so a live owner keeps its claims through slow LLM calls and a dead one loses them after the lease.
    Renewal failures are logged and counted in ``failures`` (the claims then expire: at worst an item
    is asked twice), never raised into the caller."""

    def __init__(self, store: LabelStore, owner: str, lease_s: float = 60.0) -> None:
        self.store, self.owner, self.lease_s = store, owner, lease_s
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"claims-{owner}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self.store.renew_claims(self.owner, self.lease_s)
            except StoreError as exc:
                self.failures += 1
                log.warning("cannot renew label claims of %s: %s", self.owner, exc)

    def close(self) -> None:
        """Stop renewing (idempotent); the claims then lapse unless released."""
        self._stop.set()
        self._thread.join()


class SQLiteLabelStore(LabelStore):
    """Label store in one SQLite file (WAL). One connection per thread; writers take the lock first
    (BEGIN IMMEDIATE), so concurrent writers queue instead of failing on lock upgrades."""

    def __init__(self, path: str | Path, busy_timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        self._busy_timeout_s = busy_timeout_s
        super().__init__()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the folder of label store {self.path}: {exc.strerror}") from exc
        try:
            with self._guard():
                self._conn().executescript(_schema(postgres=False))
        except StoreError:
            self.close()
            raise

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Turn SQLite failures into one-line StoreErrors that name the file."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
            if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
                raise StoreError(
                    f"label store {self.path} is corrupt or not a SQLite database ({exc}); move it aside "
                    "to start a new store, or restore it from a JSONL export"
                ) from exc
            raise StoreError(f"label store {self.path}: {exc}") from exc

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT).
            conn = self._own(
                sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=False)
            )
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL is durable across application crashes in WAL mode (only an OS crash can lose
            # the last commits), and avoids an fsync per write batch.
            conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _select_keys(self, keys: Sequence[bytes]) -> list[tuple[bytes, tuple[Any, ...]]]:
        marks = ",".join("?" * len(keys))
        with self._guard():
            rows = self._conn().execute(f"SELECT key, {_COLUMNS} FROM labels WHERE key IN ({marks})", keys).fetchall()
        return [(row[0], row[1:]) for row in rows]

    def _insert(self, rows: Sequence[tuple[Any, ...]]) -> int:
        marks = ",".join("?" * len(rows[0]))
        with self._guard():
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                before = conn.total_changes
                conn.executemany(
                    f"INSERT INTO labels ({_INSERT_COLUMNS}) VALUES ({marks}) ON CONFLICT(key) DO NOTHING", rows
                )
                inserted = conn.total_changes - before
                # A stored label needs no claim: free it in the same transaction.
                conn.executemany("DELETE FROM claims WHERE key = ?", [(row[0],) for row in rows])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return inserted

    def _claim(self, keys: Sequence[bytes], owner: str, lease_s: float) -> set[bytes]:
        now = time.time()
        marks = ",".join("?" * len(keys))
        with self._guard():
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")  # serialised with label writes and other claims
            try:
                conn.executemany(
                    "INSERT INTO claims (key, owner, expires_at) SELECT ?, ?, ? "
                    "WHERE NOT EXISTS (SELECT 1 FROM labels WHERE key = ?) "
                    "ON CONFLICT(key) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at "
                    "WHERE claims.owner = excluded.owner OR claims.expires_at < ?",
                    [(key, owner, now + lease_s, key, now) for key in keys],
                )
                rows = conn.execute(
                    f"SELECT key FROM claims WHERE owner = ? AND key IN ({marks})", (owner, *keys)
                ).fetchall()
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return {row[0] for row in rows}

    def _write_claims(self, sql: str, params: Sequence[Any]) -> int:
        with self._guard():
            cur = self._conn().execute(sql.replace("?now", str(time.time())), params)
            return cur.rowcount

    def _select_since(self, where: str, params: tuple[Any, ...], limit: int) -> list[tuple[Any, ...]]:
        with self._guard():
            return self._conn().execute(
                f"SELECT {_COLUMNS} FROM labels WHERE {where} ORDER BY id LIMIT ?", (*params, limit)
            ).fetchall()


# Writers hold this transaction-level advisory lock, so ids are assigned in commit order (a
# sequence alone would let a later-committing writer publish a smaller id behind a poller).
_PG_WRITE_LOCK = 0x6B75646F73  # "kudos"
_PG_NOW = "extract(epoch from clock_timestamp())"  # the server's clock: one clock for every machine
_PG_ARRAY_TYPES = ("bytea", "text", "text", "text", "text", "text", "int", "float8", "text", "float8", "float8")


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


class PostgresLabelStore(LabelStore):
    """Label store in a PostgreSQL database, same interface as SQLiteLabelStore."""

    def __init__(self, url: str, connect_timeout_s: float = 10.0) -> None:
        import psycopg  # optional at import time: only PostgreSQL users need it loaded

        self._psycopg = psycopg
        self.url = url
        self.location = _redact(url)
        self._connect_timeout_s = connect_timeout_s
        super().__init__()
        with self._guard():
            conn = self._conn()
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_WRITE_LOCK,))
                conn.execute(_schema(postgres=True))

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except self._psycopg.Error as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreError(f"label store {self.location}: {first_line}") from exc

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._psycopg.connect(self.url, autocommit=True, connect_timeout=int(self._connect_timeout_s))
            self._own(conn)
        return conn

    def _select_keys(self, keys: Sequence[bytes]) -> list[tuple[bytes, tuple[Any, ...]]]:
        with self._guard():
            rows = self._conn().execute(
                f"SELECT key, {_COLUMNS} FROM labels WHERE key = ANY(%s)", (list(keys),)
            ).fetchall()
        return [(bytes(row[0]), row[1:]) for row in rows]

    def _insert(self, rows: Sequence[tuple[Any, ...]]) -> int:
        columns = [list(column) for column in zip(*rows)]
        arrays = ", ".join(f"%s::{t}[]" for t in _PG_ARRAY_TYPES)
        with self._guard():
            conn = self._conn()
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_WRITE_LOCK,))
                # WITH ORDINALITY + ORDER BY: ids follow the order of the records given.
                cur = conn.execute(
                    f"INSERT INTO labels ({_INSERT_COLUMNS}) SELECT {_INSERT_COLUMNS} FROM unnest({arrays}) "
                    f"WITH ORDINALITY AS t({_INSERT_COLUMNS}, n) ORDER BY n ON CONFLICT (key) DO NOTHING",
                    columns,
                )
                inserted = cur.rowcount
                # A stored label needs no claim: free it in the same transaction.
                conn.execute("DELETE FROM claims WHERE key = ANY(%s)", (columns[0],))
                return inserted

    def _claim(self, keys: Sequence[bytes], owner: str, lease_s: float) -> set[bytes]:
        with self._guard():
            conn = self._conn()
            with conn.transaction():
                # The write lock orders claims after label writes: once it is held, this statement's
                # snapshot sees every label committed before, so a labelled key is never claimed.
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_WRITE_LOCK,))
                rows = conn.execute(
                    f"INSERT INTO claims (key, owner, expires_at) SELECT k, %s, {_PG_NOW} + %s "
                    "FROM unnest(%s::bytea[]) AS t(k) WHERE NOT EXISTS (SELECT 1 FROM labels WHERE key = t.k) "
                    "ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at "
                    f"WHERE claims.owner = excluded.owner OR claims.expires_at < {_PG_NOW} RETURNING key",
                    (owner, lease_s, list(keys)),
                ).fetchall()
        return {bytes(row[0]) for row in rows}

    def _write_claims(self, sql: str, params: Sequence[Any]) -> int:
        with self._guard():
            return self._conn().execute(sql.replace("?now", _PG_NOW).replace("?", "%s"), params).rowcount

    def _select_since(self, where: str, params: tuple[Any, ...], limit: int) -> list[tuple[Any, ...]]:
        sql = f"SELECT {_COLUMNS} FROM labels WHERE {where.replace('?', '%s')} ORDER BY id"
        if limit >= 0:
            sql += f" LIMIT {int(limit)}"
        with self._guard():
            return self._conn().execute(sql, params).fetchall()


def default_store_path() -> str:
    """The label store shared by all runs of this user: ``labels.sqlite`` in kudos's per-user
    cache (:func:`kudos.paths.cache_dir`), so no run asks what another already asked."""
    return str(cache_dir() / "labels.sqlite")


def open_store(location: str | Path) -> LabelStore:
    """A SQLite store at a file path (``~`` expanded), or a PostgreSQL store for a
    ``postgresql://`` URL."""
    text = str(location)
    if text.startswith(("postgresql://", "postgres://")):
        return PostgresLabelStore(text)
    return SQLiteLabelStore(Path(text).expanduser())
