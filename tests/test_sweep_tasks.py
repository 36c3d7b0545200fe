"""The scheduler under sweeps and studies (lic_core.workbench.sweep.run_tasks): dependencies,
skip-if-done, failures reported by name without losing finished work, per-task threads, and the
submitit path on this machine."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from lic_core.errors import ConfigError
from lic_core.workbench.sweep import Lines, Outcome, Progress, Task, run_tasks


def mark(folder: str, name: str, needs: tuple[str, ...] = ()) -> str:
    """Write ``folder/name`` after checking that the tasks it needs wrote theirs."""
    missing = [d for d in needs if not (Path(folder) / d).is_file()]
    if missing:
        raise RuntimeError(f"{name} started before {missing}")
    (Path(folder) / name).write_text(str(os.getpid()))
    return name


def fail(message: str) -> None:
    raise ValueError(message)


def die() -> None:
    os._exit(3)  # a worker killed mid-task (out of memory, a signal)


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def chain(folder: Path) -> list[Task]:
    """a, b -> c (needs both), d (needs c), e independent."""
    f = str(folder)
    return [Task("a", mark, (f, "a")), Task("b", mark, (f, "b")),
            Task("c", mark, (f, "c", ("a", "b")), needs=("a", "b")),
            Task("d", mark, (f, "d", ("c",)), needs=("c",)), Task("e", mark, (f, "e"))]


class Record(Progress):
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def started(self, name: str) -> None:
        self.events.append(("started", name))

    def finished(self, name: str, outcome: Outcome) -> None:
        self.events.append((outcome.state, name))


def test_dependencies_run_in_order_on_two_workers(tmp_path):
    rec = Record()
    out = run_tasks(chain(tmp_path), jobs=2, progress=rec)
    assert {n: o.state for n, o in out.items()} == dict.fromkeys("abcde", "done")
    assert [o.value for o in out.values()] == list("abcde") and all(o.ran for o in out.values())
    started = [n for kind, n in rec.events if kind == "started"]
    assert started[:2] == ["a", "b"]  # list order, two at a time
    for task, needs in (("c", "ab"), ("d", "c")):
        ends = [rec.events.index(("done", n)) for n in needs]
        assert rec.events.index(("started", task)) > max(ends)
    assert len({(tmp_path / n).read_text() for n in "abcde"}) <= 2  # two worker processes


def test_tasks_done_before_are_skipped(tmp_path):
    for name in "abe":
        (tmp_path / name).write_text("before")
    rec = Record()
    out = run_tasks(chain(tmp_path), jobs=2, done=lambda t: (tmp_path / t.name).exists(), progress=rec)
    assert [(tmp_path / n).read_text() == "before" for n in "abcde"] == [True, True, False, False, True]
    assert not out["a"].ran and out["a"].state == "done" and out["c"].ran
    assert [n for kind, n in rec.events if kind == "started"] == ["c", "d"]


def test_a_failure_is_named_and_fails_only_what_needs_it(tmp_path, capsys):
    f = str(tmp_path)
    tasks = [Task("ok", mark, (f, "ok")), Task("bad", fail, ("boom",)),
             Task("after-bad", mark, (f, "after-bad"), needs=("bad",)),
             Task("after-ok", mark, (f, "after-ok", ("ok",)), needs=("ok",))]
    out = run_tasks(tasks, jobs=2, progress=Lines("t"))
    assert {n: o.state for n, o in out.items()} == {"ok": "done", "bad": "failed", "after-bad": "failed",
                                                    "after-ok": "done"}
    assert out["bad"].error == "ValueError: boom" and "fail" in out["bad"].detail
    assert out["after-bad"].error == "needs bad, which failed" and not out["after-bad"].ran
    assert not (tmp_path / "after-bad").exists() and (tmp_path / "after-ok").is_file()
    lines = capsys.readouterr().out
    assert "[t] bad: failed (ValueError: boom)" in lines and "[t] after-ok: done" in lines
    assert "[t] after-bad: failed (needs bad, which failed)" in lines


def test_a_dead_worker_fails_its_task_and_the_rest_run(tmp_path):
    out = run_tasks([Task("dies", die), Task("next", mark, (str(tmp_path), "next"))], jobs=1)
    assert out["dies"].state == "failed" and "BrokenProcessPool" in out["dies"].error
    assert out["next"].state == "done" and (tmp_path / "next").is_file()


def test_each_task_gets_its_threads():
    out = run_tasks([Task("one", torch_threads, threads=1), Task("two", torch_threads, threads=2)], jobs=1)
    assert (out["one"].value, out["two"].value) == (1, 2)


@pytest.mark.parametrize("tasks, words", [
    ([Task("a", mark), Task("a", mark)], "appears twice"),
    ([Task("a", mark, needs=("b",)), Task("b", mark)], "not earlier tasks"),
])
def test_bad_task_lists_are_config_errors(tasks, words):
    with pytest.raises(ConfigError, match=words):
        run_tasks(tasks)


def test_submitit_debug_runs_the_tasks_in_waves(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    out = run_tasks(chain(marks), jobs=2, executor="submitit-debug", done=lambda t: t.name == "e",
                    folder=tmp_path / "submitit")
    assert [o.state for o in out.values()] == ["done"] * 5 and not out["e"].ran
    assert [n for n in "abcde" if (marks / n).exists()] == list("abcd")


def test_submitit_local_reports_a_failure_by_name(tmp_path, monkeypatch):
    """(The debug executor stops in pdb on an exception, so failures are checked here.)"""
    # submitit's local jobs are fresh interpreters: they import this module by its folder
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent),
                                                      *filter(None, [os.environ.get("PYTHONPATH")])]))
    marks = str(tmp_path)
    tasks = [Task("ok", mark, (marks, "ok")), Task("bad", fail, ("boom",)),
             Task("after-bad", mark, (marks, "after-bad"), needs=("bad",)),
             Task("after-ok", mark, (marks, "after-ok", ("ok",)), needs=("ok",))]
    out = run_tasks(tasks, jobs=2, executor="submitit-local", folder=tmp_path / "submitit")
    assert {n: o.state for n, o in out.items()} == {"ok": "done", "bad": "failed", "after-bad": "failed",
                                                    "after-ok": "done"}
    assert "boom" in out["bad"].error and out["after-bad"].error == "needs bad, which failed"
    assert list((tmp_path / "submitit").glob("*_result.pkl"))


SLOW_TASK = """
import os, time
from pathlib import Path


def slow(folder):
    Path(folder, "pid").write_text(str(os.getpid()))
    time.sleep(300)
"""

DRIVER = """
import sys
from slow_task import slow
from lic_core.workbench.sweep import Task, run_tasks

if __name__ == "__main__":
    run_tasks([Task("slow", slow, (sys.argv[1],))], jobs=1)
"""


def test_sigterm_ends_the_scheduler_and_its_workers(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "slow_task.py").write_text(SLOW_TASK)
    (tmp_path / "driver.py").write_text(DRIVER)
    proc = subprocess.Popen([sys.executable, "driver.py", str(tmp_path)], cwd=tmp_path)
    try:
        for _ in range(600):  # the worker's start: up to a minute on a loaded machine
            if (tmp_path / "pid").is_file() and (tmp_path / "pid").read_text():
                break
            time.sleep(0.1)
        worker = int((tmp_path / "pid").read_text())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        for _ in range(100):
            try:
                os.kill(worker, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"worker {worker} still runs after its scheduler was terminated")
    finally:
        proc.kill()
