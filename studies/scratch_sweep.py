"""Does Balanced R-D lower HPCM's BD-rate? Protocol, evaluation and statistics.

The experiment is two papermill sweeps and an analysis:

1. ``train``: a sweep YAML over notebook 01 (``studies/scratch_600/cpu.yaml``, ``..._gpu.yaml``);
   every job trains ``standard`` (Adam), ``balanced`` (Solution 1, FAMO + Cautious Adam) and
   ``hierarchical`` (K = 5) at one (λ, seed) with identical data order, steps, batch, patch and
   lr schedule.
2. ``finetune``: Solution 2 (our derivation of the paper's equality-constrained QP, BALANCED.md).
   Its sweep over notebook 04 is *built from the first sweep's results*: for every finished
   train job, ``init`` = that job's ``standard`` checkpoint (found through the run's typed config,
   :func:`lic_core.training.run.load_run`, see :func:`collect_runs`); model, batch, patch and data
   are the train sweep's; steps = ``fraction`` x train steps; modes ``qp``, ``balanced``
   (Solution 1 from the same warm start: separates "FAMO from scratch" from "FAMO at all") and,
   as the control, ``standard`` Adam for the same steps. Output: ``<train output>-finetune``.
3. ``evaluate``: every final checkpoint on all images of the test set with real bitstreams
   (:func:`lic_core.analysis.evaluation.evaluate`), one R-D curve per (stage, mode, seed), into
   ``<train output>-eval/<stage>/``.
4. ``report``: BD-rate of each mode against ``standard`` per seed (pchip and cubic), mean and 95 %
   Student-t interval over seeds, wall time per step from ``metrics.jsonl``, per-scale rates,
   figures, and the experiment's block of ``RESULTS.md``.

``python -m studies.scratch_sweep {train,finetune,evaluate,report,all} --sweep FILE.yaml``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from lic_core.atomic import write_file
from lic_core.config import parse_yaml
from lic_core.errors import ConfigError, LicError, command
from lic_core.paths import REPO
from lic_core.analysis.stats import Interval, mean_ci
from lic_core.analysis.tables import write_results
from lic_core.training.objectives import MODES
from lic_core.training.run import find_runs, lmbda_key
from lic_core.workbench.sweep import (Outcome, Progress, SweepSpec, Task, load_sweep, read_manifest, run_sweep, run_tasks,
                                      spec_from_dict, summarize, sweep_results)

# stage 1 trains every objective but Solution 2, which the paper uses for fine-tuning (stage 2)
TRAIN_MODES = tuple(m for m in MODES if m != "qp")
ANCHOR = "standard"
METHODS = ("pchip", "cubic")
EXPECTED = (-5.0, -2.0)  # the project plan's expectation: a 2-5 % BD-rate gain
CARRIED = ("model", "batch", "patch", "train_dir", "test_dir")  # train -> fine-tune parameters
SCALE_KEYS = ("bpp_z", "bpp_s1", "bpp_s2", "bpp_s3", "bpp_header")
MACHINE_FILE = "machine.json"


@dataclass(frozen=True)
class Finetune:
    """Stage 2 settings (Solution 2), relative to the train sweep so one YAML sets both scales."""

    # qp = Solution 2; balanced = Solution 1 from the same warm start; standard = the Adam control
    modes: tuple[str, ...] = ("qp", "balanced", "standard")
    fraction: float = 0.25  # fine-tune steps = fraction x train steps
    lr: float = 3e-5

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 10 or self.lr <= 0 or not self.modes:
            raise ConfigError(f"fine-tune settings {self}: fraction in (0, 10], lr > 0, modes non-empty")
        unknown = [m for m in self.modes if m not in MODES]
        if unknown:
            raise ConfigError(f"fine-tune modes {unknown}: not training modes ({', '.join(MODES)})")


# ------------------------------------------------------------------------------------ protocol


def load_protocol(path: str | Path, params: Mapping[str, Any] | None = None,
                  grid: Mapping[str, Sequence[Any]] | None = None, output: str | Path = "") -> SweepSpec:
    """The train sweep of ``path`` (relative paths in it resolve against the project root) with
    fixed parameters replaced by ``params`` and grid axes by ``grid`` (e.g. a smoke run:
    ``params={"steps": 6}, grid={"seed": [0, 1]}``); only keys the YAML already has can change."""
    spec = load_sweep(path, base=REPO)
    unknown = [k for k in (params or {}) if k not in spec.parameters]
    unknown += [k for k in (grid or {}) if k not in spec.grid]
    if unknown:
        raise ConfigError(f"{path}: cannot override {unknown}: parameters are {sorted(spec.parameters)}, "
                          f"grid axes {sorted(spec.grid)}")
    for key, values in (grid or {}).items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ConfigError(f"{path}: grid.{key} override must be a non-empty list, got {values!r}")
    out = Path(output).resolve() if output else spec.output
    return dataclasses.replace(spec, output=out, parameters={**spec.parameters, **(params or {})},
                               grid={**spec.grid, **{k: list(v) for k, v in (grid or {}).items()}})


def stage_dirs(spec: SweepSpec) -> dict[str, Path]:
    """Where each stage writes: the train sweep, the fine-tune sweep, the evaluations."""
    out = spec.output
    return {"train": out, "finetune": out.with_name(f"{out.name}-finetune"),
            "eval": out.with_name(f"{out.name}-eval")}


def machine_info() -> dict[str, Any]:
    """What ran a stage (written beside its manifest; the report names the device from it)."""
    import torch

    cuda = torch.cuda.is_available()
    return {"host": platform.node(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "device": torch.cuda.get_device_name(0) if cuda else "cpu",
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def launch(spec: SweepSpec, executor: str = "local", jobs: int | None = None,
           progress: bool = True) -> dict[str, dict[str, Any]]:
    """Run the jobs of ``spec`` not yet done (a re-run resumes); raises when some did not finish."""
    spec.output.mkdir(parents=True, exist_ok=True)
    if any(r["state"] != "done" for r in run_sweep(spec, dry_run=True).values()):
        write_file(spec.output / MACHINE_FILE, json.dumps(machine_info(), indent=1) + "\n")
    records = run_sweep(spec, executor=executor, jobs=jobs, progress=progress)
    if any(r["state"] != "done" for r in records.values()):
        raise LicError(f"sweep {spec.name} is not complete:\n{summarize(records, spec.output)}")
    return records


# ------------------------------------------------------------------------------------ runs


def collect_runs(sweep_dir: str | Path, jobs: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per training run of the done jobs of a sweep folder (``jobs``: only those):
    ``job, stage (train | finetune), mode, lmbda, seed, steps, run_dir, checkpoint``.

    Read from each run's typed config (:func:`lic_core.training.run.find_runs`, runs that have
    logged), so nothing depends on folder names; a checkpoint is the newest ``step_*.pt``, or where
    the final one was when the weights are gone (a committed run keeps its config, metrics and
    evaluations). Two runs of one (stage, mode, λ, seed) are an error.
    """
    sweep_dir = Path(sweep_dir)
    done = sweep_results(sweep_dir)
    names = [j for j in done.index if jobs is None or j in set(jobs)]
    rows = []
    for job in names:
        for run in find_runs(sweep_dir / job / "run", logged=True):
            # weights are not committed: a done job's run without them is named by its final checkpoint
            rows.append({"job": job, "stage": run.stage, "mode": run.mode, "lmbda": run.lmbda, "seed": run.seed,
                         "steps": run.steps, "run_dir": run.run_dir, "checkpoint": run.latest or run.final})
    cols = ["job", "stage", "mode", "lmbda", "seed", "steps", "run_dir", "checkpoint"]
    runs = pd.DataFrame(rows, columns=cols)
    twice = runs[runs.duplicated(["stage", "mode", "lmbda", "seed"], keep=False)]
    if not twice.empty:
        raise LicError(f"{sweep_dir}: several runs of the same (stage, mode, λ, seed): "
                       f"{sorted(map(str, twice['run_dir']))}")
    return runs.sort_values(["stage", "mode", "seed", "lmbda"], ignore_index=True)


