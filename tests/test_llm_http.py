"""OpenAI-compatible backend and endpoint pool, against the real ``python -m llama_cpp.server`` on
the embedded model, with :class:`FaultyLLMServer` (a fault-injecting proxy) in between."""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from kudos.errors import KudosError
from kudos.feedback import Annotator, AnnotatorConfig, open_store
from kudos.feedback.backend import LLMCancelled, LLMConfigError, LLMError, LLMRequest, p_from_top_logprobs
from kudos.feedback.embedded import EmbeddedLLM
from kudos.feedback.endpoints import EndpointPool, HTTPConfig, OpenAIBackend
from kudos.feedback.factory import make_backend
from kudos.feedback.model_files import MODEL_ID
from kudos.feedback.prompts import PromptTemplate

TEMPLATE = PromptTemplate()
# Quick retries so fault tests take seconds; generous request timeout for a loaded CPU.
FAST = HTTPConfig(timeout_s=120.0, backoff_s=0.05, max_backoff_s=0.2, max_attempts=4, health_timeout_s=2.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class FaultyLLMServer:
    """Fault injector: an HTTP proxy in front of a real OpenAI-compatible server.

    ``inject(mode, count)`` makes the next ``count`` POSTs (completions) fail in one way (forever if
    ``count`` is None): "http500", "http400", "http404", "hang" (no reply for ``delay_s``, then the connection
    is closed), "garbage"
    (200 with a non-JSON body), "empty" (200 with no body), "drop" (connection closed, no reply).
    ``stop_after=n`` kills the server once it has passed ``n`` POSTs through (killed mid-batch).
    GETs (health checks) pass through while it runs, unless ``models`` is set: then GET /models
    lists those ids. ``seen`` counts requests by method and fault; ``asked`` counts the prompts
    passed through (a chat's last message), to check that nothing is asked twice.
    """

    def __init__(self, upstream: str, port: int = 0) -> None:
        self.upstream = upstream
        self.port = port
        self.mode = "pass"
        self.faults_left: int | None = None
        self.delay_s = 0.0
        self.stop_after: int | None = None
        self.models: list[str] | None = None
        self.seen: Counter[str] = Counter()
        self.asked: Counter[str] = Counter()
        self._killed = False
        self._lock = threading.Lock()
        self._client = httpx.Client(timeout=300.0)
        self._server: ThreadingHTTPServer | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner._handle(self)

            def do_POST(self) -> None:
                owner._handle(self)

            def log_message(self, *args: object) -> None:
                pass

        self._killed = False
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            server.shutdown()
            server.server_close()

    def inject(self, mode: str, count: int | None = None, delay_s: float = 0.0) -> None:
        with self._lock:
            self.mode, self.faults_left, self.delay_s = mode, count, delay_s

    def close(self) -> None:
        self.stop()
        self._client.close()

    def _fault_for(self, method: str) -> str:
        with self._lock:
            self.seen[method] += 1
            if self._killed:
                return "drop"
            if method != "POST" or self.mode == "pass" or self.faults_left == 0:
                return "pass"
            if self.faults_left is not None:
                self.faults_left -= 1
            self.seen[self.mode] += 1
            return self.mode

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        fault = self._fault_for(h.command)
        if fault in ("drop", "hang"):
            time.sleep(self.delay_s if fault == "hang" else 0.0)
            h.close_connection = True
            return
        if fault in ("http500", "http400", "http404"):
            h.send_error(int(fault[4:]))
            return
        if h.command == "GET" and self.models is not None:
            self._reply(h, 200, json.dumps({"object": "list", "data": [{"id": m} for m in self.models]}).encode())
            return
        if fault in ("garbage", "empty"):
            payload = b"<html>upstream exploded" if fault == "garbage" else b""
            self._reply(h, 200, payload)
            return
        path = h.path[len("/v1") :] if h.path.startswith("/v1") else h.path
        upstream = self._client.request(
            h.command, self.upstream + path, content=body or None, headers={"Content-Type": "application/json"}
        )
        self._reply(h, upstream.status_code, upstream.content)
        if h.command == "POST":
            request = json.loads(body)
            prompt = request["messages"][-1]["content"] if "messages" in request else request.get("prompt", "")
            with self._lock:
                self.asked[str(prompt)] += 1
                self.seen["passed"] += 1
                kill = self.stop_after is not None and self.seen["passed"] >= self.stop_after
                if kill:
                    self._killed, self.stop_after = True, None
            if kill:
                threading.Thread(target=self.stop, daemon=True).start()

    @staticmethod
    def _reply(h: BaseHTTPRequestHandler, status: int, payload: bytes) -> None:
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)


