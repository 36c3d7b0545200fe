"""Sweeps (lic_core.workbench.sweep): expansion, naming, papermill execution, manifest, re-runs after a
failure and after a SIGKILL, the submitit path. Notebook: tests/data/sweep_job.ipynb (arithmetic
on ``a``/``b``, ``fail`` raises, ``wait_for`` waits for a file, metrics.json into ``run_dir``)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from lic_core.errors import ConfigError
from lic_core.paths import REPO
from lic_core.workbench.sweep import (_claim, _manifest, _prepare, _process_alive, job_name, load_sweep,
                            main, read_manifest, run_sweep, spec_from_dict, sweep_results)

NOTEBOOK = Path(__file__).parent / "data" / "sweep_job.ipynb"


def _spec(tmp_path: Path, **raw):
    base = {"name": "t", "notebook": str(NOTEBOOK), "output": str(tmp_path / "out")}
    return spec_from_dict(base | raw, source="test")


def _yaml(tmp_path: Path, **raw) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "notebook": str(NOTEBOOK),
                                    "output": str(tmp_path / "out")} | raw))
    return path


def _metrics(sweep_dir: Path, name: str) -> dict:
    return json.loads((sweep_dir / name / "run" / "metrics.json").read_text())


# --------------------------------------------------------------------------- spec and names


def test_expand_grid_exclude_include_in_order(tmp_path):
    spec = _spec(tmp_path, parameters={"b": 3}, grid={"a": [1, 2], "mode": ["s", "bal"]},
                 exclude=[{"a": 2, "mode": "bal"}], include=[{"a": 9, "fail": True}])
    params = [j.parameters for j in spec.expand()]
    assert params == [{"b": 3, "a": 1, "mode": "s"}, {"b": 3, "a": 1, "mode": "bal"},
                      {"b": 3, "a": 2, "mode": "s"}, {"b": 3, "a": 9, "fail": True}]
    names = [j.name for j in spec.expand()]
    assert names == [j.name for j in spec.expand()]  # deterministic
    assert names[0].startswith("a-1_mode-s-") and names[3].startswith("a-9_fail-true-")


def test_job_name_slug_and_hash():
    name = job_name({"lmbda": 0.013, "mode": "balanced", "steps": 300}, ["lmbda", "mode"])
    assert name.startswith("lmbda-0.013_mode-balanced-") and len(name.rsplit("-", 1)[1]) == 8
    other = job_name({"lmbda": 0.013, "mode": "balanced", "steps": 301}, ["lmbda", "mode"])
    assert other != name and other.rsplit("-", 1)[0] == name.rsplit("-", 1)[0]
    odd = job_name({"path": "a b/c", "w": [1, 2]}, ["path", "w"])
    assert "/" not in odd and " " not in odd
    assert job_name({"x": 1}, []).startswith("job-")


@pytest.mark.parametrize("raw, words", [
    ({"gird": {}}, "unknown key"),
    ({"notebook": "missing.ipynb"}, "does not exist"),
    ({"grid": {"a": 1}}, "grid.a must be a non-empty list"),
    ({"grid": {"a": []}}, "grid.a must be a non-empty list"),
    ({"parameters": {"run_dir": "x"}}, "run_dir"),
    ({"include": [{"a": 1}, {"a": 1}]}, "repeats job"),
    ({"grid": {"a": [1]}, "exclude": [{"a": 1}]}, "no jobs"),
    ({"timeout": -1}, "'timeout' must be a positive number"),
    ({"name": "a/b"}, "name"),
])
def test_bad_spec_names_the_key(tmp_path, raw, words):
    with pytest.raises(ConfigError, match=words):
        _spec(tmp_path, **({"grid": {"a": [1]}} | raw))


def test_load_sweep_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_sweep(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml: invalid YAML at line 1, column"):
        load_sweep(bad)


def test_repo_sweep_files_load():
    """Every YAML shipped in sweeps/ parses and expands (relative to the repository root)."""
    files = sorted((REPO / "sweeps").glob("*.yaml"))
    assert files, "sweeps/ has no YAML"
    for path in files:
        assert load_sweep(path, base=REPO).expand(), path


# --------------------------------------------------------------------------- manifest


def test_manifest_updates_under_lock_are_not_lost(tmp_path):
    spec = _spec(tmp_path, grid={"a": [1]})
    _prepare(spec, spec.expand())
    name = spec.expand()[0].name

    def bump():
        for _ in range(25):
            with _manifest(spec.output) as data:
                data["jobs"][name]["count"] = data["jobs"][name].get("count", 0) + 1

    threads = [threading.Thread(target=bump) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert read_manifest(spec.output)["jobs"][name]["count"] == 100
    assert not list(spec.output.glob(".*.tmp"))


def test_claim_skips_done_and_live_jobs_reruns_dead_ones(tmp_path):
    spec = _spec(tmp_path, grid={"a": [1, 2, 3, 4]})
    jobs = spec.expand()
    _prepare(spec, jobs)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    host = socket.gethostname()
    try:
        with _manifest(spec.output) as data:
            recs = data["jobs"]
            recs[jobs[0].name].update(state="done")
            recs[jobs[1].name].update(state="running", host=host, pid=sleeper.pid)
            recs[jobs[2].name].update(state="running", host=host, pid=int(dead))
            recs[jobs[3].name].update(state="failed", error="x")
        assert _claim(spec.output, jobs) == [jobs[2].name, jobs[3].name]
        recs = read_manifest(spec.output)["jobs"]
        assert [recs[j.name]["state"] for j in jobs] == ["done", "running", "pending", "pending"]
    finally:
        sleeper.kill()
        sleeper.wait()


def test_notebook_change_in_same_folder_is_refused(tmp_path):
    spec = _spec(tmp_path, grid={"a": [1]})
    _prepare(spec, spec.expand())
    other = tmp_path / "other.ipynb"
    other.write_bytes(NOTEBOOK.read_bytes())
    moved = spec_from_dict({"name": "t", "notebook": str(other), "output": str(spec.output),
                            "grid": {"a": [1]}})
    with pytest.raises(ConfigError, match="holds a sweep of"):
        _prepare(moved, moved.expand())


def test_dry_run_lists_jobs_and_writes_nothing(tmp_path, capsys):
    path = _yaml(tmp_path, grid={"a": [1, 2]})
    assert main([str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("pending") == 2 and "dry run" in out
    assert not (tmp_path / "out").exists()
    assert main([str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


# --------------------------------------------------------------------------- execution


def test_local_sweep_runs_records_isolates_failure_and_reruns_only_missing(tmp_path, capsys):
    path = _yaml(tmp_path, parameters={"b": 3}, grid={"a": [1, 2]},
                 include=[{"a": 5, "fail": True}], jobs=2)
    assert main([str(path)]) == 1  # one job failed on purpose
    out = capsys.readouterr().out
    assert "2 done, 1 failed" in out and "failing on purpose with a=5" in out
    sweep_dir = tmp_path / "out"
    recs = read_manifest(sweep_dir)["jobs"]
    ok, bad = [n for n in recs if "fail" not in n], next(n for n in recs if "fail" in n)
    for name in ok:
        rec = recs[name]
        assert rec["state"] == "done" and rec["attempts"] == 1 and rec["error"] is None
        assert rec["started"] <= rec["finished"] and rec["metrics"] is True
        params = json.loads((sweep_dir / name / "parameters.json").read_text())
        assert params["run_dir"] == str(sweep_dir / name / "run")
        assert _metrics(sweep_dir, name)["sum"] == params["a"] + 3
        executed = json.loads((sweep_dir / name / "notebook.ipynb").read_text())
        assert any("injected-parameters" in c["metadata"].get("tags", []) for c in executed["cells"])
        assert "sum" in (sweep_dir / name / "log.txt").read_text()
    assert recs[bad]["state"] == "failed" and "ValueError" in recs[bad]["error"]
    assert "failing on purpose" in (sweep_dir / bad / "error.txt").read_text()
    executed = json.loads((sweep_dir / bad / "notebook.ipynb").read_text())
    assert any(o.get("ename") == "ValueError" for c in executed["cells"] for o in c.get("outputs", []))

    table = sweep_results(sweep_dir)
    assert sorted(table["a"]) == [1, 2] and list(table["sum"] - table["a"]) == [3, 3]
    assert "nested.diff" in table.columns

    tokens = {n: _metrics(sweep_dir, n)["token"] for n in ok}
    again = run_sweep(load_sweep(path), progress=False)  # re-run: only the failed job runs
    assert again[bad]["attempts"] == 2 and again[bad]["state"] == "failed"
    assert all(again[n] == recs[n] for n in ok)
    assert tokens == {n: _metrics(sweep_dir, n)["token"] for n in ok}


def _wait(predicate, what: str, limit: float = 150.0) -> None:
    end = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_killed_sweep_rerun_finishes_only_missing_jobs(tmp_path):
    release = tmp_path / "release"
    path = _yaml(tmp_path, grid={"a": [1]},
                 include=[{"a": 2, "wait_for": str(release)}, {"a": 3}], jobs=1)
    names = [j.name for j in load_sweep(path).expand()]
    sweep_dir = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "lic_core", "sweep", str(path)], cwd=REPO,
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)

    def waiting_job_runs() -> bool:
        assert proc.poll() is None, "the sweep ended before it could be killed"
        try:
            recs = read_manifest(sweep_dir)["jobs"]
        except ConfigError:
            return False
        # the manifest is created empty, then filled: a job may not be recorded yet
        states = [recs.get(n, {}).get("state") for n in names[:2]]
        return states == ["done", "running"] and (sweep_dir / names[1] / "notebook.ipynb").exists()

    try:
        _wait(waiting_job_runs, "the second job to run")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole sweep dies, as on a node failure
        proc.wait()
    before = read_manifest(sweep_dir)["jobs"]
    assert [before[n]["state"] for n in names] == ["done", "running", "pending"]
    # SIGKILL is delivered asynchronously: the orphaned worker may still be exiting, and a rerun
    # rightly leaves a job alone while its process lives (CI saw exactly that under load)
    _wait(lambda: not _process_alive(before[names[1]]["pid"]), "the killed worker to exit", 30)
    token = _metrics(sweep_dir, names[0])["token"]

    release.touch()
    after = run_sweep(load_sweep(path), progress=False)
    assert [after[n]["state"] for n in names] == ["done"] * 3
    assert after[names[0]] == before[names[0]]  # untouched: not re-run
    assert _metrics(sweep_dir, names[0])["token"] == token
    assert after[names[1]]["attempts"] == 2 and after[names[2]]["attempts"] == 1
    assert sorted(sweep_results(sweep_dir)["sum"]) == [3, 4, 5]


def test_submitit_local_executor(tmp_path):
    path = _yaml(tmp_path, parameters={"b": 10}, grid={"a": [1, 2]})
    recs = run_sweep(load_sweep(path), executor="submitit-local", jobs=2, progress=False)
    assert [r["state"] for r in recs.values()] == ["done", "done"]
    assert sorted(sweep_results(tmp_path / "out")["sum"]) == [11, 12]
    assert list((tmp_path / "out" / "submitit").glob("*_result.pkl"))


def test_threads_reach_the_job_kernel_and_leave_this_process_alone(tmp_path):
    before = os.environ.get("OMP_NUM_THREADS")
    path = _yaml(tmp_path, grid={"a": [1, 2]}, jobs=2, threads=1)
    recs = run_sweep(load_sweep(path), progress=False)
    assert [r["state"] for r in recs.values()] == ["done", "done"]
    assert [_metrics(tmp_path / "out", n)["omp_threads"] for n in recs] == ["1", "1"]
    assert os.environ.get("OMP_NUM_THREADS") == before


def test_job_past_timeout_fails_with_its_reason(tmp_path):
    path = _yaml(tmp_path, grid={"a": [1]}, parameters={"wait_for": str(tmp_path / "never")},
                 timeout=4)
    rec = next(iter(run_sweep(load_sweep(path), executor="submitit-local",
                              progress=False).values()))
    assert rec["state"] == "failed" and "timeout of 4 s" in rec["error"]


def test_bad_slurm_parameters_are_a_config_error(tmp_path):
    path = _yaml(tmp_path, grid={"a": [1]}, slurm={"bogus": 1})
    with pytest.raises(ConfigError, match="bad 'slurm' parameters"):
        run_sweep(load_sweep(path), executor="submitit-debug", progress=False)
    assert [r["state"] for r in read_manifest(tmp_path / "out")["jobs"].values()] == ["pending"]


def test_sweep_grid_refuses_to_average_over_a_parameter_that_varies(tmp_path):
    """A (γ, w_lr) cell of jobs that differ in a third parameter would be their mean: an error
    naming it; ``where`` picks one value."""
    from lic_core.errors import LicError
    from lic_core.workbench import workbook

    jobs = {}
    for i, (g, sched, loss) in enumerate([(0.001, "constant", 1.0), (0.001, "cosine", 3.0), (0.01, "constant", 2.0)]):
        jobs[f"j{i}"] = {"state": "done", "parameters": {"gamma": g, "w_lr": 0.025, "gamma_schedule": sched}}
        (tmp_path / f"j{i}" / "run").mkdir(parents=True)
        (tmp_path / f"j{i}" / "run" / "metrics.json").write_text(json.dumps({"test_loss": loss}))
    (tmp_path / "manifest.json").write_text(json.dumps({"sweep": "s", "notebook": "n", "jobs": jobs}))
    with pytest.raises(LicError, match=r"^[^\n]*parameter 'gamma_schedule' varies"):
        workbook.sweep_grid(tmp_path, "gamma", "w_lr", "test_loss")
    grid = workbook.sweep_grid(tmp_path, "gamma", "w_lr", "test_loss", where={"gamma_schedule": "constant"})
    assert grid.loc[0.001, 0.025] == 1.0 and grid.loc[0.01, 0.025] == 2.0
    assert workbook.best_setting(grid) == (0.001, 0.025, 1.0)


def test_a_parameter_the_notebook_lacks_is_refused_before_any_job(tmp_path):
    """papermill only warns about an unknown name and runs the default: the sweep refuses it, also in
    a dry run, and writes nothing."""
    spec = _spec(tmp_path, grid={"a": [1], "typo_param": [3]})
    for dry in (True, False):
        with pytest.raises(ConfigError, match=r"grid.typo_param is not a parameter of sweep_job.ipynb \(it has: a, b"):
            run_sweep(spec, dry_run=dry, progress=False)
    assert not (tmp_path / "out").exists()
