"""Fixtures shared by the training tests."""

import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test (repeatable numbers, no oversubscription), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
