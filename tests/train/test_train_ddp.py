"""``torchrun --nproc_per_node=2 -m r2 fit``: DDP on CPU with the gloo backend, 2 real processes;
killed with SIGKILL and resumed, it ends with the weights of an uninterrupted 2-rank run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from r2.train.synthetic import TINY_OVERRIDES, make_synthetic_dataset

from .conftest import kill_tree, state_epoch, wait_for_checkpoint

EPOCHS = 3


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # 23 videos -> 46 training queries: an even split over 2 ranks
    return make_synthetic_dataset(tmp_path_factory.mktemp("ddp"), train_videos=23, val_videos=5,
                                  concepts=4, seed=5)


def _command(data, run_dir, *extra) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
           "--nproc_per_node=2", "-m", "r2", "fit", "--dataset", "custom", "--cache", str(data.cache_dir),
           "--train", str(data.train_file), "--val", str(data.val_file), "--run-dir", str(run_dir),
           "--workers", "0", "--device", "cpu", "--epochs", str(EPOCHS), *extra]
    for key, value in TINY_OVERRIDES.items():
        cmd += ["--set", f"{key}={value}"]
    return cmd


def _env(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TMPDIR=str(tmp_path))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def _torchrun(data, run_dir, tmp_path, *extra):
    done = subprocess.run(_command(data, run_dir, *extra), env=_env(tmp_path), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    # rank 0 alone logs and saves: one summary, one training line
    assert done.stdout.count("run directory:") == 1, done.stdout
    assert done.stderr.count("training custom:") == 1
    return done


def _assert_same_weights(a, b):
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), f"{key} differs between {a} and {b}"


def test_torchrun_two_gloo_processes_killed_then_resumed_give_the_uninterrupted_weights(data, tmp_path):
    """An uninterrupted 2-rank run, and the same run killed with SIGKILL (every process of it)
    once its first epoch is checkpointed, then ``--resume``d: the RNG states of both ranks come
    back from the checkpoint (no reseeding), and the final and best weights, the losses and the
    metrics are the uninterrupted run's, bit for bit."""
    ref_dir = tmp_path / "uninterrupted"
    _torchrun(data, ref_dir, tmp_path)

    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(_command(data, run_dir), env=_env(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)  # its own process group
    try:
        wait_for_checkpoint(proc, run_dir)
        kill_tree(proc)  # the launcher and both ranks at once, as a lost node
    finally:
        if proc.poll() is None:
            kill_tree(proc)
        proc.stderr.close()
    killed_at = state_epoch(run_dir)
    assert 1 <= killed_at < EPOCHS, "the kill must land before the end of training"

    done = _torchrun(data, run_dir, tmp_path, "--resume")
    iterations = 6 * killed_at  # global batch 8 -> 4 per rank: ceil(23 / 4) = 6 per epoch
    assert done.stderr.count(f"resuming {run_dir} after epoch {killed_at} (iteration {iterations})") == 1, \
        done.stderr[-3000:]
    assert "reseeding" not in done.stderr

    _assert_same_weights(ref_dir / "checkpoints" / "last" / "model.safetensors",
                         run_dir / "checkpoints" / "last" / "model.safetensors")
    _assert_same_weights(ref_dir / "model.safetensors", run_dir / "model.safetensors")
    ref = [json.loads(x) for x in (ref_dir / "metrics.jsonl").read_text().splitlines()]
    got = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in got] == list(range(1, EPOCHS + 1))  # no duplicated epoch lines
    for r, g in zip(ref, got):
        assert (r["loss"], r["value"], r["iteration"], r["best"]) == (g["loss"], g["value"], g["iteration"],
                                                                      g["best"])
        assert g["world_size"] == 2
        # the DistributedSampler shards cover the whole split once per epoch (46 = 2 x 23)
        assert g["samples"] == data.num_train and g["value"] is not None
    assert got[-1]["iteration"] == 6 * EPOCHS
    state = json.loads((run_dir / "checkpoints" / "last" / "state.json").read_text())
    assert state["world_size"] == 2 and state["epoch"] == EPOCHS
    trainer = torch.load(run_dir / "checkpoints" / "last" / "trainer.pt", weights_only=True)
    assert len(trainer["rng"]) == 2  # the RNG states of both ranks
    assert not torch.equal(trainer["rng"][0]["torch"], trainer["rng"][1]["torch"])
    # the saved (best) weights load into a model (every rank held the same weights: fit
    # compares parameter checksums across ranks after each epoch and fails otherwise)
    from r2.model import R2Model

    model = R2Model.from_pretrained(run_dir)
    assert set(load_file(str(run_dir / "model.safetensors"))) == set(model.state_dict())


