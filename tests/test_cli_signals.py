"""Ctrl-C stops an r2 command also when Python runs the handler inside a ``__del__`` or a weakref
callback (h5py frees its objects there, most of the time of a cache write), where a
KeyboardInterrupt cannot propagate and would only be printed."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import os, signal, sys, time
    from r2.cli import _stop_signals_recorded

    class Freed:
        def __del__(self):
            os.kill(os.getpid(), signal.{sig})  # the handler runs in here
            for _ in range(200000):
                pass

    with _stop_signals_recorded() as seen:
        try:
            Freed()  # freed at once
            start = time.time()
            while time.time() - start < 20:
                pass
            print("not stopped")
        except KeyboardInterrupt:
            print("stopped by", [signal.Signals(s).name for s in seen][:1], f"after {{time.time() - start:.2f}} s")
    class Broken:
        def __del__(self):
            raise ValueError("an error of a __del__ is still reported")
    Broken()
""")


def run(sig):
    return subprocess.run([sys.executable, "-c", SCRIPT.format(sig=sig)], capture_output=True, text=True, timeout=60)


def test_an_interrupt_swallowed_in_a_del_is_raised_again_where_it_propagates():
    for sig in ("SIGINT", "SIGTERM"):
        done = run(sig)
        assert done.stdout.startswith(f"stopped by ['{sig}'] after 0."), (done.stdout, done.stderr)
        assert "KeyboardInterrupt" not in done.stderr
        # other errors of a __del__ still reach the usual hook
        assert "Exception ignored in" in done.stderr and "an error of a __del__ is still reported" in done.stderr