@pytest.fixture(scope="module")
def upstream(llama_server: str) -> str:
    """The real server on the embedded model (conftest's ``llama_server``), behind the proxies."""
    return llama_server


@pytest.fixture(scope="module")
def embedded(upstream: str) -> Iterator[EmbeddedLLM]:
    backend = EmbeddedLLM(threads=1)
    yield backend
    backend.close()


@pytest.fixture
def proxy(upstream: str) -> Iterator[FaultyLLMServer]:
    server = FaultyLLMServer(upstream)
    yield server
    server.close()


def pool_of(*urls: str, config: HTTPConfig = FAST) -> EndpointPool:
    """A pool on ``urls`` asking for the embedded model by name (some tests start it down)."""
    backend = make_backend(",".join(urls), config=config, model=MODEL_ID)
    assert isinstance(backend, EndpointPool)
    return backend


# --- no server needed -----------------------------------------------------------------------------


def test_probability_from_top_logprobs() -> None:
    both = p_from_top_logprobs({"1": -0.1, "0": -2.5, "The": -4.0}, ("0", "1"))
    assert both == pytest.approx(1 / (1 + math.exp(-2.5 + 0.1)), rel=1e-6)
    # A spaced variant counts for the same answer.
    assert p_from_top_logprobs({" 1": -0.7, "1": -0.7, "0": -5.0}, ("0", "1")) > both
    # An answer missing from the list gets the lowest listed log-probability (an upper bound).
    only_zero = p_from_top_logprobs({"0": -0.05, "The": -3.0, "I": -6.0}, ("0", "1"))
    assert only_zero == pytest.approx(1 / (1 + math.exp(6.0 - 0.05)), rel=1e-6)
    assert p_from_top_logprobs({"The": -0.1, "I": -3.0}, ("0", "1")) is None
    # Extreme log-probabilities (some servers send -9999 for "impossible") neither overflow nor fail.
    assert p_from_top_logprobs({"1": -0.01, "0": -9999.0}, ("0", "1")) == pytest.approx(1.0)


def test_make_backend_parses_endpoint_lists() -> None:
    # Endpoints that are down at start are faults (retried later) when the model is named...
    pool = make_backend("http://127.0.0.1:1/v1, http://127.0.0.1:2/v1", model="my-model")
    assert isinstance(pool, EndpointPool) and pool.model_id == "my-model"
    pool.close()
    # ... but with no name there is nobody to ask which model to use.
    with pytest.raises(LLMConfigError, match="cannot ask .* which model it serves.*--llm-model"):
        make_backend("http://127.0.0.1:1/v1")
    with pytest.raises(KudosError, match="unknown LLM backend"):
        make_backend("ftp://h/v1")
    with pytest.raises(KudosError, match="one model id"):
        EndpointPool([OpenAIBackend("http://h:1/v1", "a"), OpenAIBackend("http://h:2/v1", "b")])


# --- the real server ------------------------------------------------------------------------------


def test_chat_and_completions_match_the_embedded_backend(upstream: str, embedded: EmbeddedLLM) -> None:
    captions = ["You kill the jackal!", "It's a wall."]
    requests = [TEMPLATE.request(c) for c in captions]
    local = embedded.generate(requests)
    pool = pool_of(upstream)
    chat = pool.generate(requests)
    # The completions API takes the chat markup in the prompt text.
    completions = OpenAIBackend(upstream, MODEL_ID, HTTPConfig(api="completions")).generate(
        [LLMRequest(embedded.chat_text(r.prompt)) for r in requests]
    )
    for a, b, c in zip(local, chat, completions):
        assert b.model_id == MODEL_ID
        assert a.text == b.text == c.text
        # Equal up to float rounding, which varies with how llama.cpp batches the prompt's tokens.
        assert b.p_positive == pytest.approx(a.p_positive, abs=0.02)
        assert c.p_positive == pytest.approx(a.p_positive, abs=0.02)
    assert chat[0].p_positive > 0.5 > chat[1].p_positive
    assert pool.stats["replies"] == 2 and pool.stats.get("retries", 0) == 0
    pool.close()