def experiment_runs(spec: SweepSpec, settings: Finetune = Finetune()) -> pd.DataFrame:
    """Runs of both stages that belong to ``spec`` (jobs of older settings left in a manifest are
    ignored) and have a checkpoint."""
    dirs = stage_dirs(spec)
    frames = [collect_runs(dirs["train"], [j.name for j in spec.expand()])]
    frames[0] = frames[0][frames[0]["stage"] == "train"]
    if (dirs["finetune"] / "manifest.json").is_file():
        try:
            expected = [_job_key(j.parameters, spec) for j in finetune_spec(spec, settings, partial=True).expand()]
        except LicError:
            expected = []
        done = sweep_results(dirs["finetune"])
        ft_jobs = [name for name, params in read_manifest(dirs["finetune"])["jobs"].items()
                   if name in done.index and _job_key(params["parameters"], spec) in expected]
        ft = collect_runs(dirs["finetune"], ft_jobs)
        frames.append(ft[ft["stage"] == "finetune"])
    runs = pd.concat(frames, ignore_index=True)
    return runs[runs["checkpoint"].notna()].reset_index(drop=True)


def _job_key(params: Mapping[str, Any], spec: SweepSpec) -> str:
    """A fine-tune job's identity: its parameters, with ``init`` taken from the train sweep's folder
    name on (the folder the train sweep ran in may have moved since; its jobs did not change)."""
    init = str(params.get("init", ""))
    tail = init.split(f"{spec.output.name}/", 1)[-1]
    return json.dumps({**params, "init": tail}, sort_keys=True)


