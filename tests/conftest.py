"""Shared test setup. Tests never touch the network: the Hugging Face hub is forced offline."""

import contextlib
import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class TerminalProcess:
    """A command started as a terminal starts it: a process group of its own and SIGINT at its
    default action (the test runner may run with SIGINT ignored, as a background job does, which
    its children would inherit). ``send(sig)`` sends a signal to the whole group: SIGINT as
    Ctrl-C does, SIGTERM as Slurm stops a job step."""

    def __init__(self, cmd, **kwargs):
        import signal
        import subprocess

        self.proc = subprocess.Popen(cmd, start_new_session=True,
                                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)

    def send(self, sig) -> None:
        os.killpg(self.proc.pid, sig)

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        """Wait for the command; (exit code, stdout, stderr). SIGKILLs the group if it hangs."""
        import signal
        import subprocess

        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            out, err = self.proc.communicate()
            raise AssertionError(f"still running {timeout} s after the signal:\n{err[-3000:]}")
        return self.proc.returncode, out, err

    def kill(self) -> None:
        import signal

        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.communicate()


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process descended from it (from /proc: parent ids)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # after "pid (comm) state"
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (dead, not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def terminal():
    """``terminal(cmd, **popen_kwargs)`` starts a :class:`TerminalProcess`; what is left running
    at the end of the test is killed."""
    started = []

    def start(cmd, **kwargs) -> TerminalProcess:
        started.append(TerminalProcess(cmd, **kwargs))
        return started[-1]

    yield start
    for p in started:
        p.kill()
