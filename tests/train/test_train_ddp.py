"""``torchrun --nproc_per_node=2 -m r2 fit``: DDP on CPU with the gloo backend, 2 real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from r2.train.synthetic import TINY_OVERRIDES, make_synthetic_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # 23 videos -> 46 training queries: an even split over 2 ranks
    return make_synthetic_dataset(tmp_path_factory.mktemp("ddp"), train_videos=23, val_videos=5,
                                  concepts=4, seed=5)


def _torchrun(data, run_dir, *extra):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
           "--nproc_per_node=2", "-m", "r2", "fit", "--dataset", "custom", "--cache", str(data.cache_dir),
           "--train", str(data.train_file), "--val", str(data.val_file), "--run-dir", str(run_dir),
           "--workers", "0", "--device", "cpu", *extra]
    for key, value in TINY_OVERRIDES.items():
        cmd += ["--set", f"{key}={value}"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    # rank 0 alone logs and saves: one summary, one training line
    assert done.stdout.count("run directory:") == 1, done.stdout
    assert done.stderr.count("training custom:") == 1
    return done


def test_torchrun_two_gloo_processes_then_resume(data, tmp_path):
    """1 epoch, then ``--resume`` to 3: the RNG states of both ranks come back from the
    checkpoint (no reseeding) and the run goes on where it stopped."""
    run_dir = tmp_path / "run"
    _torchrun(data, run_dir, "--epochs", "1")
    first = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    done = _torchrun(data, run_dir, "--epochs", "3", "--resume")
    assert done.stderr.count(f"resuming {run_dir} after epoch 1 (iteration 6)") == 1, done.stderr[-3000:]
    assert "reseeding" not in done.stderr

    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3] and records[0] == first
    for r in records:
        assert r["world_size"] == 2
        # the DistributedSampler shards cover the whole split once per epoch (46 = 2 x 23)
        assert r["samples"] == data.num_train
        assert r["value"] is not None
    # global batch 8 -> 4 per rank: ceil(23 / 4) = 6 iterations per epoch on every rank
    assert records[-1]["iteration"] == 18
    state = json.loads((run_dir / "checkpoints" / "last" / "state.json").read_text())
    assert state["world_size"] == 2 and state["epoch"] == 3
    import torch

    trainer = torch.load(run_dir / "checkpoints" / "last" / "trainer.pt", weights_only=True)
    assert len(trainer["rng"]) == 2  # the RNG states of both ranks
    assert not torch.equal(trainer["rng"][0]["torch"], trainer["rng"][1]["torch"])
    # the saved (best) weights load into a model (every rank held the same weights: fit
    # compares parameter checksums across ranks after each epoch and fails otherwise)
    from r2.model import R2Model

    model = R2Model.from_pretrained(run_dir)
    weights = load_file(str(run_dir / "model.safetensors"))
    assert set(weights) == set(model.state_dict())
