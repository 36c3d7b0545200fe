"""Threads of the processes lic_core starts: idle OpenMP threads sleep, counts fit the cores, and
the sweep reports each finished job with what is left and a heartbeat while jobs run."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lic_core import threads


def test_fair_share_divides_the_affinity_mask(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert threads.cores() == 4
    assert [threads.fair_share(j) for j in (1, 2, 3, 8)] == [4, 2, 1, 1]


def test_child_env_precedence(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert threads.child_env(base={}) == {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "2",
                                          "MKL_NUM_THREADS": "2"}
    assert threads.child_env(jobs=2, base={})["OMP_NUM_THREADS"] == "1"
    assert threads.child_env(base={"OMP_NUM_THREADS": "3"})["OMP_NUM_THREADS"] == "3"  # user's own
    assert threads.child_env(threads=5, base={"OMP_NUM_THREADS": "3"})["OMP_NUM_THREADS"] == "5"
    assert threads.child_env(base={"OMP_WAIT_POLICY": "ACTIVE"})["OMP_WAIT_POLICY"] == "ACTIVE"


def test_for_children_restores_the_environment(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    with threads.for_children(threads=1) as env:
        assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and os.environ["OMP_NUM_THREADS"] == "1"
        assert env["MKL_NUM_THREADS"] == "1"
    assert "OMP_WAIT_POLICY" not in os.environ and os.environ["OMP_NUM_THREADS"] == "7"


def test_kernel_env_of_a_sweep_job(monkeypatch):
    from lic_core.workbench.sweep import _kernel_env

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(4)), raising=False)
    with _kernel_env(0, side_by_side=2):
        assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and os.environ["OMP_NUM_THREADS"] == "2"
    assert "OMP_WAIT_POLICY" not in os.environ


def _sweep_dir(tmp_path: Path) -> Path:
    jobs = {"a": {"state": "done", "duration_s": 60.0}, "b": {"state": "running"},
            "c": {"state": "pending"}}
    (tmp_path / "manifest.json").write_text(json.dumps({"jobs": jobs}))
    log = tmp_path / "b" / "run" / "finetune" / "balanced-l0.013-s100" / "metrics.jsonl"
    log.parent.mkdir(parents=True)
    log.write_text(json.dumps({"kind": "train", "step": 3}) + "\n" + json.dumps({"kind": "train", "step": 4}) + "\n")
    return tmp_path


def test_progress_lines(tmp_path, capsys):
    from lic_core.workbench.sweep import SweepSpec, _Progress

    spec = SweepSpec(name="demo", notebook=tmp_path / "nb.ipynb", output=_sweep_dir(tmp_path))
    bar = _Progress(spec, total=3, active=True, parallel=1)
    bar.finished("a", "done")
    bar.heartbeat(["b"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "  sweep demo [1/3] a: done in 1.0 min; 2 left, about 2.0 min more"
    assert lines[1].startswith("  sweep demo [1/3] still running after ")
    assert lines[1].endswith(": b (balanced-l0.013-s100 step 4)")


def test_progress_is_silent_when_off(tmp_path, capsys):
    from lic_core.workbench.sweep import SweepSpec, _Progress

    spec = SweepSpec(name="demo", notebook=tmp_path / "nb.ipynb", output=_sweep_dir(tmp_path))
    bar = _Progress(spec, total=3, active=False)
    bar.finished("a", "done")
    bar.heartbeat(["b"])
    assert capsys.readouterr().out == "" and bar.estimate(2) == pytest.approx(120.0)


def test_heartbeat_prints_while_the_block_runs(capsys):
    import time

    from lic_core.workbench.sweep import heartbeat

    with heartbeat("evaluation", every=0.05):
        time.sleep(0.3)
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(ln.startswith("  ... evaluation: still running after ") for ln in lines)


def test_limit_process_sets_torch_threads(monkeypatch):
    import torch

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    try:
        assert threads.limit_process() == 1 and torch.get_num_threads() == 1
        assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"  # for the processes it starts later
    finally:
        torch.set_num_threads(before)
