"""LabelStore on SQLite and on a real PostgreSQL server (started here in a temp dir): round trip,
first write wins, polling by id, JSONL export/import, corrupt files, and real processes writing and
polling at once."""

from __future__ import annotations

import glob
import itertools
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from kudos.errors import KudosError
from kudos.feedback.store import LabelRecord, LabelStore, SQLiteLabelStore, StoreError, open_store


def record(caption: str, caption2: str | None = None, label: int | None = 1, prompt: str = "p1", model: str = "m1",
           soft: float | None = 0.75) -> LabelRecord:
    return LabelRecord(
        prompt_hash=prompt, model_id=model, kind="classify" if caption2 is None else "rank", caption=caption,
        caption2=caption2, label=label, soft_label=soft, reply=f"reply to {caption}", latency_s=0.25,
        timestamp=1_700_000_000.5,
    )


# -- a throwaway PostgreSQL server --------------------------------------------------------------------
def _pg_bindir() -> Path | None:
    on_path = shutil.which("pg_ctl")
    candidates = ([str(Path(on_path).resolve())] if on_path else []) + sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), reverse=True
    )
    for pg_ctl in candidates:
        bindir = Path(pg_ctl).parent
        if (bindir / "initdb").exists():
            return bindir
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL cluster of our own (initdb + pg_ctl, trust auth, localhost, a free port)."""
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql")
    user: str | None = None
    if os.geteuid() == 0:  # initdb refuses to run as root: run the server as the postgres user
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server")
        user = "postgres"
    root = Path(tempfile.mkdtemp(prefix="kudos-pg-"))
    if user is not None:
        shutil.chown(root, user)
    data, port = root / "data", _free_port()

    def run(*args: str) -> None:
        subprocess.run(args, check=True, user=user, capture_output=True, cwd=root, timeout=120)

    run(str(bindir / "initdb"), "-D", str(data), "-U", "kudos", "--auth=trust", "-E", "UTF8", "--no-sync")
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start")
    try:
        yield f"postgresql://kudos@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], user=user,
                       capture_output=True, cwd=root, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


_databases = itertools.count()


def _fresh_postgres_db(server_url: str) -> str:
    import psycopg

    name = f"kudos_test_{os.getpid()}_{next(_databases)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server_url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(params=["sqlite", "postgres"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a fresh store lives: a SQLite file, or a new database on the test PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "labels.sqlite")
    return _fresh_postgres_db(request.getfixturevalue("postgres_url"))


@pytest.fixture
def store(location: str) -> Iterator[LabelStore]:
    with open_store(location) as s:
        yield s


# -- parity tests (both back ends) ------------------------------------------------------------------
def test_round_trip(store: LabelStore) -> None:
    records = [record("You kill the newt!"), record("It's a wall.", label=0, soft=None), record("a", "b", label=2),
               record("?", label=None, soft=0.5), record("")]
    assert store.put_many(records) == 5
    got = store.get_many("p1", "m1", ["You kill the newt!", "It's a wall.", ("a", "b"), "?", "", "never asked"])
    assert set(got) == {"You kill the newt!", "It's a wall.", ("a", "b"), "?", ""}
    for r in records:
        stored = got[r.item]
        assert stored.id is not None and stored == LabelRecord(**{**r.__dict__, "id": stored.id})
    assert got["?"].label is None  # "unknown" survives as None, not 0
    # Keys include prompt hash, model id and pair order.
    assert store.get_many("p2", "m1", ["You kill the newt!"]) == {}
    assert store.get_many("p1", "m2", ["You kill the newt!"]) == {}
    assert store.get("p1", "m1", ("b", "a")) is None


def test_first_write_wins(store: LabelStore) -> None:
    assert store.put_many([record("x", label=1), record("x", label=0)]) == 1
    assert store.put_many([record("x", label=0), record("y")]) == 1
    got = store.get("p1", "m1", "x")
    assert got is not None and got.label == 1


def test_labels_poll_in_id_order(store: LabelStore) -> None:
    store.put_many([record(f"c{i}") for i in range(5)] + [record("other", prompt="p2")])
    first = store.labels("p1", "m1")
    assert [r.caption for r in first] == [f"c{i}" for i in range(5)]
    ids = [r.id for r in first]
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert store.labels("p1", "m1", since_id=first[-1].id or 0) == []
    store.put_many([record("c5")])
    new = store.labels("p1", "m1", since_id=first[-1].id or 0)
    assert [r.caption for r in new] == ["c5"]
    assert [r.caption for r in store.labels("p1", "m1", limit=2)] == ["c0", "c1"]


def test_jsonl_export_import(store: LabelStore, tmp_path: Path) -> None:
    records = [record("ä unicode ✓"), record("a", "b", label=0, soft=None), record("u", label=None)]
    store.put_many(records)
    path = tmp_path / "labels.jsonl"
    assert store.export_jsonl(path) == 3
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [line["caption"] for line in lines] == ["ä unicode ✓", "a", "u"] and "id" not in lines[0]
    with open_store(tmp_path / "copy.sqlite") as copy:
        assert copy.import_jsonl(path) == 3
        assert copy.import_jsonl(path) == 0  # idempotent
        assert {(r.item, r.label, r.soft_label, r.reply) for r in copy.iter_all()} == {
            (r.item, r.label, r.soft_label, r.reply) for r in records
        }


def test_bulk_get_many(store: LabelStore) -> None:
    store.put_many([record(f"caption {i}") for i in range(1200)])
    got = store.get_many("p1", "m1", [f"caption {i}" for i in range(1300)])
    assert len(got) == 1200 and got["caption 1199"].caption == "caption 1199"


# -- SQLite specifics ----------------------------------------------------------------------------------
def test_import_rejects_malformed_lines(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"caption": "x"}) + "\n")
    with open_store(tmp_path / "s.sqlite") as s, pytest.raises(KudosError, match=r"bad.jsonl:1: not a label record"):
        s.import_jsonl(path)
    path.write_text("{not json\n")
    with open_store(tmp_path / "s.sqlite") as s, pytest.raises(KudosError, match=r"bad.jsonl:1: not JSON"):
        s.import_jsonl(path)


def test_garbage_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "labels.sqlite"
    path.write_bytes(b"this is not a database" * 500)
    with pytest.raises(StoreError) as info:
        open_store(path)
    message = str(info.value)
    assert str(path) in message and "corrupt or not a SQLite database" in message and "\n" not in message


def test_damaged_database_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "labels.sqlite"
    with open_store(path) as s:
        s.put_many([record(f"c{i}") for i in range(2000)])
    raw = bytearray(path.read_bytes())
    raw[4096:] = b"\xa5" * (len(raw) - 4096)  # every page after the first overwritten
    path.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="corrupt or not a SQLite database"):
        with open_store(path) as s:
            s.get_many("p1", "m1", [f"c{i}" for i in range(2000)])


def test_unwritable_location_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match="file"):
        SQLiteLabelStore(tmp_path / "file" / "labels.sqlite")


def test_threads_share_one_store(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with open_store(tmp_path / "s.sqlite") as s:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda t: s.put_many([record(f"t{t}-{i}") for i in range(50)]), range(4)))
        assert len(list(s.iter_all())) == 200


# -- real processes at once (both back ends) ------------------------------------------------------------
_WRITER = textwrap.dedent(
    """
    import sys, time
    from kudos.feedback.store import LabelRecord, open_store
    location, worker = sys.argv[1], int(sys.argv[2])
    with open_store(location) as store:
        for batch in range(20):
            # Overlapping keys across workers: caption k is written by several processes.
            records = [LabelRecord("p", "m", "classify", f"caption {(worker * 7 + batch * 5 + i) % 300}", None,
                                   worker, None, f"w{worker}", 0.0, time.time()) for i in range(10)]
            store.put_many(records)
            store.get_many("p", "m", [r.caption for r in records])
    """
)
_POLLER = textwrap.dedent(
    """
    import json, os, sys, time
    from kudos.feedback.store import open_store
    location, done_flag = sys.argv[1], sys.argv[2]
    seen, since, last_round = [], 0, False
    with open_store(location) as store:
        print("polling", flush=True)
        while not last_round:
            last_round = os.path.exists(done_flag)  # one more poll after the writers are done
            for r in store.labels("p", "m", since_id=since):
                seen.append([r.id, r.caption])
                since = r.id
            time.sleep(0.005)
    print(json.dumps(seen))
    """
)


def test_concurrent_processes(location: str, tmp_path: Path) -> None:
    open_store(location).close()  # create the schema once, as a user's first run would
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    done_flag = tmp_path / "writers-done"
    poller = subprocess.Popen([sys.executable, "-c", _POLLER, location, str(done_flag)], stdout=subprocess.PIPE,
                              env=env, text=True)
    assert poller.stdout is not None and poller.stdout.readline().strip() == "polling"
    writers = [subprocess.Popen([sys.executable, "-c", _WRITER, location, str(w)], env=env) for w in range(4)]
    assert [w.wait(timeout=120) for w in writers] == [0, 0, 0, 0]
    done_flag.touch()
    out, _ = poller.communicate(timeout=60)
    assert poller.returncode == 0
    with open_store(location) as s:
        stored = list(s.iter_all())
    expected = {f"caption {(w * 7 + b * 5 + i) % 300}" for w in range(4) for b in range(20) for i in range(10)}
    assert {r.caption for r in stored} == expected and len(stored) == len(expected)
    # The poller saw every record exactly once, in increasing id order (ids follow commit order).
    polled = json.loads(out)
    assert [p[0] for p in polled] == sorted(r.id for r in stored)
    assert sorted(p[1] for p in polled) == sorted(expected)


# -- claims: one asker per new item across runs (both back ends) ----------------------------------------
def test_claims_exclude_labelled_and_foreign_items(store: LabelStore) -> None:
    store.put_many([record("labelled")])
    assert store.claim_many("p1", "m1", ["labelled", "a", "b"], "run-1") == ["a", "b"]
    assert store.claim_many("p1", "m1", ["a", "b", "c"], "run-2") == ["c"]  # a, b: live claims of run-1
    assert store.claim_many("p1", "m1", ["a", "b"], "run-1") == ["a", "b"]  # an owner renews its own
    # Storing a label frees its claim, and a labelled item is never claimed again.
    store.put_many([record("a")])
    assert store.claim_many("p1", "m1", ["a"], "run-2") == []
    assert store.release_claims("run-1", "p1", "m1", ["b"]) == 1
    assert store.claim_many("p1", "m1", ["b"], "run-2") == ["b"]
    assert store.release_claims("run-2") == 2  # b and c


def test_expired_claims_are_free_and_renewal_keeps_them(store: LabelStore) -> None:
    import time

    from kudos.feedback.store import ClaimHeartbeat

    assert store.claim_many("p1", "m1", ["x", "y"], "dead", lease_s=0.3) == ["x", "y"]
    beat = ClaimHeartbeat(store, "alive", lease_s=0.3)
    try:
        assert store.claim_many("p1", "m1", ["z"], "alive", lease_s=0.3) == ["z"]
        time.sleep(0.6)
        # "dead" renewed nothing: its claims lapsed; "alive"'s heartbeat kept z.
        assert store.claim_many("p1", "m1", ["x", "y", "z"], "other") == ["x", "y"]
    finally:
        beat.close()
    assert beat.failures == 0


_CLAIMER = textwrap.dedent(
    """
    import json, sys, time
    from kudos.feedback.store import LabelRecord, open_store
    location, worker, hold = sys.argv[1], sys.argv[2], sys.argv[3] == "hold"
    owner = f"worker-{worker}"
    asked = []
    with open_store(location) as store:
        for batch in range(15):
            # Every worker wants the same 25 captions per batch, 5 of them also in the next batch.
            items = [f"caption {batch * 20 + i}" for i in range(25)]
            missing = [c for c in items if c not in store.get_many("p", "m", items)]
            mine = store.claim_many("p", "m", missing, owner, lease_s=30.0)
            if hold:  # a run that dies holding its claims
                print(json.dumps(mine), flush=True)
                time.sleep(600)
            asked += mine
            time.sleep(0.02)  # the LLM call: the window in which another run would ask again
            store.put_many([LabelRecord("p", "m", "classify", c, None, 1, None, owner, 0.0, time.time())
                            for c in mine])
    print(json.dumps(asked))
    """
)


def test_concurrent_processes_claim_each_item_once(location: str) -> None:
    open_store(location).close()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    workers = [subprocess.Popen([sys.executable, "-c", _CLAIMER, location, str(w), "run"], stdout=subprocess.PIPE,
                                env=env, text=True) for w in range(4)]
    outputs = [w.communicate(timeout=120)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0, 0]
    asked = [c for out in outputs for c in json.loads(out)]
    assert len(asked) == len(set(asked))  # no caption was asked by two workers
    with open_store(location) as s:
        stored = {r.caption: r.reply for r in s.iter_all()}
    assert set(asked) == set(stored)  # and every caption was asked (by the one that stored it)


def test_killed_owner_does_not_block_after_its_lease(location: str) -> None:
    import signal
    import time

    open_store(location).close()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    holder = subprocess.Popen([sys.executable, "-c", _CLAIMER.replace("lease_s=30.0", "lease_s=1.0"), location, "0",
                               "hold"], stdout=subprocess.PIPE, env=env, text=True)
    assert holder.stdout is not None
    held = json.loads(holder.stdout.readline())
    assert len(held) == 25
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    with open_store(location) as s:
        assert s.claim_many("p", "m", held, "survivor", lease_s=30.0) == []  # the lease still runs
        time.sleep(1.2)
        assert s.claim_many("p", "m", held, "survivor", lease_s=30.0) == held
