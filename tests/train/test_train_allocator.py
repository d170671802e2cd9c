"""r2.train.allocator: glibc malloc keeps freed memory for reuse when r2 fit trains on the CPU.

Each check runs in a fresh interpreter (the settings are the process's): a 40 MB tensor is a
mapping of its own under glibc's defaults and comes from the heap, and stays there once freed,
after ``reuse_freed_memory()``.
"""

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc malloc only")

PROBE = """
import ctypes, json, sys
import torch
from r2.train.allocator import reuse_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
applied = reuse_freed_memory() if sys.argv[1] == "call" else None
before = libc.mallinfo2()
x = torch.ones(10 * 2**20)  # 40 MB
during = libc.mallinfo2()
del x
after = libc.mallinfo2()
mb = 2**20
print(json.dumps({"applied": applied, "mapped": (during.hblkhd - before.hblkhd) / mb,
                  "heap": (during.arena - before.arena) / mb, "kept": (after.arena - before.arena) / mb}))
"""


def _probe(mode: str, **env) -> dict:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                          env={**base, **env}, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_freed_blocks_stay_in_the_heap_for_the_next_step():
    default = _probe("none")
    assert default["mapped"] >= 40  # glibc's default: a mapping of its own, unmapped by free
    tuned = _probe("call")
    assert tuned["applied"] is True
    assert tuned["mapped"] < 1 and tuned["heap"] >= 40
    assert tuned["kept"] >= 40  # freed, and kept for reuse (not trimmed)


def test_the_users_own_allocator_settings_are_left_alone():
    probe = _probe("call", MALLOC_ARENA_MAX="2")
    assert probe["applied"] is False
    assert probe["mapped"] >= 40


def test_fit_sets_it_when_it_trains_on_the_cpu(monkeypatch, tmp_path):
    from r2.train import loop
    from r2.train.synthetic import TINY_OVERRIDES, make_synthetic_dataset

    calls = []
    monkeypatch.setattr(loop, "reuse_freed_memory", lambda: calls.append(1) or True)
    data = make_synthetic_dataset(tmp_path / "data", train_videos=4, val_videos=2, concepts=2, seed=0)
    loop.fit(dataset="custom", cache=data.cache_dir, train=data.train_file, val=data.val_file,
             run_dir=tmp_path / "run", epochs=1, device="cpu", workers=0, overrides=dict(TINY_OVERRIDES),
             progress=False, log=lambda m: None)
    assert calls == [1]
