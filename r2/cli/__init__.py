"""The ``r2`` command: a click group whose subcommands live in one module each.

Subcommands are imported only when they run (or when ``--help`` lists them), so
``r2 score`` starts without importing torch. Each command parses its arguments and calls
one function of the plain Python API (``r2.cache``, ``r2.extract``, ``r2.train``,
``r2.evaluate``); tests call the same functions.

Errors: an exception whose class sets ``user_error = True`` (every room's own error type
does) is shown as a one-line ``Error: ...`` message with exit code 1, never as a
traceback. Anything else is a bug and keeps its traceback. Ctrl-C (SIGINT) ends a command
with exit code 130 and one line, ``interrupted: ...``, saying what is kept and how to go on
where the command registered that (:func:`on_interrupt`); SIGTERM (``kill``, Slurm,
Kubernetes) the same way, ``terminated (SIGTERM): ...``, exit code 143. An error raised
because of the signal (a DataLoader worker that the same Ctrl-C stopped) counts as the signal.
Warnings are printed as one line, ``warning: ...`` (without the source line Python's
default format shows; other libraries' warnings keep their category and origin on that
line).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import threading
import time
import warnings
from typing import Callable

import click

from r2 import __version__

# command name -> "module:attribute"
COMMANDS = {
    "extract": "r2.cli.extract:extract",
    "make-tiny-clip": "r2.cli.extract:make_tiny_clip",
    "cache": "r2.cli.cache:cache",
    "fit": "r2.cli.fit:fit",
    "predict": "r2.cli.predict:predict",
    "score": "r2.cli.score:score",
    "demo": "r2.cli.demo:demo",
    "convert-official": "r2.cli.official:convert_official",
}


def _load(spec: str):
    module_name, attr = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:  # the command is not built yet
            return None
        raise
    return getattr(module, attr)


def format_warning(message, category, filename, lineno, line=None) -> str:
    """One line per warning: ``warning: <message>``; a warning from outside r2 names its
    category and file, ``(DeprecationWarning, x.py:12)``."""
    text = " ".join(str(message).split())
    if not category.__module__.startswith("r2."):
        text += f" ({category.__name__}, {os.path.basename(filename)}:{lineno})"
    return f"warning: {text}\n"


@contextlib.contextmanager
def _one_line_warnings():
    saved = warnings.formatwarning
    warnings.formatwarning = format_warning
    try:
        yield
    finally:
        warnings.formatwarning = saved


def command_line(name: str) -> list[str] | None:
    """The command line that runs command ``name`` now, ``["r2", name, ...]``; None when it was
    not started from a command line (a test runner's CliRunner, another program's argv)."""
    if sys.argv[1:2] == [name]:
        return ["r2", *sys.argv[1:]]
    return None


#: ``--progress/--no-progress`` of the commands that do long work (value: True, False or None)
progress_option = click.option("--progress/--no-progress", default=None,
                               help="Progress bar [default: on a terminal].")


#: The highest ``--fps``: past a clip per source frame (60 fps video at most, in practice) the
#: clips only repeat frames; the benchmarks use 0.5-2.
MAX_FPS = 60.0


def check_fps(ctx, param, value: float | None) -> float | None:
    """The callback of a ``--fps`` option (``r2 extract``, ``r2 predict VIDEO``): a finite rate in
    (0, MAX_FPS]; ``inf``/``nan`` would otherwise reach the cache manifest and fail there
    ("invalid cache manifest")."""
    import math

    if value is not None and not (math.isfinite(value) and value <= MAX_FPS):
        raise click.BadParameter(f"{value:g} is not a clip rate: give a number of clips per second in (0, {MAX_FPS:g}] "
                                 "(the benchmarks use 0.5 to 2)", param_hint="'--fps'")
    return value


#: the most --threads taken (OpenMP crashes creating some 100,000 threads; the largest machines
#: have a few hundred cores)
MAX_THREADS = 1024


def _set_torch_threads(ctx, param, value):
    if value is not None:
        import torch

        from r2.cpus import usable_cpus

        cpus = usable_cpus()
        if value > cpus:
            click.echo(f"warning: --threads {value} is more than the {cpus} CPU(s) this process may use: the "
                       "threads take turns on them, which is slower (often much slower) than --threads "
                       f"{cpus}", err=True)
        torch.set_num_threads(value)


#: ``--threads N`` of the commands that run the R² model: sets torch's CPU threads as parsed
threads_option = click.option(
    "--threads", type=click.IntRange(min=1, max=MAX_THREADS), expose_value=False, callback=_set_torch_threads,
    help="torch threads on the CPU [default: torch's, which OMP_NUM_THREADS sets]; the float sums, "
         "and so the last digits of a run, depend on it.")


_INTERRUPT_HINT = "r2.interrupt_hint"


def fps_against_preset(dataset: str | None, fps: float | None) -> str | None:
    """The warning for an ``--fps`` given beside a ``--dataset`` whose preset samples at another
    rate (the features are extracted at ``fps``, and ``r2 fit -d DATASET`` would refuse them),
    else None. An unknown data set name is a ``ValueError``."""
    if dataset is None or fps is None:
        return None
    from r2.jobs import preset_fps

    preset = preset_fps(dataset)
    if preset is None:
        return (f"warning: --fps {float(fps):g}: the {dataset} preset samples per video (one frame per annotated clip), "
                f"and `r2 fit -d {dataset}` refuses features at a fixed rate")
    if abs(float(preset) - float(fps)) <= 1e-9 * float(preset):
        return None
    return (f"warning: --fps {float(fps):g} is not the {dataset} preset's {float(preset):g} clips/s: the features are "
            f"sampled at {float(fps):g}, and `r2 fit -d {dataset}` refuses them unless given --set fps={float(fps):g}")


def on_interrupt(hint: Callable[[], str]) -> None:
    """Register what the running command tells the user when Ctrl-C or SIGTERM stops it:
    ``hint()`` is called then and returns what is kept and how to continue (one sentence)."""
    click.get_current_context().meta[_INTERRUPT_HINT] = hint


#: the signals that stop a command cleanly: Ctrl-C, and what `kill`, Slurm and Kubernetes send
_STOP_WORDS = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated (SIGTERM)"}


@contextlib.contextmanager
def _stop_signals_recorded():
    """SIGINT (Ctrl-C) and SIGTERM raise KeyboardInterrupt in this process (SIGINT already does),
    so the command unwinds (open shards dropped, files closed) and says what is kept. Yields the
    list of the signals that came. A signal is left alone where it is ignored (nohup, a
    background job) or someone else handles it, and off the main thread. Forked children (torch's
    loader workers) inherit the handler: they stop on SIGTERM as on Ctrl-C, quietly (a worker
    killed by the signal makes torch raise in the training process as it shuts the loader down).

    Python runs a signal handler wherever the main thread is; when that is a ``__del__`` or a
    weakref callback (h5py frees its objects in them, most of the time of a write), the
    KeyboardInterrupt cannot propagate and is only printed ("Exception ignored in ..."): the
    command would go on as if no Ctrl-C had come. ``sys.unraisablehook`` catches that one and
    sends the signal again (from a thread waiting for that, so that it comes once the main
    thread is out of the callback), so it is raised where it can propagate."""
    seen: list[int] = []
    swallowed = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return
    owner = os.getpid()
    usual = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}

    finished = []

    def redeliver():
        while True:
            swallowed.wait()
            swallowed.clear()
            if finished:
                return
            time.sleep(0.001)  # the main thread leaves the hook and the callback
            os.kill(owner, seen[-1])

    def handler(signum, frame):
        if os.getpid() == owner:
            seen.append(signum)
            # torch's SIGCHLD handler reports a loader worker killed by a signal as an error;
            # workers that this same SIGTERM kills (torch's own handler in them lets a SIGTERM
            # from anyone but their parent kill them) are expected to die now. A no-op, not
            # SIG_DFL: Python raises "ignored due to race condition" for a SIGCHLD pending then.
            if callable(signal.getsignal(signal.SIGCHLD)):
                signal.signal(signal.SIGCHLD, _ignore_signal)
        raise KeyboardInterrupt

    replaced = [sig for sig, h in usual.items() if signal.getsignal(sig) is h]
    for sig in replaced:
        signal.signal(sig, handler)
    previous_hook = sys.unraisablehook

    def unraisable(info):
        if info.exc_type is KeyboardInterrupt and seen and os.getpid() == owner:
            swallowed.set()  # in a __del__ or weakref callback: sent again, raised where it propagates
            return
        previous_hook(info)

    if replaced:
        sys.unraisablehook = unraisable
        # started now, not in the handler: a handler that starts a thread can deadlock where the
        # signal came while the main thread held threading's own locks (starting a thread)
        threading.Thread(target=redeliver, name="r2-signal-redelivery", daemon=True).start()
    try:
        yield seen
    finally:
        for sig in replaced:
            signal.signal(sig, usual[sig])
        if sys.unraisablehook is unraisable:
            sys.unraisablehook = previous_hook
        finished.append(True)
        swallowed.set()  # the redelivery thread ends


def _ignore_signal(signum, frame) -> None:
    pass


def _report_interrupt(ctx: click.Context, signals: list[int]) -> None:
    signum = signals[0] if signals else signal.SIGINT
    hint = ctx.meta.get(_INTERRUPT_HINT)
    text = _STOP_WORDS[signum]
    if hint is not None:
        try:
            text += f": {hint()}"
        except Exception:  # the hint is a courtesy: never a traceback on top of the interrupt
            pass
    click.echo(f"\n{text}", err=True)
    ctx.exit(128 + signum)  # as shells report a command stopped by the signal: 130, 143


class R2Group(click.Group):
    """A group that loads subcommands lazily and turns user errors into clean messages."""

    def list_commands(self, ctx):
        names = set(super().list_commands(ctx)) | set(COMMANDS)
        return sorted(n for n in names if self.get_command(ctx, n) is not None)

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is None and name in COMMANDS:
            command = _load(COMMANDS[name])
        return command

    def invoke(self, ctx):
        with _stop_signals_recorded() as stopped_by:
            try:
                with _one_line_warnings():
                    return super().invoke(ctx)
            except KeyboardInterrupt:
                _report_interrupt(ctx, stopped_by)
            except click.exceptions.Exit:
                raise
            except Exception as exc:
                if stopped_by:
                    _report_interrupt(ctx, stopped_by)
                if getattr(exc, "user_error", False):
                    raise click.ClickException(str(exc)) from exc
                raise


@click.group(cls=R2Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="r2")
def main():
    """r2: video temporal grounding with R²-Tuning.

    \b
    Typical flow:
      r2 extract videos/ -a train.jsonl -d charades --out cache/  # frozen CLIP, once per video
      r2 extract videos/ -a val.jsonl -d charades --out cache/    # same cache: adds the val split
      r2 cache import vid_k4/ --queries txt_k4/ -d charades -m clip/ -o cache/  # or: released .npy features
      r2 fit --dataset charades --cache cache/ --train train.jsonl --val val.jsonl --run-dir runs/x
      r2 predict --checkpoint runs/x --cache cache/ --annotations val.jsonl --out preds.jsonl
      r2 score preds.jsonl --gt val.jsonl        # the benchmark's exact metrics
    """