def test_pool_spreads_requests_over_endpoints(upstream: str) -> None:
    first, second = FaultyLLMServer(upstream), FaultyLLMServer(upstream)
    pool = pool_of(first.url, second.url)
    replies = pool.generate([TEMPLATE.request("You find a hidden door.")] * 6)
    assert len(replies) == 6 and all(r.p_positive is not None for r in replies)
    assert first.seen["POST"] >= 2 and second.seen["POST"] >= 2
    pool.close()
    first.close()
    second.close()


def test_server_down_at_start_then_back(upstream: str) -> None:
    port = free_port()
    pool = pool_of(f"http://127.0.0.1:{port}/v1")
    requests = [TEMPLATE.request("You kill the newt!"), TEMPLATE.request("It's a wall.")]
    with pytest.raises(LLMError) as error:
        pool.generate(requests)
    assert error.value.replies == [None, None]  # nothing invented
    stats = pool.stats
    assert stats["connection_errors"] >= 1 and stats["failed_requests"] == 2 and stats["health_failures"] >= 1
    server = FaultyLLMServer(upstream, port=port)
    replies = pool.generate(requests)  # the backlog drains once the server is back
    assert [r.text for r in replies] == ["1", "0"]
    assert pool.stats["replies"] == 2
    pool.close()
    server.close()


def test_server_killed_mid_batch_keeps_the_replies_it_got(upstream: str, proxy: FaultyLLMServer) -> None:
    proxy.stop_after = 2
    pool = pool_of(proxy.url, config=dataclasses.replace(FAST, concurrency=1))  # requests in order
    captions = ["You kill the newt!", "It's a wall.", "You find a hidden passage.", "The grid bug bites!"]
    with pytest.raises(LLMError) as error:
        pool.generate([TEMPLATE.request(c) for c in captions])
    replies = error.value.replies
    assert [r is not None for r in replies] == [True, True, False, False]
    assert pool.stats["failed_requests"] == 2
    assert pool.stats.get("connection_errors", 0) + pool.stats.get("bad_replies", 0) >= 1
    proxy.start()  # back on the same port: the two failed requests now succeed
    again = pool.generate([TEMPLATE.request(c) for c in captions[2:]])
    assert [r.p_positive is not None for r in again] == [True, True]
    pool.close()


def test_slow_server_times_out_and_recovers(proxy: FaultyLLMServer) -> None:
    request = TEMPLATE.request("You hear some noises in the distance.")
    warm = pool_of(proxy.url)
    warm.generate([request])  # the server now holds this whole prompt in its cache: answers are fast
    warm.close()
    pool = pool_of(proxy.url, config=dataclasses.replace(FAST, timeout_s=2.0, max_attempts=2))
    proxy.inject("hang", delay_s=4.0)
    with pytest.raises(LLMError, match="timed out"):
        pool.generate([request])
    assert pool.stats["timeouts"] == 2 and pool.stats["retries"] == 1
    proxy.inject("pass")
    assert pool.generate([request])[0].p_positive is not None
    pool.close()


def test_http_500s_are_retried_then_given_up(proxy: FaultyLLMServer) -> None:
    pool = pool_of(proxy.url)
    request = TEMPLATE.request("Welcome to experience level 2.")
    proxy.inject("http500", count=2)
    (reply,) = pool.generate([request])
    assert reply.p_positive is not None
    assert pool.stats["http_errors"] == 2 and pool.stats["retries"] == 2 and pool.stats["endpoint_down"] == 2
    proxy.inject("http500")
    with pytest.raises(LLMError, match="HTTP 500"):
        pool.generate([request])
    assert pool.stats["http_errors"] == 2 + FAST.max_attempts and pool.stats["failed_requests"] == 1
    pool.close()