def _portable(path: Path) -> str:
    """``path`` relative to the project root when inside it (notebooks run there), else absolute."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _sweep_of(like: SweepSpec, name: str, notebook: Path, output: Path, parameters: dict[str, Any],
              jobs: Sequence[dict[str, Any]]) -> SweepSpec:
    """A sweep whose jobs are an explicit list (first job as a one-point grid, the rest included),
    run like ``like`` (kernel, timeout, jobs at a time, Slurm parameters)."""
    first, rest = dict(jobs[0]), [dict(j) for j in jobs[1:]]
    return spec_from_dict({"name": name, "notebook": str(notebook), "output": str(output),
                           "kernel": like.kernel, "timeout": like.timeout, "jobs": like.jobs,
                           "threads": like.threads, "slurm": like.slurm,
                           "parameters": parameters, "grid": {k: [v] for k, v in first.items()}, "include": rest},
                          base=REPO, source=f"sweep {name}")


def finetune_spec(spec: SweepSpec, settings: Finetune = Finetune(), partial: bool = False) -> SweepSpec:
    """The Solution 2 sweep over notebook 04: one job per (λ, seed) whose train job is done, with
    ``init`` = that job's standard checkpoint. Missing train jobs are an error unless ``partial``."""
    runs = collect_runs(spec.output, [j.name for j in spec.expand()])
    std = runs[(runs["stage"] == "train") & (runs["mode"] == ANCHOR) & runs["checkpoint"].notna()]
    have = {(lmbda_key(lam), int(seed)) for lam, seed in zip(std["lmbda"], std["seed"])}
    expected = {(float(j.parameters["lmbda"]), int(j.parameters["seed"])) for j in spec.expand()}
    missing = sorted((lam, seed) for lam, seed in expected if (lmbda_key(lam), seed) not in have)
    if std.empty or (missing and not partial):
        raise LicError(f"{spec.output}: no finished {ANCHOR} run for (λ, seed) {missing}; run the train "
                       "stage first (re-running it resumes), or pass partial=True / --partial")
    base = spec.expand()[0].parameters
    params = {k: base[k] for k in CARRIED if k in base}
    params |= {"steps": max(1, round(settings.fraction * int(base["steps"]))), "lr": settings.lr,
               "modes": list(settings.modes)}
    jobs = [{"lmbda": float(r.lmbda), "seed": int(r.seed), "init": _portable(r.checkpoint)}
            for r in std.itertuples()]
    out = stage_dirs(spec)["finetune"]
    return _sweep_of(spec, f"{spec.name}-finetune", REPO / "notebooks" / "04_finetuning.ipynb", out, params, jobs)


def train(spec: SweepSpec, executor: str = "local", jobs: int | None = None, progress: bool = True) -> dict:
    """Stage 1: the train sweep (resumable)."""
    return launch(spec, executor, jobs, progress)


def finetune(spec: SweepSpec, settings: Finetune = Finetune(), executor: str = "local",
             jobs: int | None = None, partial: bool = False, progress: bool = True) -> dict:
    """Stage 2: the Solution 2 sweep built from stage 1's checkpoints (resumable)."""
    return launch(finetune_spec(spec, settings, partial), executor, jobs, progress)


# ------------------------------------------------------------------------------------ evaluation


def label(stage: str, mode: str) -> str:
    """``balanced`` for a train-stage run, ``ft-qp`` for a fine-tune one."""
    return mode if stage == "train" else f"ft-{mode}"


def curve_name(stage: str, mode: str, seed: int) -> str:
    return f"{label(stage, mode)}-s{seed}"


def _evaluate_curve(ckpts: list[str], dataset: str, out: str, limit: int, crop: int, name: str,
                    progress: bool, threads: int) -> dict:
    """One curve (a worker process's unit of work when curves are evaluated side by side)."""
    from lic_core.analysis.evaluation import evaluate

    if threads > 0:
        import torch

        torch.set_num_threads(threads)
    return evaluate(ckpts, dataset, out, limit=limit, crop=crop, name=name, progress=progress)