def test_torchrun_trains_short_videos_and_a_zero_loss_weight(tmp_path):
    """Parameters without a gradient in a step: the stride-8 pyramid level is skipped for
    batches of videos shorter than 8 clips, and the coordinate head gets none with
    reg_weight=0. One process trains on; DDP, which waited for their gradients, crashed with
    "Expected to have finished reduction in the prior iteration". And a parameter that no rank
    used stays as it was, as in one process."""
    short = make_synthetic_dataset(tmp_path / "short", train_videos=8, val_videos=2, min_clips=6,
                                   max_clips=7, concepts=4, seed=1)
    run_dir = tmp_path / "run"
    cmd = _command(short, run_dir, "--set", "reg_weight=0")
    cmd[cmd.index("--epochs") + 1] = "1"
    done = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert (run_dir / "model.safetensors").is_file()
    # the coordinate head had no gradient on any rank in any step: as one process leaves such a
    # parameter alone, it keeps its initial values (a zero gradient would decay them)
    from r2.model import R2Config, R2Model
    from r2.train.presets import get_preset

    config = R2Config.from_json((run_dir / "config.json").read_text())
    torch.manual_seed(get_preset("custom").seed)  # as fit seeds the model it builds
    initial = R2Model(config).state_dict()
    trained = load_file(str(run_dir / "model.safetensors"))
    moved = {k: not torch.equal(trained[k], initial[k]) for k in trained if k.startswith(("coord_head.", "class_head."))}
    assert any(v for k, v in moved.items() if k.startswith("class_head."))  # it trained
    assert [k for k, v in moved.items() if k.startswith("coord_head.") and v] == [], "the unused head moved"


def test_unused_parameters_are_those_the_loss_does_not_reach():
    from r2.train.distributed import UnusedParameters

    a, b, c = (torch.nn.Linear(3, 3) for _ in range(3))
    x = torch.ones(2, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # parameters reached through their casts
        loss = b(a(x)).float().sum() + 0 * c(x).detach().sum()
    params = [*a.parameters(), *b.parameters(), *c.parameters()]
    unused = UnusedParameters(loss, params).collect()
    assert [id(p) for p in unused] == [id(c.weight), id(c.bias)]


def test_torchrun_on_a_damaged_shard_every_rank_names_it(data, tmp_path):
    """A video damaged into NaN after its commit, in one rank's batches: every rank checks its
    own items at the same step and stops with the one-line error naming the shard (the others
    say which rank found it). Before, the rank holding it stopped alone and the other died in
    gloo with a traceback ("Connection closed by peer")."""
    from dataclasses import replace

    from .test_train_predict import _damage_first_video

    error = _damage_first_video(data, tmp_path / "damaged", data.train_file)
    damaged = replace(data, cache_dir=tmp_path / "damaged")
    done = subprocess.run(_command(damaged, tmp_path / "run", "--no-progress"), env=_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert sorted(lines) == sorted([error, error + " (found by rank 0)"]) or \
        sorted(lines) == sorted([error, error + " (found by rank 1)"]), done.stderr[-3000:]
    assert "Connection closed by peer" not in done.stderr and "[rank0]: Traceback" not in done.stderr
    assert "[rank1]: Traceback" not in done.stderr
