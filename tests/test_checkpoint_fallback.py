"""A training run whose newest step checkpoint was cut short resumes from the previous valid one,
with a warning naming the file it skipped."""
from __future__ import annotations

import pytest
import torch

from lic_core.errors import CheckpointError
from lic_core.training import checkpoint as ckpt
from lic_core.training.engine import Trainer, train

from train_helpers import images, micro_config  # noqa: F401 (fixture)


def test_read_latest_skips_a_truncated_newest_file(tmp_path):
    for step in (2, 4):
        ckpt.save_atomic({"state_dict": {"w": torch.full((3,), float(step))}, "step": step}, ckpt.step_file(tmp_path, step))
    newest = ckpt.step_file(tmp_path, 4)
    assert ckpt.read_latest(tmp_path)[0] == newest
    newest.write_bytes(newest.read_bytes()[:100])  # cut short
    with pytest.warns(ckpt.CheckpointFallbackWarning, match="step_00000004.pt.*previous step checkpoint"):
        path, obj = ckpt.read_latest(tmp_path)
    assert path == ckpt.step_file(tmp_path, 2) and obj["step"] == 2
    ckpt.step_file(tmp_path, 2).write_bytes(b"")
    with pytest.warns(ckpt.CheckpointFallbackWarning), pytest.raises(CheckpointError, match="no step checkpoint loads"):
        ckpt.read_latest(tmp_path)
    assert ckpt.read_latest(tmp_path / "none") is None


def test_a_run_resumes_from_the_previous_checkpoint(tmp_path, images):  # noqa: F811
    cfg = micro_config(tmp_path, images, run__steps=4, run__ckpt_every=2, run__keep_last=3)
    Trainer(cfg).fit(until=4)
    folder = tmp_path / "run" / "checkpoints"
    last = ckpt.step_file(folder, 4)
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.warns(ckpt.CheckpointFallbackWarning, match="step_00000004.pt"):
        resumed = Trainer(cfg)
    assert resumed.step == 2
    done = train(cfg)
    assert torch.load(done.checkpoint, weights_only=True)["step"] == 4