def evaluate_runs(runs: pd.DataFrame, out: str | Path, dataset: str | Path = "kodak", limit: int = 0,
                  crop: int = 0, progress: bool = True, jobs: int = 1,
                  threads: int = 0) -> dict[tuple[str, str, int], dict]:
    """Real-bitstream evaluation (:func:`lic_core.analysis.evaluation.evaluate`) of every run's checkpoint,
    one curve per (stage, mode, seed) over its λ, written to ``out/<stage>/<curve>.json``;
    per-image results resume where an interrupted evaluation stopped. ``jobs`` > 1 evaluates that
    many curves side by side in worker processes (:func:`lic_core.workbench.sweep.run_tasks`)
    with ``threads`` torch threads each."""
    work = {}
    for (stage, mode, seed), g in runs.groupby(["stage", "mode", "seed"], sort=True):
        ckpts = [str(c) for c in g.sort_values("lmbda")["checkpoint"]]
        work[(stage, mode, int(seed))] = (ckpts, str(dataset), str(Path(out) / stage), limit, crop,
                                          curve_name(stage, mode, seed))
    if jobs <= 1:
        return {k: _evaluate_curve(*w, progress, threads) for k, w in work.items()}
    keys = {f"{k[0]}/{w[-1]}": k for k, w in work.items()}  # task name -> curve key
    tasks = [Task(name, _evaluate_curve, (*work[k], False, 0), threads=threads) for name, k in keys.items()]
    outcomes = run_tasks(tasks, jobs, progress=_Bar(len(tasks), progress))
    failed = [f"{name} ({o.error})" for name, o in outcomes.items() if o.state != "done"]
    if failed:
        raise LicError(f"evaluation of {', '.join(failed)} failed")
    return {k: outcomes[name].value for name, k in keys.items()}


class _Bar(Progress):
    """A tqdm bar over the curves the scheduler evaluates."""

    def __init__(self, total: int, active: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, disable=not active, desc="evaluate", unit="curve")

    def finished(self, name: str, outcome: Outcome) -> None:
        self.bar.update()
        if self.bar.n == self.bar.total:
            self.bar.close()


def load_curves(runs: pd.DataFrame, out: str | Path) -> dict[tuple[str, str, int], dict]:
    """The curves :func:`evaluate_runs` wrote, checked against the runs they must contain."""
    curves = {}
    for (stage, mode, seed), g in runs.groupby(["stage", "mode", "seed"], sort=True):
        path = Path(out) / stage / f"{curve_name(stage, mode, seed)}.json"
        if not path.is_file():
            raise LicError(f"{path} does not exist: run the evaluate stage first")
        curve = json.loads(path.read_text())
        have, want = set(_names(curve["results"].get("checkpoint", []))), set(_names(g["checkpoint"]))
        if have != want:
            raise LicError(f"{path} holds checkpoints {sorted(have - want)} instead of {sorted(want - have)}: "
                           "evaluate again")
        curves[(stage, mode, int(seed))] = curve
    return curves


def _names(ckpts: Sequence[Any]) -> list[str]:
    """Checkpoints as evaluations name them (``<run>-<stem>``): the same on every machine, unlike
    the absolute paths a curve file records."""
    from lic_core.analysis.evaluation import model_names

    return model_names([str(c) for c in ckpts])


def points(curves: Mapping[tuple[str, str, int], dict], runs: pd.DataFrame) -> pd.DataFrame:
    """Long table of R-D points: ``stage, mode, label, seed, lmbda`` and the curve's results."""
    lmbda_of = dict(zip(_names(runs["checkpoint"]), runs["lmbda"]))
    rows = []
    for (stage, mode, seed), curve in curves.items():
        res = curve["results"]
        for i, ck in enumerate(_names(res["checkpoint"])):
            rows.append({"stage": stage, "mode": mode, "label": label(stage, mode), "seed": seed,
                         "lmbda": lmbda_of.get(ck, math.nan),
                         **{k: v[i] for k, v in res.items() if isinstance(v, list) and k != "checkpoint"}})
    df = pd.DataFrame(rows)
    order = {m: i for i, m in enumerate(TRAIN_MODES)}
    key = df["stage"].ne("train").astype(int) * 100 + df["mode"].map(order).fillna(50)
    return df.assign(_k=key).sort_values(["_k", "mode", "seed", "lmbda"]).drop(columns="_k").reset_index(drop=True)


