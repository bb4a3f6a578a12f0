"""Shared by the test files."""
import pytest
import torch


@pytest.fixture
def one_thread():
    """The tests' models are tiny: on a busy 2-core machine a second thread only waits on the first, and the
    subprocesses the tests start get one thread too (OMP_NUM_THREADS=1)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
