"""Exact resume on CPU: a run stopped (or SIGKILLed) and resumed from its last checkpoint ends
bit-identical to the same run left alone: weights, optimizer, task weights and logged metrics."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from train_helpers import images, micro_config, needs_cpu_bf16, no_wandb  # noqa: F401 (fixtures)

from lic_core.errors import ConfigError
from lic_core.training import checkpoint as ckpt
from lic_core.training.engine import Trainer, train
from lic_core.training.logging import load_history

REPO = Path(__file__).resolve().parent.parent


def _assert_same_state(a: dict, b: dict) -> None:
    """Bit-identical training state (the RNG of the second run is the same stream, too)."""
    for k in ("state_dict", "optimizer", "weighting", "scheduler", "rng", "step", "skipped"):
        _equal(a[k], b[k], k)


def _equal(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _equal(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _metrics(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("step_time", "wall")} for r in load_history(run_dir)]


@pytest.mark.parametrize("sets", [
    {"loss__mode": "balanced"},
    {"loss__mode": "hierarchical", "balance__next_batch": True, "data__workers": 2},
    {"loss__mode": "qp", "optim__schedule": "plateau", "optim__patience": 0, "run__eval_every": 1},
    pytest.param({"speed__bf16": True}, marks=needs_cpu_bf16),
])
def test_resume_is_bit_identical(tmp_path, images, sets):
    full = train(micro_config(tmp_path, images, run__name="full", run__steps=6, run__ckpt_every=2, **sets))
    cfg = micro_config(tmp_path, images, run__name="cut", run__steps=6, run__ckpt_every=2, **sets)
    Trainer(cfg).fit(until=3)  # dies after step 3: its last checkpoint is step 2
    assert ckpt.latest(tmp_path / "cut" / "checkpoints").name == "step_00000002.pt"
    resumed = Trainer(cfg)
    assert resumed.step == 2
    cut = resumed.fit()
    _assert_same_state(torch.load(full.checkpoint, weights_only=True), torch.load(cut.checkpoint, weights_only=True))
    assert _metrics(full.run_dir) == _metrics(cut.run_dir)


def test_sigkill_mid_run_then_resume(tmp_path, images):
    sets = dict(loss__mode="balanced", run__steps=8, run__ckpt_every=2)
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "WANDB_MODE": "disabled",
           "PYTHONPATH": str(REPO)}
    full = train(micro_config(tmp_path, images, run__name="full", **sets))
    cfg = micro_config(tmp_path, images, run__name="killed", **sets)
    cfg.to_yaml(tmp_path / "killed.yaml")
    cmd = [sys.executable, "-m", "lic_core", "train", "--config", str(tmp_path / "killed.yaml")]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    folder = tmp_path / "killed" / "checkpoints"
    deadline = time.monotonic() + 300
    while not (folder / "step_00000004.pt").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.02)
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert alive and proc.returncode == -signal.SIGKILL
    died_at = ckpt.latest(folder)
    assert died_at is not None and int(died_at.stem.split("_")[1]) < 8
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "step 8" in done.stdout
    final = folder / "step_00000008.pt"
    _assert_same_state(torch.load(full.checkpoint, weights_only=True), torch.load(final, weights_only=True))
    assert _metrics(full.run_dir) == _metrics(tmp_path / "killed")
    assert not list(folder.glob(".*.tmp"))


def test_resume_refuses_another_config(tmp_path, images):
    train(micro_config(tmp_path, images, run__steps=2, run__ckpt_every=1))
    with pytest.raises(ConfigError, match=r"^run\.resume: .*loss\.lmbda \(checkpoint: 0\.013, config: 0\.05\); give .* another run\.name"):
        Trainer(micro_config(tmp_path, images, run__steps=4, loss__lmbda=0.05))
    with pytest.raises(ConfigError, match=r"^run\.resume: .* already holds checkpoints"):
        Trainer(micro_config(tmp_path, images, run__steps=4, run__resume="never"))
    more = train(micro_config(tmp_path, images, run__steps=4))  # run.steps may grow on resume
    assert [r["step"] for r in load_history(more.run_dir, "train")] == [1, 2, 3, 4]


def test_a_second_training_into_a_held_run_folder_stops(tmp_path, images):
    """While a process holds a run folder, another training into it is a one-line error that
    changes nothing; once the holder is gone (here killed), the folder trains normally."""
    from lic_core.errors import LicError

    cfg = micro_config(tmp_path, images, run__name="held", run__steps=2)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from filelock import FileLock; "
                               "lock = FileLock(sys.argv[1]); lock.acquire(); print('held', flush=True); time.sleep(60)",
                               str(tmp_path / ".held.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LicError, match=r"^[^\n]*held: another training is writing this run folder"):
            train(cfg)
        assert not (tmp_path / "held").exists()
    finally:
        holder.kill()
        holder.wait()
    assert train(cfg).step == 2
