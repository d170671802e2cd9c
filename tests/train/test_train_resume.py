"""Kill-and-resume: ``r2 fit`` killed with SIGKILL mid-training, then ``--resume``, ends with the
same weights, bit for bit, as an uninterrupted run (CPU); checkpoint writes are atomic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from r2.train.synthetic import TINY_OVERRIDES, make_synthetic_dataset

from .conftest import state_epoch, wait_for_checkpoint

EPOCHS = 4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("resume"), train_videos=24, val_videos=6,
                                  concepts=4, seed=3)


def _args(data, run_dir) -> list[str]:
    args = ["fit", "--dataset", "custom", "--cache", str(data.cache_dir), "--train", str(data.train_file),
            "--val", str(data.val_file), "--run-dir", str(run_dir), "--epochs", str(EPOCHS),
            "--workers", "0", "--seed", "7", "--device", "cpu"]
    for key, value in TINY_OVERRIDES.items():
        args += ["--set", f"{key}={value}"]
    return args


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    return env


def _weights(path: Path) -> dict:
    return load_file(str(path))


def _assert_same_weights(a: Path, b: Path):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), f"{key} differs between {a} and {b}"


def test_sigkill_then_resume_gives_the_uninterrupted_weights(data, tmp_path):
    from r2.train import fit
    from r2.train.loop import FitOptions

    # the uninterrupted run, in this process (one thread, as the subprocesses)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref_dir = tmp_path / "uninterrupted"
        fit(FitOptions(dataset="custom", cache=data.cache_dir, train=data.train_file, val=data.val_file,
                       run_dir=ref_dir, epochs=EPOCHS, workers=0, seed=7, device="cpu",
                       overrides={k: str(v) for k, v in TINY_OVERRIDES.items()}, progress=False),
            log=lambda m: None)
    finally:
        torch.set_num_threads(threads)

    # a real `r2 fit` process, killed with SIGKILL once the first epoch is checkpointed
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "r2", *_args(data, run_dir)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_checkpoint(proc, run_dir)
        time.sleep(0.15)  # into the next epoch
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    killed_at = state_epoch(run_dir)
    assert 1 <= killed_at < EPOCHS, "the kill must land before the end of training"
    lines_before = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines_before) >= killed_at

    # resume: same command + --resume
    done = subprocess.run(cmd + ["--resume"], env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming {run_dir} after epoch {killed_at}" in done.stderr

    _assert_same_weights(ref_dir / "checkpoints" / "last" / "model.safetensors",
                         run_dir / "checkpoints" / "last" / "model.safetensors")
    _assert_same_weights(ref_dir / "model.safetensors", run_dir / "model.safetensors")
    ref = [json.loads(x) for x in (ref_dir / "metrics.jsonl").read_text().splitlines()]
    got = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in got] == list(range(1, EPOCHS + 1))  # no duplicated epoch lines
    for r, g in zip(ref, got):
        assert (r["loss"], r["value"], r["iteration"], r["best"]) == (g["loss"], g["value"], g["iteration"],
                                                                      g["best"])
    assert json.loads((ref_dir / "best.json").read_text()) == json.loads((run_dir / "best.json").read_text())
    assert not list((run_dir / "checkpoints").glob(".last.partial-*"))


def test_a_run_killed_between_its_first_best_weights_and_its_first_checkpoint_resumes(data, tmp_path):
    """SIGKILL at the end of epoch 1, after the best weights and before ``checkpoints/last``
    (here: the process kills itself as the checkpoint write begins): ``--resume`` trains the run
    again from the start and ends with the weights of an uninterrupted run; a run whose
    checkpoints were removed after more epochs is refused, saying what to do."""
    run_dir = tmp_path / "killed"
    args = _args(data, run_dir)
    args[args.index("--epochs") + 1] = "2"
    kill_at_checkpoint = ("import os, signal, sys\n"
                          "import r2.train.checkpoint as ckpt\n"
                          "ckpt.save_last = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
                          "from r2.cli import main\n"
                          "sys.exit(main(sys.argv[1:]))\n")
    done = subprocess.run([sys.executable, "-c", kill_at_checkpoint, *args], env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    assert (run_dir / "model.safetensors").is_file() and not (run_dir / "checkpoints" / "last").exists()
    refused = subprocess.run([sys.executable, "-m", "r2", *args], env=_env(), capture_output=True, text=True,
                             timeout=300)
    assert refused.returncode != 0 and "pass --resume to continue it" in refused.stderr

    resumed = subprocess.run([sys.executable, "-m", "r2", *args, "--resume"], env=_env(), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "was stopped at the end of its first epoch, before its checkpoint was written; starting the run " \
           "again" in resumed.stderr
    ref_dir = tmp_path / "uninterrupted"
    ref_args = _args(data, ref_dir)
    ref_args[ref_args.index("--epochs") + 1] = "2"
    ref = subprocess.run([sys.executable, "-m", "r2", *ref_args], env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert ref.returncode == 0, ref.stderr[-3000:]
    _assert_same_weights(ref_dir / "checkpoints" / "last" / "model.safetensors",
                         run_dir / "checkpoints" / "last" / "model.safetensors")
    assert [json.loads(x)["epoch"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert json.loads((ref_dir / "best.json").read_text()) == json.loads((run_dir / "best.json").read_text())

    # two epochs done, checkpoints removed (to save space): not the first epoch's kill
    import shutil

    shutil.rmtree(run_dir / "checkpoints")
    again = subprocess.run([sys.executable, "-m", "r2", *args, "--resume"], env=_env(), capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 1 and (run_dir / "model.safetensors").is_file()
    assert (f"{run_dir} has weights but no checkpoints/last to resume from (its checkpoints were removed): "
            "remove the folder, or choose another --run-dir, to train again") in again.stderr


@pytest.mark.parametrize("sig, word", [(signal.SIGINT, "interrupted"), (signal.SIGTERM, "terminated (SIGTERM)")])
def test_ctrl_c_or_sigterm_says_what_is_kept_and_the_printed_command_resumes(data, tmp_path, terminal, sig, word):
    """Ctrl-C in the middle of `r2 fit`, or SIGTERM as Slurm sends it (to the process group: the
    loader workers get it too): exit code 128 + the signal, no traceback, one line naming the last
    checkpoint and the command that continues the run, which then does."""
    import shlex

    run_dir = tmp_path / "run"
    args = _args(data, run_dir)
    args[args.index("--workers") + 1] = "2"
    fit = terminal([sys.executable, "-m", "r2", *args], env=_env())
    wait_for_checkpoint(fit.proc, run_dir)
    time.sleep(0.15)  # into the next epoch
    fit.send(sig)
    rc, _, err = fit.finish()
    kept = state_epoch(run_dir)
    assert rc == 128 + sig, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    expected = " ".join(["r2", *map(shlex.quote, args), "--resume"])
    assert last == f"{word}: {run_dir} keeps its checkpoint after epoch {kept}; continue with: {expected}"
    assert 1 <= kept < EPOCHS

    printed = shlex.split(last.split("continue with: ", 1)[1])
    done = subprocess.run([sys.executable, "-m", *printed], env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming {run_dir} after epoch {kept}" in done.stderr
    assert state_epoch(run_dir) == EPOCHS


def test_resume_adds_epochs_and_refuses_changed_settings(data, tmp_path):
    from r2.train import fit
    from r2.train.presets import get_preset
    from r2.train.loop import FitError

    common = dict(dataset="custom", cache=data.cache_dir, train=data.train_file, val=data.val_file,
                  workers=0, overrides=dict(TINY_OVERRIDES), progress=False, log=lambda m: None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit(run_dir=tmp_path / "a", epochs=2, **common)
        fit(run_dir=tmp_path / "b", epochs=1, **common)
        result = fit(run_dir=tmp_path / "b", epochs=2, resume=True, **common)
        assert result.resumed_from == 1 and result.last_epoch == 2
        _assert_same_weights(tmp_path / "a" / "checkpoints" / "last" / "model.safetensors",
                             tmp_path / "b" / "checkpoints" / "last" / "model.safetensors")
        # a finished run resumed again trains nothing and keeps its history; without --epochs
        # it keeps the run's own 2, not the preset's
        again = fit(run_dir=tmp_path / "b", epochs=2, resume=True, **common)
        assert [h["epoch"] for h in again.history] == [1, 2]
        assert get_preset("custom", overrides=TINY_OVERRIDES).epochs != 2
        messages = []
        again = fit(run_dir=tmp_path / "b", resume=True, **{**common, "log": messages.append})
        assert [h["epoch"] for h in again.history] == [1, 2] and again.epochs == 2
        assert not any("the run had" in m for m in messages)
        fit(run_dir=tmp_path / "c", epochs=1, **common)  # interrupted after 1 of 2: a plain --resume
        fit(run_dir=tmp_path / "c", epochs=2, resume=True, **common)  # finishes epoch 2 ...
        extended = fit(run_dir=tmp_path / "c", epochs=3, resume=True, **{**common, "log": messages.append})
        assert extended.last_epoch == 3 and "--epochs 3: the run had 2 epochs" in messages
        # other settings may not change on resume; a run dir is never silently overwritten
        with pytest.raises(FitError, match="lr"):
            fit(run_dir=tmp_path / "b", epochs=3, resume=True,
                **{**common, "overrides": {**TINY_OVERRIDES, "lr": 1e-4}})
        with pytest.raises(FitError, match="already holds a run"):
            fit(run_dir=tmp_path / "b", epochs=2, **common)
        # fewer epochs than done: refused, the run's record untouched
        preset_before = (tmp_path / "c" / "preset.json").read_text()
        with pytest.raises(FitError) as err:
            fit(run_dir=tmp_path / "c", epochs=1, resume=True, **common)
        assert str(err.value) == (f"--resume {tmp_path / 'c'}: --epochs 1 is fewer than the 3 epochs the run has "
                                  "done; resume with --epochs 3 or more (to train fewer epochs, start a new run "
                                  "in another --run-dir)")
        assert (tmp_path / "c" / "preset.json").read_text() == preset_before
    finally:
        torch.set_num_threads(threads)


def test_resume_with_loader_workers_gives_the_weights_of_a_serial_run(data, tmp_path, one_torch_thread):
    """Loader worker processes (training and evaluation) change nothing: a run with 2 workers,
    stopped after epoch 1 and resumed, ends with the weights of an uninterrupted serial run."""
    from r2.train import fit

    common = dict(dataset="custom", cache=data.cache_dir, train=data.train_file, val=data.val_file,
                  overrides=dict(TINY_OVERRIDES), progress=False, log=lambda m: None)
    serial = fit(run_dir=tmp_path / "serial", epochs=2, workers=0, **common)
    fit(run_dir=tmp_path / "workers", epochs=1, workers=2, **common)
    resumed = fit(run_dir=tmp_path / "workers", epochs=2, workers=2, resume=True, **common)
    assert resumed.resumed_from == 1
    for name in ("checkpoints/last/model.safetensors", "model.safetensors"):
        _assert_same_weights(tmp_path / "serial" / name, tmp_path / "workers" / name)
    assert [h["value"] for h in resumed.history] == [h["value"] for h in serial.history]


def test_checkpoint_swap_survives_a_crash_between_the_renames(tmp_path):
    from r2.model import R2Config, R2Model
    from r2.train import checkpoint as ckpt

    model = R2Model(R2Config(video_dim=8, query_dim=8, num_layers=2, hidden_dim=16, num_heads=2))
    trainer = {"optimizer": {}, "rng": [ckpt.get_rng_state()]}
    ckpt.save_last(tmp_path, model, trainer, {"epoch": 1, "iteration": 3})
    ckpt.save_last(tmp_path, model, trainer, {"epoch": 2, "iteration": 6})
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["last"]
    # a kill after `last` -> `last.old` and before the partial became `last`
    os.replace(root / "last", root / "last.old")
    (root / ".last.partial-1-abcd").mkdir()
    last = ckpt.load_last(tmp_path)
    path, state, loaded = last
    assert path.name == "last.old" and state["epoch"] == 2 and last.trainer is loaded and last.path == path
    ckpt.set_rng_state(loaded["rng"][0])  # RNG states read back with weights_only=True
    ckpt.clean_partials(tmp_path)
    assert not (root / ".last.partial-1-abcd").exists()
    # metrics.jsonl: a torn last line (kill during a write) is ignored, later epochs dropped
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n{"epoch": 3}\n{"epo')
    assert [r["epoch"] for r in ckpt.truncate_metrics(tmp_path, 2)] == [1, 2]
    assert (tmp_path / "metrics.jsonl").read_text() == '{"epoch": 1}\n{"epoch": 2}\n'


def test_resume_keeps_the_runs_epochs_over_its_config_file_and_names_a_damaged_checkpoint(data, tmp_path):
    """A run begun with ``--config F --epochs 2`` (F says 3) and resumed with the same ``--config F``
    (as the resume errors advise) keeps its 2 epochs, saying where the other number came from;
    ``--init`` on resume is said not to be used; a checkpoint missing a file is named, not taken
    for "no checkpoint yet" (which trained the run again from epoch 1)."""
    from r2.train import fit
    from r2.train.checkpoint import RunDirError

    config = tmp_path / "settings.json"
    config.write_text(json.dumps({**TINY_OVERRIDES, "epochs": 3}))
    common = dict(dataset="custom", cache=data.cache_dir, train=data.train_file, val=data.val_file, workers=0,
                  config_file=config, progress=False)
    run = tmp_path / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit(run_dir=run, epochs=2, log=lambda m: None, **common)
        messages: list[str] = []
        again = fit(run_dir=run, resume=True, init=run, log=messages.append, **common)
        assert again.epochs == 2 and [h["epoch"] for h in again.history] == [1, 2]
        assert (f"--resume keeps the run's epochs 2 ({config} says 3; pass --epochs 3 to change it)"
                in messages), messages
        assert f"--resume: --init {run} is not used, the run goes on from its checkpoint" in messages, messages
        assert not any("the run had" in m for m in messages)

        (run / "checkpoints" / "last" / "trainer.pt").unlink()
        with pytest.raises(RunDirError) as err:
            fit(run_dir=run, resume=True, epochs=3, log=lambda m: None, **common)
        assert str(err.value) == (f"the checkpoint {run / 'checkpoints' / 'last'} is incomplete (trainer.pt "
                                  "missing): it cannot be resumed; remove the run folder, or choose another "
                                  "--run-dir, to train again")
        assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    finally:
        torch.set_num_threads(threads)