def evaluate_experiment(spec: SweepSpec, dataset: str | Path = "kodak", limit: int = 0, crop: int = 0,
                        settings: Finetune = Finetune(), progress: bool = True,
                        jobs: int | None = None) -> dict:
    """Stage 3: evaluate every final checkpoint of both stages (what exists), ``jobs`` curves
    (default: the sweep's) at a time with the sweep's ``threads``."""
    runs = experiment_runs(spec, settings)
    if runs.empty:
        raise LicError(f"{spec.output}: no finished runs to evaluate; run the train stage first")
    return evaluate_runs(runs, stage_dirs(spec)["eval"], dataset, limit, crop, progress,
                         jobs or spec.jobs, spec.threads)


# ------------------------------------------------------------------------------------ statistics


def bd_per_seed(curves: Mapping[tuple[str, str, int], dict], anchor: tuple[str, str],
                tests: Sequence[tuple[str, str]], methods: Sequence[str] = METHODS,
                metric: str = "psnr-rgb") -> pd.DataFrame:
    """BD-rate (%) and BD-quality of each ``(stage, mode)`` in ``tests`` against ``anchor`` within
    each seed: one row per (test, seed, method); an undefined value is NaN with its reason."""
    from lic_core.analysis.bdrate import bd_table

    rows = []
    for seed in sorted({s for _, _, s in curves}):
        a = curves.get((*anchor, seed))
        for t in tests:
            c = curves.get((*t, seed))
            row = {"test": label(*t), "anchor": label(*anchor), "seed": seed}
            if a is None or c is None:
                why = f"no {'anchor' if a is None else 'test'} curve for seed {seed}"
                rows += [{**row, "method": m, "bd_rate": math.nan, "bd_quality": math.nan, "note": why}
                         for m in methods]
                continue
            r = bd_table(a, [c], metric=metric, methods=methods).iloc[0]
            quality = {m: next(k for k in r.index if k.startswith("BD-") and not k.startswith("BD-rate")
                               and k.endswith(f" {m}")) for m in methods}
            rows += [{**row, "method": m, "bd_rate": float(r[f"BD-rate {m} (%)"]),
                      "bd_quality": float(r[quality[m]]), "note": r["warnings"]} for m in methods]
    return pd.DataFrame(rows, columns=["test", "anchor", "seed", "method", "bd_rate", "bd_quality", "note"])