def test_cancel_stops_retries_and_an_annotator_closes_without_waiting_them_out(
    proxy: FaultyLLMServer, tmp_path: Path
) -> None:
    """A failing endpoint must not hold up the end of a run: the pool's backoffs (here 30 s
    each) end as soon as the caller cancels, no retry is sent after, and the unanswered
    captions stay pending for the next run. Fails without cancellation: close() would wait out
    the 30 s backoff and then retry."""
    slow_retries = dataclasses.replace(FAST, backoff_s=30.0, max_backoff_s=30.0)
    proxy.inject("http500")
    pool = pool_of(proxy.url, config=slow_retries)
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    with pytest.raises(LLMCancelled):
        pool.generate([TEMPLATE.request("You hear a door open.")], cancel)
    assert pool.stats.get("retries", 0) == 0 and pool.stats["http_errors"] == 1
    pool.close()

    pool = pool_of(proxy.url, config=slow_retries)
    store = open_store(tmp_path / "labels.sqlite")
    annotator = Annotator(pool, store, PromptTemplate(), AnnotatorConfig(batch_size=2)).start()
    annotator.submit(["You hear a door open.", "You kill the newt!"])
    deadline = time.monotonic() + 60
    while proxy.seen["http500"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proxy.seen["http500"] >= 1, proxy.seen
    annotator.close()
    assert pool.stats.get("retries", 0) == 0
    assert annotator.metrics().server_errors == 0  # a cancellation is not a server fault
    assert sorted(annotator.state_dict()["pending"]) == ["You hear a door open.", "You kill the newt!"]
    pool.close()
    store.close()


def test_garbage_and_empty_replies_are_faults_not_labels(proxy: FaultyLLMServer) -> None:
    pool = pool_of(proxy.url)
    request = TEMPLATE.request("$ - 3 gold pieces.")
    proxy.inject("garbage", count=1)
    pool.generate([request])
    proxy.inject("empty", count=1)
    pool.generate([request])
    assert pool.stats["bad_replies"] == 2 and pool.stats["replies"] == 2
    proxy.inject("garbage")
    with pytest.raises(LLMError, match="not JSON") as error:
        pool.generate([request])
    assert error.value.replies == [None]
    pool.close()


def test_client_errors_are_not_retried(proxy: FaultyLLMServer) -> None:
    pool = pool_of(proxy.url)
    proxy.inject("http400")
    with pytest.raises(LLMError, match="HTTP 400"):
        pool.generate([TEMPLATE.request("It's a wall.")])
    assert pool.stats["http_errors"] == 1 and pool.stats.get("retries", 0) == 0
    pool.close()


def test_dead_endpoint_is_skipped_until_healthy_again(upstream: str) -> None:
    alive, dead = FaultyLLMServer(upstream), FaultyLLMServer(upstream)
    dead.stop()
    pool = pool_of(dead.url, alive.url)
    request = TEMPLATE.request("You kill the sewer rat!")
    assert len(pool.generate([request] * 4)) == 4
    assert dead.seen["POST"] == 0 and alive.seen["POST"] == 4
    assert pool.stats["endpoint_down"] == 1 and pool.stats["connection_errors"] >= 1
    dead.start()  # same port: after a passing health check it takes traffic again
    for _ in range(10):  # the health check runs beside requests that the live endpoint answers
        time.sleep(0.3)
        assert len(pool.generate([request] * 4)) == 4
        if dead.seen["POST"]:
            break
    assert dead.seen["POST"] >= 1 and dead.seen["GET"] >= 1
    pool.close()
    alive.close()
    dead.close()


def test_the_served_model_is_found_and_a_wrong_name_refused(upstream: str, proxy: FaultyLLMServer) -> None:
    """No name: the one model GET /v1/models lists, which keys the labels. A name the server does
    not serve, or several served models and no name, is a one-line error at start."""
    pool = make_backend(upstream)
    assert pool.model_id == MODEL_ID
    assert pool.generate([TEMPLATE.request("You kill the newt!")])[0].model_id == MODEL_ID
    pool.close()
    with pytest.raises(LLMConfigError, match=f"does not serve model 'llama-70b' \\(it serves {MODEL_ID}\\)"):
        make_backend(upstream, model="llama-70b")
    proxy.models = ["llama-8b", "llama-70b"]
    with pytest.raises(LLMConfigError, match="serve 2 models \\(llama-70b, llama-8b\\): choose one with --llm-model"):
        make_backend(proxy.url)
    assert make_backend(proxy.url, model="llama-8b").model_id == "llama-8b"


def test_rejected_requests_become_a_one_line_error_after_the_limit(proxy: FaultyLLMServer) -> None:
    """A server that rejects every request (vLLM's 404 for an unknown model name) is a
    misconfiguration: after client_error_limit_s with no reply, LLMConfigError instead of
    retrying forever; a reply in between restarts the clock."""
    pool = pool_of(proxy.url, config=dataclasses.replace(FAST, client_error_limit_s=0.5))
    request = TEMPLATE.request("You kill the newt!")
    proxy.inject("http404")
    with pytest.raises(LLMError, match="HTTP 404"):
        pool.generate([request])
    time.sleep(0.6)
    with pytest.raises(LLMConfigError, match="rejected every request for 0 s .*HTTP 404.*--llm-model") as error:
        pool.generate([request])
    assert "\n" not in str(error.value)
    proxy.inject("pass")
    pool.generate([request])
    proxy.inject("http404")
    with pytest.raises(LLMError, match="HTTP 404"):  # the clock restarted at the reply
        pool.generate([request])
    pool.close()


def _kudos(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kudos", *args], capture_output=True, text=True, timeout=300)


def test_kudos_annotate_and_train_stop_when_every_request_is_rejected(proxy: FaultyLLMServer, tmp_path: Path) -> None:
    proxy.inject("http404")
    captions = tmp_path / "captions.jsonl"
    captions.write_text('"You kill the newt!"\n"It is a wall."\n')
    store = str(tmp_path / "labels.sqlite")
    done = _kudos("annotate", str(captions), "--llm", proxy.url, "--store", store, "--client-error-limit-s", "0.5")
    last = done.stderr.strip().splitlines()[-1]  # warnings about each fault come before it
    assert done.returncode == 2 and last.startswith("kudos: error:") and "rejected every request" in last, done.stderr
    done = _kudos(
        "train", "--reward", "retrieval", "--llm", proxy.url, "--store", store, "--steps", "1000000",
        "--num-envs", "4", "--output", str(tmp_path / "run"), "--set", "cpu.env_workers=1",
        "--set", "llm.http.client_error_limit_s=1",
    )
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and last.startswith("kudos: error:") and "rejected every request" in last, done.stderr


def test_a_run_the_llm_labelled_nothing_in_ends_with_a_warning(proxy: FaultyLLMServer, tmp_path: Path) -> None:
    """A run whose LLM answered nothing (every request hangs past the run's end) finishes, and says
    so: never a silent run with zero labels."""
    proxy.inject("hang", delay_s=5.0)
    done = _kudos("train", "--reward", "retrieval", "--llm", proxy.url, "--store", str(tmp_path / "labels.sqlite"),
                  "--steps", "1024", "--num-envs", "4", "--output", str(tmp_path / "run"), "--set", "cpu.env_workers=1",
                  "--set", "appo.rollout=16")
    assert done.returncode == 0, done.stderr
    (warning,) = [line for line in done.stdout.splitlines() if line.startswith("warning: the LLM labelled nothing")]
    assert "items wait" in warning


def test_kudos_llm_serve_serves_the_embedded_model(upstream: str) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "kudos", "llm", "serve", "--port", str(port), "--threads", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        while "serving" not in (line := process.stdout.readline().decode()):
            assert line, f"kudos llm serve exited with code {process.wait()} before it was ready"
        assert url in line
        assert [m["id"] for m in httpx.get(url + "/models").json()["data"]] == [MODEL_ID]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
