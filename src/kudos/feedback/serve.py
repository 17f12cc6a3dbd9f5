"""``kudos llm serve``: llama-cpp-python's OpenAI-compatible server on the embedded model, in a child
process, for users who want one shared local endpoint."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import httpx

from kudos.feedback.backend import LLMError
from kudos.feedback.model_files import MODEL_ID, ensure_embedded_model

log = logging.getLogger(__name__)


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
