"""Fixtures shared by every test package."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's torch code on one intra-op thread, then restore the count.

    The tensors of these tests are tiny: extra threads only add synchronisation, which on a shared 2-core machine
    (other processes running) costs milliseconds per op (e.g. 1 ms → 60 ms per 16-px render). Use it with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
