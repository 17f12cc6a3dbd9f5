"""OpenAI-compatible HTTP endpoints (vLLM, ``python -m llama_cpp.server``, ``kudos llm serve``).

- :class:`OpenAIBackend`: one endpoint, chat completions or completions, with top log-probabilities.
- :class:`EndpointPool`: several such endpoints with load spreading, timeouts, retries with
  jittered exponential backoff (:class:`~kudos.backoff.Backoff`) and health checks; it raises
  :class:`~kudos.feedback.backend.LLMError` only when no endpoint could answer, and
  :class:`~kudos.feedback.backend.LLMConfigError` when the endpoints have rejected every request
  (HTTP 4xx) for ``HTTPConfig.client_error_limit_s``. Every fault is counted in
  ``EndpointPool.stats``.
- :func:`served_model` asks endpoints which model they serve; :func:`endpoint_concurrency` how
  many requests to keep in flight there.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import httpx

from kudos.backoff import Backoff
from kudos.errors import KudosError
from kudos.feedback.backend import (
    LLMCancelled,
    LLMConfigError,
    LLMError,
    LLMReply,
    LLMRequest,
    p_from_top_logprobs,
)

log = logging.getLogger(__name__)


@dataclass
class HTTPConfig:
    """Options of the OpenAI-compatible client and the endpoint pool (times in seconds)."""

    api: Literal["chat", "completions"] = "chat"  # chat: the server applies the model's chat template
    timeout_s: float = 60.0  # one request, reply included (long reasoning replies take tens of seconds on CPU)
    connect_timeout_s: float = 2.0
    top_logprobs: int = 10  # alternatives asked for at the answer token
    max_attempts: int = 4  # per request, over all endpoints
    backoff_s: float = 0.5  # wait after the first failure; doubles per further failure (equal jitter: 50-100 %)
    max_backoff_s: float = 8.0
    health_timeout_s: float = 2.0
    # Requests in flight per endpoint, on average: the pool runs the endpoints' sum at once and one
    # endpoint takes at most twice its share. 2 suits llama.cpp's server (one slot: more only queue
    # there); vLLM batches whatever is in flight, so an endpoint that says it is vLLM (owned_by
    # "vllm" in GET /models, when make_backend builds the pool) gets vllm_concurrency.
    concurrency: int = 2
    vllm_concurrency: int = 32
    latency_smoothing: float = 0.2  # weight of the newest reply in an endpoint's latency average
    # When every request has been rejected (HTTP 4xx other than 408/429) for this long, with no
    # reply in between, generate() raises LLMConfigError instead of retrying forever.
    client_error_limit_s: float = 60.0


class EndpointFault(Exception):
    """One failed HTTP exchange; ``kind`` is the stats counter it increments."""

    def __init__(self, kind: str, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.kind = kind
        self.retryable = retryable


class OpenAIBackend:
    """One OpenAI-compatible endpoint, ``base_url`` like ``http://127.0.0.1:8080/v1``.

    It makes one HTTP exchange per request and raises on the first fault; use
    :class:`EndpointPool` for retries and failover. ``model`` is sent with every request and is the
    ``model_id`` of the labels (``kudos llm serve`` serves the embedded model under its own id).
    """

    def __init__(
        self, base_url: str, model: str, config: HTTPConfig | None = None, concurrency: int | None = None
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model_id = model
        self.config = config or HTTPConfig()
        self.concurrency = concurrency or self.config.concurrency  # requests in flight, on average
        timeout = httpx.Timeout(self.config.timeout_s, connect=self.config.connect_timeout_s)
        limits = httpx.Limits(max_connections=self.concurrency * 2)  # the pool's per-endpoint cap
        self._client = httpx.Client(timeout=timeout, limits=limits)

    def complete(self, request: LLMRequest) -> LLMReply:
        """One request; raises :class:`EndpointFault` on a timeout, refused connection, HTTP error
        or a reply that is not a well-formed completion."""
        start = time.perf_counter()
        chat = self.config.api == "chat"
        body: dict[str, Any] = {"model": self.model_id, "max_tokens": request.max_tokens, "temperature": 0.0}
        if chat:
            body["messages"] = [{"role": "user", "content": request.prompt}]
            if request.answer_tokens is not None:
                body |= {"logprobs": True, "top_logprobs": self.config.top_logprobs}
        else:
            body["prompt"] = request.prompt
            if request.answer_tokens is not None:
                body["logprobs"] = self.config.top_logprobs
        path = "/chat/completions" if chat else "/completions"
        data = self._post(path, body)
        try:
            choice = data["choices"][0]
            text = (choice["message"]["content"] if chat else choice["text"]) or ""
            top = self._first_top_logprobs(choice, chat) if request.answer_tokens is not None else None
        except (KeyError, IndexError, TypeError) as e:
            raise EndpointFault("bad_replies", f"{self.base_url}: malformed completion ({e!r})") from None
        p_positive = p_from_top_logprobs(top, request.answer_tokens) if top and request.answer_tokens else None
        return LLMReply(text=text, p_positive=p_positive, latency_s=time.perf_counter() - start, model_id=self.model_id)

    def healthy(self) -> bool:
        """Whether the endpoint lists its models within ``health_timeout_s``."""
        try:
            reply = self._client.get(self.base_url + "/models", timeout=self.config.health_timeout_s)
            return reply.status_code == 200 and isinstance(reply.json(), dict)
        except (httpx.HTTPError, ValueError):
            return False

    def generate(self, requests: Sequence[LLMRequest], cancel: threading.Event | None = None) -> list[LLMReply]:
        """Requests in order, no retries: the first fault raises :class:`LLMError`."""
        replies: list[LLMReply | None] = [None] * len(requests)
        for i, request in enumerate(requests):
            if cancel is not None and cancel.is_set():
                raise LLMCancelled("cancelled", replies)  # replies: None from request i on
            try:
                replies[i] = self.complete(request)
            except EndpointFault as e:
                raise LLMError(str(e), replies) from e
        return [r for r in replies if r is not None]

    def close(self) -> None:
        self._client.close()

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        url = self.base_url + path
        try:
            reply = self._client.post(url, json=body)
        except httpx.TimeoutException as e:
            raise EndpointFault("timeouts", f"{url}: timed out ({type(e).__name__})") from None
        except httpx.TransportError as e:
            raise EndpointFault("connection_errors", f"{url}: {type(e).__name__}: {e}") from None
        if reply.status_code >= 500 or reply.status_code in (408, 429):
            raise EndpointFault("http_errors", f"{url}: HTTP {reply.status_code}")
        if reply.status_code >= 400:
            # The request itself is wrong (e.g. longer than the context); another try won't help.
            body = " ".join(reply.text[:200].split())
            raise EndpointFault("http_errors", f"{url}: HTTP {reply.status_code}: {body}", retryable=False)
        try:
            data = reply.json()
        except ValueError:
            raise EndpointFault("bad_replies", f"{url}: reply is not JSON ({reply.content[:60]!r})") from None
        if not isinstance(data, dict):
            raise EndpointFault("bad_replies", f"{url}: reply is not a JSON object")
        return data

    @staticmethod
    def _first_top_logprobs(choice: dict[str, Any], chat: bool) -> dict[str, float] | None:
        logprobs = choice.get("logprobs")
        if not logprobs:
            return None
        if chat:
            content = logprobs["content"]
            return {t["token"]: float(t["logprob"]) for t in content[0]["top_logprobs"]} if content else None
        top = logprobs["top_logprobs"]
        return {str(k): float(v) for k, v in top[0].items()} if top else None


@dataclass
class _Endpoint:
    backend: OpenAIBackend
    backoff: Backoff  # counts consecutive failures; spaces the health checks of a down endpoint
    up: bool = True
    in_flight: int = 0
    latency_s: float | None = None  # moving average of its replies' latency; None: unmeasured since up
    retry_at: float = 0.0  # time.monotonic() when a down endpoint gets its next health check


class EndpointPool:
    """Several OpenAI-compatible endpoints serving the same model, as one :class:`LLMBackend`.

    Each request goes to the healthy endpoint where it would be answered soonest by the
    measurements so far: the least ``(in_flight + 1) * latency``, with ``latency`` the endpoint's
    moving average (``config.latency_smoothing``) of reply latencies, the average of the others
    while it has none (so at first: the fewest in flight, round-robin on ties). A faster endpoint
    thus gets more of the requests, up to twice its ``concurrency`` in flight; a slower one
    gets requests while the faster one's queue is that many times longer. A fault marks the
    endpoint down; it gets no traffic until a health check
    (``GET /models``) passes, tried after a jittered exponential backoff. A failed request is retried,
    on another endpoint where there is one, up to ``config.max_attempts`` times.

    ``stats`` counts: requests, replies, empty_replies, retries, timeouts, connection_errors,
    http_errors, bad_replies, endpoint_down, health_checks, health_failures, failed_requests.
    """

    def __init__(self, endpoints: Sequence[OpenAIBackend], config: HTTPConfig | None = None) -> None:
        if not endpoints:
            raise KudosError("an endpoint pool needs at least one endpoint URL")
        models = {e.model_id for e in endpoints}
        if len(models) != 1:
            raise KudosError(f"all endpoints of a pool must serve one model id, got {sorted(models)}")
        self.model_id = endpoints[0].model_id
        self.config = config or endpoints[0].config
        self._rng = random.Random()  # backoff jitter, shared by every retry loop of the pool
        self._endpoints = [_Endpoint(e, self._new_backoff()) for e in endpoints]
        self._round_robin = itertools.count()
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._rejecting_since: float | None = None  # first 4xx since the last reply (monotonic s)
        self._executor = ThreadPoolExecutor(
            max_workers=sum(e.concurrency for e in endpoints), thread_name_prefix="llm-pool"
        )

    @property
    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def generate(self, requests: Sequence[LLMRequest], cancel: threading.Event | None = None) -> list[LLMReply]:
        """All requests concurrently over the endpoints; :class:`LLMError` (with the replies that
        did arrive) if any request failed on every attempt, :class:`LLMConfigError` once every
        request has been rejected for ``config.client_error_limit_s``. Once ``cancel`` is set no
        request starts or waits for a retry (:class:`LLMCancelled`), so a closing annotator is
        not held up to ``max_attempts`` backoffs by a failing endpoint."""
        cancel = cancel or threading.Event()
        outcomes = list(self._executor.map(lambda request: self._answer(request, cancel), requests))
        failed = [o for o in outcomes if isinstance(o, EndpointFault)]
        replies = [o if isinstance(o, LLMReply) else None for o in outcomes]
        if cancel.is_set() and len(failed) > 0:
            raise LLMCancelled(f"cancelled with {len(failed)} of {len(requests)} requests unanswered", replies)
        if failed:
            with self._lock:
                since = self._rejecting_since
            limit = self.config.client_error_limit_s
            if since is not None and time.monotonic() - since >= limit:
                raise LLMConfigError(
                    f"the LLM endpoints rejected every request for {limit:.0f} s ({failed[-1]}): check the "
                    "URL and the model name (--llm-model; GET /v1/models lists what a server serves)"
                )
            raise LLMError(f"{len(failed)} of {len(requests)} requests failed; last fault: {failed[-1]}", replies)
        return [r for r in replies if r is not None]

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        for endpoint in self._endpoints:
            endpoint.backend.close()

    def _count(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1

    def _answer(self, request: LLMRequest, cancel: threading.Event) -> LLMReply | EndpointFault:
        if cancel.is_set():
            return EndpointFault("cancelled", "cancelled before it was sent")
        self._count("requests")
        fault = EndpointFault("connection_errors", "no endpoint was reachable")
        retry = self._new_backoff()
        for attempt in range(self.config.max_attempts):
            if attempt:
                if retry.wait(cancel):
                    return EndpointFault("cancelled", f"cancelled after {attempt} attempts ({fault})")
                self._count("retries")
            endpoint = self._acquire(cancel)
            if endpoint is None:
                continue
            try:
                reply = endpoint.backend.complete(request)
            except EndpointFault as e:
                fault = e
                self._count(e.kind)
                self._release(endpoint, ok=False, rejected=not e.retryable)
                log.warning("LLM endpoint fault (attempt %d/%d): %s", attempt + 1, self.config.max_attempts, e)
                if not e.retryable:
                    break
                continue
            self._release(endpoint, ok=True, latency_s=reply.latency_s)
            self._count("replies")
            if not reply.text:
                self._count("empty_replies")
            return reply
        self._count("failed_requests")
        return fault

    def _new_backoff(self) -> Backoff:
        return Backoff(self.config.backoff_s, self.config.max_backoff_s, rng=self._rng)

    def _acquire(self, cancel: threading.Event) -> _Endpoint | None:
        """The least-loaded healthy endpoint, counted as busy until :meth:`_release`.

        Down endpoints whose backoff has passed are health-checked first. If every endpoint is
        down, waits for the earliest one's backoff (at most ``max_backoff_s``) and checks again
        once (unless ``cancel`` is set meanwhile); None if still none is up.
        """
        for check in range(2):
            now = time.monotonic()
            with self._lock:
                due = [e for e in self._endpoints if not e.up and e.retry_at <= now]
                for endpoint in due:
                    endpoint.retry_at = math.inf  # one health check at a time
            for endpoint in due:
                self._health_check(endpoint)
            with self._lock:
                up = [e for e in self._endpoints if e.up]
                if up:
                    chosen = self._soonest(up)
                    chosen.in_flight += 1
                    return chosen
                pending = [e.retry_at for e in self._endpoints if e.retry_at < math.inf]
            if check == 0:
                wait = min(pending) - time.monotonic() if pending else self.config.backoff_s
                if cancel.wait(min(max(wait, 0.0), self.config.max_backoff_s)):
                    return None
        return None

    def _soonest(self, up: list[_Endpoint]) -> _Endpoint:
        """The endpoint of ``up`` expected to answer a new request soonest; caller holds the lock."""
        measured = [e.latency_s for e in up if e.latency_s is not None]
        typical = sum(measured) / len(measured) if measured else 1.0
        open_ = [e for e in up if e.in_flight < 2 * e.backend.concurrency] or up
        turn, n = next(self._round_robin), len(self._endpoints)

        def expected_wait(e: _Endpoint) -> tuple[float, int]:
            latency = typical if e.latency_s is None else e.latency_s
            return (e.in_flight + 1) * latency, (self._endpoints.index(e) - turn) % n

        return min(open_, key=expected_wait)

    def _health_check(self, endpoint: _Endpoint) -> None:
        ok = endpoint.backend.healthy()
        with self._lock:
            self._counts["health_checks"] += 1
            if ok:
                endpoint.up, endpoint.latency_s = True, None  # measured afresh
                endpoint.backoff.reset()
                log.info("LLM endpoint %s is healthy again", endpoint.backend.base_url)
            else:
                self._counts["health_failures"] += 1
                endpoint.retry_at = time.monotonic() + endpoint.backoff.next()

    def _release(self, endpoint: _Endpoint, ok: bool, rejected: bool = False, latency_s: float = 0.0) -> None:
        """``rejected``: the request was refused as malformed (HTTP 4xx): the clock of
        ``client_error_limit_s`` starts at the first such refusal after the last reply.
        ``latency_s``: of the reply, when ``ok``."""
        with self._lock:
            endpoint.in_flight -= 1
            if rejected and self._rejecting_since is None:
                self._rejecting_since = time.monotonic()
            if ok:
                self._rejecting_since = None
                endpoint.backoff.reset()
                average = endpoint.latency_s
                weight = self.config.latency_smoothing
                endpoint.latency_s = latency_s if average is None else average + weight * (latency_s - average)
            else:
                if endpoint.up:
                    self._counts["endpoint_down"] += 1
                endpoint.up = False
                endpoint.retry_at = time.monotonic() + endpoint.backoff.next()


def list_models(urls: Sequence[str], config: HTTPConfig | None = None) -> dict[str, list[dict[str, Any]]]:
    """What each endpoint lists at ``GET /models`` (the ``data`` entries, each with an ``id``);
    endpoints that do not answer are left out (with a warning)."""
    timeout = (config or HTTPConfig()).health_timeout_s
    listed: dict[str, list[dict[str, Any]]] = {}
    for url in urls:
        try:
            reply = httpx.get(url.rstrip("/") + "/models", timeout=timeout)
            reply.raise_for_status()
            entries = [dict(m) for m in reply.json()["data"]]
            for entry in entries:
                entry["id"] = str(entry["id"])
            listed[url] = entries
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            log.warning("cannot list the models of %s (%s)", url, type(exc).__name__)
    return listed


def endpoint_concurrency(models: Sequence[dict[str, Any]], config: HTTPConfig) -> int:
    """Requests in flight for an endpoint listing ``models``: ``config.vllm_concurrency`` if it
    says it is vLLM, else ``config.concurrency``."""
    return config.vllm_concurrency if any(m.get("owned_by") == "vllm" for m in models) else config.concurrency


def served_model(
    urls: Sequence[str],
    model: str | None = None,
    config: HTTPConfig | None = None,
    listed: dict[str, list[dict[str, Any]]] | None = None,
) -> str:
    """The model id to send and to key labels by, checked against each endpoint's ``GET /models``
    (``listed``: :func:`list_models`' answer, when the caller has it).

    ``model`` None: the one model the reachable endpoints serve. A named model must be among the
    served ones where an endpoint answers; endpoints that do not answer are skipped (a server that
    is down is a fault, retried later), but with ``model`` None at least one must answer.
    Raises :class:`LLMConfigError` in one line otherwise.
    """
    listed = list_models(urls, config) if listed is None else listed
    served = {url: [m["id"] for m in entries] for url, entries in listed.items()}
    if model is not None:
        for url, ids in served.items():
            if model not in ids:
                raise LLMConfigError(f"{url} does not serve model {model!r} (it serves {', '.join(ids) or 'none'}): "
                                     "name one of its models with --llm-model")
        return model
    if not served:
        raise LLMConfigError(f"cannot ask {', '.join(urls)} which model it serves (GET /models failed): start the "
                             "server, or name its model with --llm-model")
    ids = sorted({i for ids in served.values() for i in ids})
    if len(ids) != 1:
        raise LLMConfigError(f"the endpoints serve {len(ids)} models ({', '.join(ids) or 'none'}): choose one "
                             "with --llm-model")
    return ids[0]
