"""Settings shared by every test."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op torch thread: the tests' batches are tiny, and on a 2-core machine a second
    thread only fights the env workers and the LLM for the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