def summarize_bd(per_seed: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Per (test, anchor, method): mean, std, n, CI bounds and every seed's value (``seed <k>``)."""
    rows = []
    for (test, anchor, method), g in per_seed.groupby(["test", "anchor", "method"], sort=False):
        ci = mean_ci(g["bd_rate"], level)
        rows.append({"test": test, "anchor": anchor, "method": method, **dataclasses.asdict(ci),
                     **{f"seed {s}": v for s, v in zip(g["seed"], g["bd_rate"])}})
    return pd.DataFrame(rows)


def verdict(ci: Interval, anchor: str = ANCHOR, expected: tuple[float, float] = EXPECTED) -> str:
    """Plain words for one BD-rate interval against ``anchor``, and whether the expected range
    (BD-rate %, default the plan's 2-5 % gain) is compatible with it."""
    lo_e, hi_e = expected
    if ci.n == 0:
        return "undefined: no seed gave a BD-rate (see the notes)"
    if ci.n == 1:
        return f"{ci.mean:+.2f}% from a single seed: no interval, no conclusion"
    where = f"{ci.mean:+.2f}% (95% CI [{ci.low:+.2f}, {ci.high:+.2f}], {ci.n} seeds)"
    if ci.high < 0:
        sig = f"fewer bits than {anchor}, significant at 95%"
    elif ci.low > 0:
        sig = f"more bits than {anchor}, significant at 95%"
    else:
        sig = f"no significant difference from {anchor} (the interval contains 0)"
    if ci.low > hi_e:
        exp = f"a gain of {-hi_e:g}% or more is excluded"
    elif ci.high < lo_e:
        exp = f"the gain exceeds the expected {-hi_e:g}-{-lo_e:g}%"
    else:
        exp = f"the expected {-hi_e:g}-{-lo_e:g}% gain is compatible with the interval"
    return f"{where}: {sig}; {exp}"


# ------------------------------------------------------------------------------------ timings, rates


def step_times(runs: pd.DataFrame) -> pd.DataFrame:
    """Wall time per training step of each (stage, mode): the median over runs of each run's
    median ``step_time`` (``metrics.jsonl``), and its ratio to ``standard`` of the same stage."""
    from lic_core.training.logging import load_history

    per_run = []
    for r in runs.itertuples():
        t = [h["step_time"] for h in load_history(r.run_dir, "train") if "step_time" in h]
        if t:
            per_run.append({"stage": r.stage, "label": label(r.stage, r.mode), "median": float(np.median(t))})
    df = pd.DataFrame(per_run, columns=["stage", "label", "median"])
    out = df.groupby(["stage", "label"], sort=False)["median"].agg(["median", "count"]).reset_index()
    base = {s: out[(out["stage"] == s) & (out["label"] == label(s, ANCHOR))]["median"] for s in out["stage"]}
    out["vs standard"] = [m / base[s].iloc[0] if len(base[s]) else math.nan
                          for s, m in zip(out["stage"], out["median"])]
    return out.rename(columns={"label": "mode", "median": "step time (s)", "count": "runs"}) \
              .set_index("mode").drop(columns="stage")


def distortion_share(runs: pd.DataFrame, tail: float = 0.1) -> pd.DataFrame:
    """Where the weighted modes put the distortion: its task weight ``z_D`` and its gradient
    coefficient ``a_D`` (the ``a`` sum to 1; the standard loss D + R is ``a_D`` = 0.5), averaged
    over the last ``tail`` of each run's logged train steps, then over seeds, per (mode, λ)."""
    from lic_core.training.logging import load_history

    rows = []
    for r in runs.itertuples():
        hist = [h for h in load_history(r.run_dir, "train") if "a_D" in h]
        if hist:
            last = hist[-max(1, int(len(hist) * tail)):]
            rows.append({"mode": label(r.stage, r.mode), "λ": r.lmbda,
                         "z_D": float(np.mean([h["z_D"] for h in last])),
                         "a_D": float(np.mean([h["a_D"] for h in last]))})
    if not rows:
        return pd.DataFrame(columns=["z_D", "a_D", "seeds"])
    df = pd.DataFrame(rows)
    out = df.groupby(["mode", "λ"], sort=False)[["z_D", "a_D"]].mean()
    out["seeds"] = df.groupby(["mode", "λ"], sort=False).size()
    return out


def mean_points(pts: pd.DataFrame) -> pd.DataFrame:
    """R-D points and per-scale actual rates averaged over seeds, per (label, λ)."""
    keys = [k for k in ("bpp", "psnr-rgb", "ms-ssim-rgb", *SCALE_KEYS, "bpp_est") if k in pts.columns]
    df = pts.groupby(["label", "lmbda"], sort=False)[keys].mean()
    df["seeds"] = pts.groupby(["label", "lmbda"], sort=False)["seed"].nunique()
    return df


def mean_curves(pts: pd.DataFrame, stage: str) -> list[dict]:
    """CompressAI-style curves (mean over seeds at each λ) of one stage, for :func:`viz.rd_curves`."""
    out = []
    for lab, g in mean_points(pts[pts["stage"] == stage]).groupby(level="label", sort=False):
        g = g.sort_values("bpp")
        out.append({"name": lab, "results": {k: g[k].tolist() for k in ("bpp", "psnr-rgb", "ms-ssim-rgb")
                                               if k in g.columns}})
    return out


# ------------------------------------------------------------------------------------ figures


def _histories(runs: pd.DataFrame) -> pd.DataFrame:
    from lic_core.training.logging import load_history

    frames = [pd.DataFrame(load_history(r.run_dir, "train")).assign(run=label(r.stage, r.mode))
              for r in runs.itertuples()]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def write_figures(runs: pd.DataFrame, pts: pd.DataFrame, summary: pd.DataFrame, folder: str | Path,
                  method: str = "pchip") -> dict[str, Path]:
    """R-D curves per stage, BD-rate bars with intervals, task weights and per-scale rates over
    training (the middle λ, the first seed); returns ``{figure: png path}``."""
    from lic_core.analysis import viz

    made: dict[str, Path] = {}

    def save(fig, name: str) -> None:
        made[name] = viz.save_figure(fig, name, folder)[-1]

    for stage in sorted(set(pts["stage"])):
        save(viz.rd_curves(mean_curves(pts, stage), title=f"{stage} (mean over seeds)"), f"rd_{stage}")
    if not summary.empty and summary.loc[summary["method"] == method, "mean"].notna().any():
        save(viz.bd_bars_ci(summary, method, band=EXPECTED, band_label="expected 2-5% gain"), "bd_rate_ci")
    lambdas = sorted(set(runs["lmbda"]))
    pick = runs[(runs["lmbda"] == lambdas[len(lambdas) // 2]) & (runs["seed"] == runs["seed"].min())]
    for stage, weighted in (("train", ("balanced", "hierarchical")), ("finetune", ("qp", "balanced"))):
        sel = pick[(pick["stage"] == stage)]
        hist = _histories(sel[sel["mode"].isin(weighted)])
        if not hist.empty and any(str(c).startswith("z_") for c in hist.columns):
            save(viz.weight_trajectories(hist), f"task_weights_{stage}")
    hist = _histories(pick[pick["stage"] == "train"])
    if not hist.empty and "R_z" in hist.columns:
        save(viz.compare_scales(hist), "scale_rates_train")
    return made


# ------------------------------------------------------------------------------------ RESULTS.md


def _bd_table_md(summary: pd.DataFrame) -> str:
    from lic_core.analysis import tables

    df = summary.copy()
    df.index = [f"{t} vs {a} ({m})" for t, a, m in zip(df["test"], df["anchor"], df["method"])]
    df = df.drop(columns=["test", "anchor", "method"]).rename(
        columns={"mean": "mean (%)", "std": "std", "n": "seeds", "low": "95% CI low", "high": "95% CI high"})
    df["seeds"] = df["seeds"].astype(int)
    return tables.table_markdown(df)


def report_markdown(spec: SweepSpec, runs: pd.DataFrame, curves: Mapping, per_seed: pd.DataFrame,
                    summary: pd.DataFrame, times: pd.DataFrame, figures: Mapping[str, Path],
                    results_path: Path, settings: Finetune = Finetune(), method: str = "pchip") -> str:
    """The experiment's block of RESULTS.md: set-up, BD-rate with intervals and plain verdicts,
    notes on undefined values, R-D points, per-scale rates, time per step, figures."""
    from lic_core.analysis import tables

    p = spec.expand()[0].parameters
    pts = points(curves, runs)
    machines = {s: json.loads((d / MACHINE_FILE).read_text())
                for s, d in stage_dirs(spec).items() if (d / MACHINE_FILE).is_file()}
    n_img = sorted({n for c in curves.values() for n in c["results"].get("num_images", [])})
    desc = sorted({c.get("description", "") for c in curves.values()})
    ft_steps = sorted(set(runs.loc[runs["stage"] == "finetune", "steps"]))
    lines = [
        f"### `{spec.name}`: reported {datetime.now(timezone.utc):%Y-%m-%d}",
        "",
        f"- model `{p.get('model')}`, {p.get('steps')} steps, batch {p.get('batch')}, patch {p.get('patch')}, "
        f"lr {p.get('lr')} (step schedule), λ {sorted(set(runs['lmbda']))}, seeds {sorted(set(runs['seed']))}",
        f"- fine-tune (Solution 2): {ft_steps or 'not run'} steps from each standard checkpoint, lr {settings.lr}, "
        f"modes {list(settings.modes)}",
        f"- evaluation: {'; '.join(desc)} (images per point: {n_img})",
        *[f"- {s} machine: {m['device']}, {m['cpus']} CPUs, torch {m['torch']}, {m['host']} ({m['time']})"
          for s, m in machines.items()],
        "",
        "#### BD-rate against standard (negative = fewer bits at equal PSNR)",
        "",
        _bd_table_md(summary),
    ]
    for r in summary[summary["method"] == method].itertuples():
        ci = Interval(r.mean, r.std, int(r.n), r.low, r.high)
        lines.append(f"- **{r.test} vs {r.anchor}** ({method}): {verdict(ci, r.anchor)}.")
    notes = per_seed[per_seed["note"].astype(bool)].drop_duplicates(["test", "seed", "note"])
    if not notes.empty:
        lines += ["", "Notes (undefined or warned BD values):", ""]
        lines += [f"- {n.test} seed {n.seed}: {n.note}" for n in notes.itertuples()]
    lines += ["", "#### R-D points and actual per-scale rates (mean over seeds, bpp)", "",
              tables.table_markdown(mean_points(pts).reset_index(level="lmbda").rename(columns={"lmbda": "λ"}),
                                 digits=4),
              "#### Wall time per training step (median of each run's median)", "",
              tables.table_markdown(times, digits=3)]
    share = distortion_share(runs)
    if not share.empty:
        lines += ["#### Distortion's task weight z_D and gradient share a_D at the end of training", "",
                  "(mean of the last 10 % of logged steps, then over seeds; the standard loss D + R has "
                  "a_D = 0.5)", "", tables.table_markdown(share.reset_index(level="λ"), digits=4)]
    if figures:
        lines += ["#### Figures", ""]
        lines += [f"- `{n}`: ![{n}]({os.path.relpath(f, results_path.parent)})" for n, f in figures.items()]
    return "\n".join(lines) + "\n"


def report(spec: SweepSpec, results: str | Path = REPO / "RESULTS.md", figures: str | Path = "",
           settings: Finetune = Finetune(), methods: Sequence[str] = METHODS,
           metric: str = "psnr-rgb") -> str:
    """Stage 4: statistics, figures (``figures/<sweep name>`` by default) and the sweep's block
    of ``results``; returns that block."""
    runs = experiment_runs(spec, settings)
    if runs.empty:
        raise LicError(f"{spec.output}: no finished runs; run the train stage first")
    curves = load_curves(runs, stage_dirs(spec)["eval"])
    tests = [("train", m) for m in TRAIN_MODES if m != ANCHOR and ("train", m) in {k[:2] for k in curves}]
    per_seed = bd_per_seed(curves, ("train", ANCHOR), tests, methods, metric)
    ft = sorted({k[1] for k in curves if k[0] == "finetune"} - {ANCHOR})
    if ft:  # Solution 2 against the Adam control fine-tuned for the same steps, and against its start
        per_seed = pd.concat([per_seed,
                              bd_per_seed(curves, ("finetune", ANCHOR), [("finetune", m) for m in ft], methods, metric),
                              bd_per_seed(curves, ("train", ANCHOR), [("finetune", m) for m in [*ft, ANCHOR]],
                                          methods, metric)], ignore_index=True)
    summary = summarize_bd(per_seed)
    folder = Path(figures) if figures else REPO / "figures" / spec.name
    figs = write_figures(runs, points(curves, runs), summary, folder, methods[0])
    path = Path(results)
    body = report_markdown(spec, runs, curves, per_seed, summary, step_times(runs), figs, path.resolve(),
                           settings, methods[0])
    write_results(path, spec.name, body)
    return body


# ------------------------------------------------------------------------------------ CLI


def _pairs(items: Sequence[str], what: str) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what} {item!r}: expected KEY=VALUE")
        out[key] = parse_yaml(f"[{value}]" if what == "--grid" else value, f"{what} {key}")
    return out


@command("experiment")
def main(argv: list[str] | None = None) -> int:
    """``python -m studies.scratch_sweep STAGE --sweep FILE.yaml``; exit 0 when the stage completed."""
    ap = argparse.ArgumentParser(prog="python -m studies.scratch_sweep", description=__doc__.split("\n")[0])
    ap.add_argument("stage", choices=("train", "finetune", "evaluate", "report", "all"))
    ap.add_argument("--sweep", required=True, help="train sweep YAML (studies/scratch_600/cpu.yaml)")
    ap.add_argument("--set", action="append", default=[], metavar="K=V", help="override a fixed parameter")
    ap.add_argument("--grid", action="append", default=[], metavar="K=V1,V2", help="override a grid axis")
    ap.add_argument("--output", default="", help="train sweep folder (default: the YAML's)")
    ap.add_argument("--executor", default="local", help="sweep executor (local, slurm, ...)")
    ap.add_argument("--jobs", type=int, default=None, help="jobs at a time (default: the YAML's)")
    ap.add_argument("--partial", action="store_true", help="fine-tune the standard runs that exist")
    ap.add_argument("--ft-fraction", type=float, default=Finetune.fraction)
    ap.add_argument("--ft-lr", type=float, default=Finetune.lr)
    ap.add_argument("--ft-modes", default=",".join(Finetune.modes))
    ap.add_argument("--dataset", default="kodak")
    ap.add_argument("--limit", type=int, default=0, help="first N test images (0: all)")
    ap.add_argument("--crop", type=int, default=0, help="center crops (0: full images)")
    ap.add_argument("--results", default=str(REPO / "RESULTS.md"))
    ap.add_argument("--figures", default="", help="figure folder (default: figures/<sweep name>)")
    a = ap.parse_args(argv)
    spec = load_protocol(a.sweep, _pairs(a.set, "--set"), _pairs(a.grid, "--grid"), a.output)
    ft = Finetune(tuple(m for m in a.ft_modes.split(",") if m), a.ft_fraction, a.ft_lr)
    run = {"train": lambda: train(spec, a.executor, a.jobs),
           "finetune": lambda: finetune(spec, ft, a.executor, a.jobs, a.partial),
           "evaluate": lambda: evaluate_experiment(spec, a.dataset, a.limit, a.crop, ft, jobs=a.jobs),
           "report": lambda: print(report(spec, a.results, a.figures, ft))}
    for stage in run if a.stage == "all" else (a.stage,):
        run[stage]()
        print(f"experiment {spec.name}: {stage} done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
