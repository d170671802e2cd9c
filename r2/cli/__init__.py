"""The ``r2`` command: a click group whose subcommands live in one module each.

Subcommands are imported only when they run (or when ``--help`` lists them), so
``r2 score`` starts without importing torch. Each command parses its arguments and calls
one function of the plain Python API (``r2.cache``, ``r2.extract``, ``r2.train``,
``r2.evaluate``); tests call the same functions.

Errors: an exception whose class sets ``user_error = True`` (every room's own error type
does) is shown as a one-line ``Error: ...`` message with exit code 1, never as a
traceback. Anything else is a bug and keeps its traceback. Ctrl-C (SIGINT) ends a command
with exit code 130 and one line, ``interrupted: ...``, saying what is kept and how to go on
where the command registered that (:func:`on_interrupt`); an error raised because of the
interrupt (a DataLoader worker that the same Ctrl-C stopped) counts as the interrupt.
Warnings are printed as one line, ``warning: ...`` (without the source line Python's
default format shows; other libraries' warnings keep their category and origin on that
line).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import threading
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


_INTERRUPT_HINT = "r2.interrupt_hint"


def on_interrupt(hint: Callable[[], str]) -> None:
    """Register what the running command tells the user when Ctrl-C stops it: ``hint()`` is
    called then and returns what is kept and how to continue (one sentence)."""
    click.get_current_context().meta[_INTERRUPT_HINT] = hint


@contextlib.contextmanager
def _interrupts_recorded():
    """Note a SIGINT (then raise KeyboardInterrupt as Python does). Yields a list that holds
    True once one came. Left alone where SIGINT is ignored (nohup, a background job) or
    handled by someone else, and off the main thread."""
    seen: list[bool] = []
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield seen
        return

    def handler(signum, frame):
        seen.append(True)
        signal.default_int_handler(signum, frame)

    signal.signal(signal.SIGINT, handler)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _report_interrupt(ctx: click.Context) -> None:
    hint = ctx.meta.get(_INTERRUPT_HINT)
    text = "interrupted"
    if hint is not None:
        try:
            text += f": {hint()}"
        except Exception:  # the hint is a courtesy: never a traceback on top of the interrupt
            pass
    click.echo(f"\n{text}", err=True)
    ctx.exit(130)  # 128 + SIGINT, as shells report it


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
        with _interrupts_recorded() as interrupted:
            try:
                with _one_line_warnings():
                    return super().invoke(ctx)
            except KeyboardInterrupt:
                _report_interrupt(ctx)
            except click.exceptions.Exit:
                raise
            except Exception as exc:
                if interrupted:
                    _report_interrupt(ctx)
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
      r2 fit --dataset charades --cache cache/ --train train.jsonl --val val.jsonl --run-dir runs/x
      r2 predict --checkpoint runs/x --cache cache/ --annotations val.jsonl --out preds.jsonl
      r2 score preds.jsonl --gt val.jsonl        # the benchmark's exact metrics
    """
