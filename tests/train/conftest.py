"""Fixtures shared by the training tests."""

import pytest
import torch

from ..conftest import process_tree, running


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test (repeatable numbers, no oversubscription), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def state_epoch(run_dir) -> int:
    """The epoch of ``run_dir``'s last checkpoint (0: none yet, or being written)."""
    import json

    try:
        return int(json.loads((run_dir / "checkpoints" / "last" / "state.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def wait_for_checkpoint(proc, run_dir, epoch: int = 1, timeout: float = 120.0) -> None:
    """Wait until the ``r2 fit`` process ``proc`` has checkpointed ``epoch`` (to kill it then);
    the test fails if it ends before that or nothing comes within ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while state_epoch(run_dir) < epoch:
        if proc.poll() is not None:
            err = proc.stderr.read()
            err = err.decode() if isinstance(err, bytes) else err
            pytest.fail(f"fit ended before it could be killed: rc {proc.returncode}\n{err[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no checkpoint after {timeout:.0f} s")
        time.sleep(0.01)


def kill_tree(proc, timeout: float = 30.0) -> None:
    """SIGKILL the process ``proc`` and all its descendants at once, as a lost node, and wait
    until they are gone. torchrun starts each rank in a session of its own, so killing the
    launcher's process group alone leaves the ranks training (and checkpointing) on."""
    import os
    import signal
    import time

    tree = process_tree(proc.pid)
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout)
    deadline = time.monotonic() + timeout
    for p in tree[1:]:  # reparented to init: gone when reaped, or dead once a zombie
        while running(p) and time.monotonic() < deadline:
            time.sleep(0.05)
