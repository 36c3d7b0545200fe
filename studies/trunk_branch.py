"""Trunk-and-branch studies: does Balanced R-D help a *trained* HPCM?

Stages, each a set of independent training runs that resume where they stopped:

1. **trunk** (one per seed): standard HPCM (Adam) at the middle λ, trained in chunks of
   ``check_every`` steps until the measured distortion term on Kodak crops falls to the gate,
   ``L_D = λ·255²·MSE <= gate_ld`` (the point where Balanced R-D's log-scaled objective starts to
   depend on λ; BALANCED.md), or ``max_steps``. Gated on measurement, not on a step count.
2. **branch** (seed × λ): each trunk continued at every λ of the grid with Adam and a decaying lr;
   these are the base models every comparison starts from.
3. **compare** (seed × λ × fine-tune seed × arm): each base fine-tuned by every objective with
   identical crops (the fine-tune seed), steps and lr schedule.

Finished trunks and bases are exported weights-only (float16 tensors, ``torch.load(weights_only=True)``)
to the ``store`` folder with a SHA-256 manifest, so that a new machine continues from them.
Run folders (training state, ``metrics.jsonl``) live under ``out``. Every run records the commit of
the code that trained it (``study.json``).

    python -m studies.trunk_branch run --study studies/tiny/study.yaml --stage trunk --jobs 2
"""
from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lic_core.atomic import write_file
from lic_core.config import dataclass_from, read_yaml
from lic_core.errors import ConfigError, LicError, command
from lic_core.paths import REPO
from lic_core.provenance import commit, cpu_name
from lic_core.analysis.stats import mean_ci
from lic_core.workbench.store import export, is_store, read_index, read_sums, sha256, verify_store
from lic_core.workbench.sweep import EXECUTORS, Lines, Task, run_tasks
from lic_core.analysis.tables import write_results
from lic_core.training import checkpoint as ckpt
from lic_core.training.logging import load_history

STAGES = ("trunk", "branch", "compare", "evaluate", "scratch")
EXPECTED = (-5.0, -2.0)  # the project plan's expectation: a 2-5 % BD-rate gain (drawn as a band)


# ------------------------------------------------------------------------------------ protocol


@dataclass
class TrunkSpec:
    lmbda: float = 0.0067
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    lr: float = 5e-4
    gate_ld: float = 1.0  # stop once the Kodak-crop L_D is at or below this
    check_every: int = 1000  # steps between gate measurements
    max_steps: int = 20000
    records: str = ""  # out folder of the study that trained the store's trunks this one did not (their run records)


@dataclass
class BranchSpec:
    lambdas: list[float] = field(default_factory=lambda: [0.0035, 0.0067, 0.013, 0.025])
    steps: int = 3000
    lr: float = 2e-4
    milestones: list[float] = field(default_factory=lambda: [0.6, 0.85])
    step_lrs: list[float] = field(default_factory=lambda: [5e-5, 1e-5])


@dataclass
class ExtendSpec:
    """Quality-matched sampling: ``arms`` whose models sit lower on the R-D curve than the anchor's
    at the same λ are also fine-tuned at ``lambdas`` above the grid (from the base at λ ``base``, as
    no higher base exists), so that their curves span the anchor's PSNR range (the 75 % rule)."""
    arms: list[str] = field(default_factory=list)
    lambdas: list[float] = field(default_factory=list)
    base: float = 0.0


@dataclass
class AnalysisSpec:
    """A pre-registered analysis: ``comparisons`` as {test, anchor} curves (the first is the
    primary), each BD-rate defined when the overlap reaches ``min_overlap``; trunks are the unit
    (a trunk's value is the mean of its blocks'); ``margin``: the equivalence margin (%) of the
    comparisons listed in ``equivalence``."""
    comparisons: list[dict[str, str]] = field(default_factory=list)
    min_overlap: float = 0.75
    samples: int = 2000
    margin: float = 0.5
    equivalence: list[dict[str, str]] = field(default_factory=list)
    exploratory: list[dict[str, str]] = field(default_factory=list)  # reported per block, no decision


@dataclass
class CompareSpec:
    arms: dict[str, dict[str, Any]] = field(default_factory=dict)  # arm name -> config overrides
    seeds: list[int] = field(default_factory=lambda: [100, 101])  # fine-tune crop orders
    trunk_seeds: dict[int, list[int]] = field(default_factory=dict)  # per trunk, where not ``seeds``
    # named sets of (base λ, fine-tune λ) points, and the sets each arm is fine-tuned at; an arm
    # not in ``arm_points`` gets the grid (its own base's λ) and, if extended, ``extend``'s points
    point_sets: dict[str, list[list[float]]] = field(default_factory=dict)
    arm_points: dict[str, list[str]] = field(default_factory=dict)
    # exploratory arms run only in these (trunk seed, fine-tune seed) blocks, after every other run
    arm_blocks: dict[str, list[list[int]]] = field(default_factory=dict)
    steps: int = 1000
    lr: float = 5e-5
    milestones: list[float] = field(default_factory=lambda: [0.8])
    step_lrs: list[float] = field(default_factory=lambda: [1e-5])
    extend: ExtendSpec = field(default_factory=ExtendSpec)
    analysis: AnalysisSpec = field(default_factory=AnalysisSpec)


@dataclass
class ScratchSpec:
    """Objectives trained from scratch beside a trunk, whose Adam run is the other
    half of each pair (same seed, so the same init and crops; same λ and lr)."""
    arms: dict[str, dict[str, Any]] = field(default_factory=dict)  # arm name -> config overrides
    seeds: list[int] = field(default_factory=lambda: [0])  # trunk seeds to pair with
    steps: int = 0  # 0: no such stage
    share: float = 0.25  # a_D level that counts as "risen" (the standard loss D + R has 0.5)
    arm_seeds: dict[str, list[int]] = field(default_factory=dict)  # per arm, where not ``seeds``


@dataclass
class Study:
    """One study, read from YAML (``studies/tiny/study.yaml``); paths are relative to ``root``."""

    name: str = "study"
    out: str = "papermill_runs/study"
    store: str = "checkpoints/study"
    model: str = "tiny"
    batch: int = 8
    patch: int = 128
    train_dir: str = ""
    test_dir: str = ""
    test_patch: int = 256
    test_limit: int = 0
    jobs: int = 2
    threads: int = 1
    overrides: dict[str, Any] = field(default_factory=dict)  # config keys given to every run
    trunk: TrunkSpec = field(default_factory=TrunkSpec)
    branch: BranchSpec = field(default_factory=BranchSpec)
    compare: CompareSpec = field(default_factory=CompareSpec)
    scratch: ScratchSpec = field(default_factory=ScratchSpec)
    root: str = "."

    def path(self, p: str) -> Path:
        q = Path(p)
        return q if q.is_absolute() else Path(self.root) / q

    @property
    def out_dir(self) -> Path:
        return self.path(self.out)

    @property
    def store_dir(self) -> Path:
        return self.path(self.store)


def load_study(path: str | Path, root: str | Path = ".") -> Study:
    """The study of a YAML file; ``root`` anchors its relative paths (default: the current folder)."""
    st = dataclass_from(Study, {**read_yaml(path, "study"), "root": str(Path(root).resolve())})
    if st.trunk.lmbda not in st.branch.lambdas:
        raise ConfigError(f"trunk.lmbda: {st.trunk.lmbda} is not in branch.lambdas {st.branch.lambdas}")
    ext = st.compare.extend
    if set(ext.arms) - set(st.compare.arms):
        raise ConfigError(f"compare.extend.arms: {sorted(set(ext.arms) - set(st.compare.arms))} not in compare.arms")
    if ext.arms and (not ext.lambdas or ext.base not in st.branch.lambdas):
        raise ConfigError(f"compare.extend: needs lambdas and a base in branch.lambdas {st.branch.lambdas}")
    if set(ext.lambdas) & set(st.branch.lambdas):
        raise ConfigError(f"compare.extend.lambdas: {ext.lambdas} overlap branch.lambdas {st.branch.lambdas}")
    c = st.compare
    for arm, sets in c.arm_points.items():
        if arm not in c.arms or set(sets) - set(c.point_sets):
            raise ConfigError(f"compare.arm_points.{arm}: needs an arm of compare.arms and sets of "
                              f"compare.point_sets {sorted(c.point_sets)}, got {sets}")
    bases: dict[float, float] = {}
    for name, pts in c.point_sets.items():
        for pt in pts:
            if len(pt) != 2 or pt[0] not in st.branch.lambdas or bases.setdefault(pt[1], pt[0]) != pt[0]:
                raise ConfigError(f"compare.point_sets.{name}: {pt} must be [base λ of branch.lambdas, λ], "
                                  "and one λ comes from one base")
    for arm, bl in c.arm_blocks.items():
        if arm not in c.arms or any(tuple(b) not in blocks(st) for b in bl):
            raise ConfigError(f"compare.arm_blocks.{arm}: needs an arm of compare.arms and blocks among {blocks(st)}")
    if set(st.scratch.arm_seeds) - set(st.scratch.arms):
        raise ConfigError(f"scratch.arm_seeds: {sorted(set(st.scratch.arm_seeds) - set(st.scratch.arms))} not in scratch.arms")
    if set(c.trunk_seeds) - set(st.trunk.seeds):
        raise ConfigError(f"compare.trunk_seeds: {sorted(set(c.trunk_seeds) - set(st.trunk.seeds))} not in trunk.seeds")
    for cmp in [*c.analysis.comparisons, *c.analysis.equivalence, *c.analysis.exploratory]:
        if set(cmp) != {"test", "anchor"}:
            raise ConfigError(f"compare.analysis: each comparison is {{test, anchor}}, got {cmp}")
        for curve in cmp.values():
            curve_points(st, curve)
    return st


# ------------------------------------------------------------------------------------- runs


def run_overrides(st: Study, name: str, lmbda: float, seed: int, steps: int, lr: float,
                  milestones: list[float] | None = None, step_lrs: list[float] | None = None,
                  init: Path | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Config overrides of one run of the study (the engine's dotted keys)."""
    ov = {"model.name": st.model, "data.batch": st.batch, "data.patch": st.patch,
          "data.train": str(st.path(st.train_dir)) if st.train_dir else "",
          "data.test": str(st.path(st.test_dir)) if st.test_dir else "",
          "data.test_patch": st.test_patch, "data.test_limit": st.test_limit,
          "loss.lmbda": lmbda, "run.seed": seed, "run.steps": steps, "optim.lr": lr,
          "optim.schedule": "step" if milestones else "constant",
          "optim.milestones": milestones or [], "optim.step_lrs": step_lrs or [],
          "run.out": str(st.out_dir), "run.name": name, "run.progress": False, "run.wandb_mode": "disabled",
          "finetune.init": str(init) if init else "", **st.overrides, **(extra or {})}
    return ov


def _record(run_dir: Path, **info: Any) -> None:
    """``study.json`` of a run: what trained it (commit, machine), appended to on every (re)start."""
    path = run_dir / "study.json"
    rec = json.loads(path.read_text()) if path.is_file() else {"sessions": []}
    rec["sessions"].append({"commit": commit(), "code": str(REPO), "host": os.uname().nodename, "cpu": cpu_name(),
                            "cpus": os.cpu_count(),
                            "torch": torch.__version__, "threads": torch.get_num_threads(),
                            "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), **info})
    write_file(path, json.dumps(rec, indent=1))


def _train(ov: dict[str, Any]) -> Path:
    from lic_core.training.engine import train

    run_dir = Path(ov["run.out"]) / ov["run.name"]
    run_dir.mkdir(parents=True, exist_ok=True)
    _record(run_dir, steps=ov["run.steps"])
    res = train(None, ov)
    return Path(res.checkpoint)


def last_eval(run_dir: Path) -> dict[str, Any] | None:
    ev = load_history(run_dir, "eval")
    return ev[-1] if ev else None


def current_step(run_dir: Path) -> int:
    found = ckpt.step_checkpoints(run_dir / "checkpoints")
    return found[-1][0] if found else 0


# ------------------------------------------------------------------------------------ exports


# -------------------------------------------------------------------------------------- stages


def trunk_name(seed: int) -> str:
    return f"trunk-s{seed}"


def base_name(lmbda: float, seed: int) -> str:
    return f"base-l{lmbda:g}-s{seed}"


def compare_name(arm: str, lmbda: float, seed: int, ft_seed: int) -> str:
    return f"{arm}-l{lmbda:g}-s{seed}-f{ft_seed}"


def run_trunk(st: Study, seed: int) -> Path:
    """Train one trunk chunk by chunk until the gate (or ``max_steps``); export it."""
    t = st.trunk
    dest = st.store_dir / f"{trunk_name(seed)}.pt"
    if dest.is_file():
        return dest
    run_dir = st.out_dir / trunk_name(seed)
    while True:
        step, ev = current_step(run_dir), last_eval(run_dir)
        gate = ev is not None and ev["step"] == step and ev["D"] <= t.gate_ld
        if gate or step >= t.max_steps:
            break
        target = min(step + t.check_every, t.max_steps)
        _train(run_overrides(st, trunk_name(seed), t.lmbda, seed, target, t.lr,
                             extra={"run.eval_every": t.check_every, "run.ckpt_every": t.check_every,
                                    "run.log_every": 50}))
    return export_trunk(st, seed, "gate met" if gate else "max_steps reached")


def export_trunk(st: Study, seed: int, why: str) -> Path:
    """Export trunk ``seed`` at its latest checkpoint; ``why`` it stopped goes into its meta."""
    run_dir = st.out_dir / trunk_name(seed)
    step, ev = current_step(run_dir), last_eval(run_dir)
    if step == 0:
        raise LicError(f"{trunk_name(seed)}: no checkpoint in {run_dir} to export")
    meta = {"stage": "trunk", "seed": seed, "lmbda": st.trunk.lmbda, "step": step, "gate_ld": st.trunk.gate_ld,
            "gate_met": bool(ev and ev["step"] == step and ev["D"] <= st.trunk.gate_ld), "stopped": why,
            "eval": ev, "commit": commit()}
    return export(ckpt.step_file(run_dir / "checkpoints", step), st.store_dir / f"{trunk_name(seed)}.pt", meta)


# SHA-256 of bases a study records but does not ship (``sha256sum -c`` format, in its results folder)
RECORDED = "unshipped_bases.sha256"


def recorded_hashes(st: Study) -> dict[str, str]:
    """File name -> SHA-256 of the study's recorded, unshipped bases (empty without the file)."""
    path = st.out_dir / RECORDED
    return read_sums(path) if path.is_file() else {}


def check_recorded(st: Study, base: Path) -> Path:
    """``base`` if it is the one the study's committed runs started from: a base the study records
    (:data:`RECORDED`) must hash as recorded. A base re-derived on another kind of CPU can differ in
    the last bits; the runs fine-tuned from the recorded one are then not runs of this base."""
    want = recorded_hashes(st).get(base.name)
    if want and sha256(base) != want:
        raise LicError(f"{base}: not the base the committed runs started from (SHA-256 differs from "
                       f"{st.out_dir / RECORDED}); to redo its trunk's runs from it, move their run folders "
                       f"and their files in {st.out_dir / 'eval'} away, and delete its line there")
    return base


def run_branch(st: Study, seed: int, lmbda: float) -> Path:
    """Continue trunk ``seed`` at ``lmbda`` (Adam, decaying lr); export the base model, checked
    against the study's recorded hash if it has one (:func:`check_recorded`)."""
    b = st.branch
    dest = st.store_dir / f"{base_name(lmbda, seed)}.pt"
    if dest.is_file():
        return check_recorded(st, dest)
    init = st.store_dir / f"{trunk_name(seed)}.pt"
    if not init.is_file():
        raise LicError(f"branch {base_name(lmbda, seed)}: trunk {init} is not trained yet")
    last = _train(run_overrides(st, base_name(lmbda, seed), lmbda, seed, b.steps, b.lr, b.milestones,
                                b.step_lrs, init=init,
                                extra={"run.eval_every": 500, "run.ckpt_every": 500, "run.log_every": 50}))
    ev = last_eval(st.out_dir / base_name(lmbda, seed))
    meta = {"stage": "base", "seed": seed, "lmbda": lmbda, "step": b.steps, "init": init.name,
            "eval": ev, "commit": commit()}
    return check_recorded(st, export(last, dest, meta))


def arm_lambdas(st: Study, arm: str) -> list[float]:
    """The λ an arm is fine-tuned at: its ``arm_points`` sets in order, or the grid, then
    ``compare.extend.lambdas`` for an extended arm."""
    c = st.compare
    if arm in c.arm_points:
        return [pt[1] for name in c.arm_points[arm] for pt in c.point_sets[name]]
    return [*st.branch.lambdas, *(c.extend.lambdas if arm in c.extend.arms else [])]


def curve_points(st: Study, curve: str) -> tuple[str, list[float]]:
    """The arm and λ of a curve: ``arm`` (every point of the arm) or ``arm[set+set]`` (the
    points of those ``point_sets``, each of which the arm must have)."""
    arm, _, rest = curve.partition("[")
    if arm not in st.compare.arms:
        raise ConfigError(f"curve {curve!r}: {arm!r} is not an arm of compare.arms {sorted(st.compare.arms)}")
    if not rest:
        return arm, arm_lambdas(st, arm)
    sets = rest.rstrip("]").split("+")
    if not rest.endswith("]") or not set(sets) <= set(st.compare.arm_points.get(arm, [])):
        raise ConfigError(f"curve {curve!r}: sets must be among {arm}'s compare.arm_points "
                          f"{st.compare.arm_points.get(arm, [])}")
    return arm, [pt[1] for name in sets for pt in st.compare.point_sets[name]]


def base_lmbda(st: Study, lmbda: float) -> float:
    """The λ of the base a comparison at ``lmbda`` starts from."""
    for pts in st.compare.point_sets.values():
        for base, lam in pts:
            if lam == lmbda:
                return base
    return lmbda if lmbda in st.branch.lambdas else st.compare.extend.base


def run_compare(st: Study, arm: str, seed: int, lmbda: float, ft_seed: int) -> Path:
    """Fine-tune base (``seed``, ``lmbda``) with ``arm``'s objective, crops from ``ft_seed``; then
    evaluate it with real bitstreams at once. Its per-image file is committed, its weights are not:
    a run whose file holds every test image is done, also on a machine without its checkpoint."""
    c = st.compare
    name = compare_name(arm, lmbda, seed, ft_seed)
    final = compare_checkpoint(st, arm, seed, lmbda, ft_seed)
    if point_result(st, final) is None:
        if not final.is_file():
            every = max(1, c.steps // 4)
            _train(run_overrides(st, name, lmbda, ft_seed, c.steps, c.lr, c.milestones, c.step_lrs,
                                 init=st.store_dir / f"{base_name(base_lmbda(st, lmbda), seed)}.pt",
                                 extra={**c.arms[arm], "run.eval_every": every, "run.ckpt_every": every,
                                        "run.keep_last": 1, "run.log_every": 10}))
        evaluate_point(st, final)
    return st.out_dir / "eval" / f"{point_name(final)}.images.json"


def compare_checkpoint(st: Study, arm: str, seed: int, lmbda: float, ft_seed: int) -> Path:
    """Where a comparison run's final checkpoint is (or was: only its evaluation is committed)."""
    return ckpt.step_file(st.out_dir / compare_name(arm, lmbda, seed, ft_seed) / "checkpoints", st.compare.steps)


def compare_done(st: Study, arm: str, seed: int, lmbda: float, ft_seed: int) -> bool:
    """Whether a comparison run is trained and evaluated on every test image."""
    return point_result(st, compare_checkpoint(st, arm, seed, lmbda, ft_seed)) is not None


def trunk_dir(st: Study, seed: int) -> Path:
    """The run folder of trunk ``seed``: this study's, else that of the study named by
    ``trunk.records`` (a trunk taken from the shared store)."""
    own = st.out_dir / trunk_name(seed)
    return own if own.is_dir() or not st.trunk.records else st.path(st.trunk.records) / trunk_name(seed)


def scratch_name(arm: str, seed: int) -> str:
    return f"scratch-{arm}-s{seed}"


def run_scratch(st: Study, arm: str, seed: int) -> Path:
    """Train ``arm`` from scratch as trunk ``seed`` was trained (seed, λ, lr, measurement every
    ``trunk.check_every`` steps), for ``scratch.steps``; resumes from its last checkpoint."""
    t, name = st.trunk, scratch_name(arm, seed)
    final = ckpt.step_file(st.out_dir / name / "checkpoints", st.scratch.steps)
    if scratch_done(st, arm, seed):
        return final
    return _train(run_overrides(st, name, t.lmbda, seed, st.scratch.steps, t.lr,
                                extra={**st.scratch.arms[arm], "run.eval_every": t.check_every,
                                       "run.ckpt_every": t.check_every, "run.keep_last": 1,
                                       "run.log_every": max(1, min(50, t.check_every // 4))}))


def scratch_seeds(st: Study, arm: str) -> list[int]:
    """The trunk seeds ``arm`` is trained from scratch beside."""
    return st.scratch.arm_seeds.get(arm, st.scratch.seeds)


def scratch_done(st: Study, arm: str, seed: int) -> bool:
    """Whether the run reached its last measurement (its record is committed, its weights are not)."""
    ev = last_eval(st.out_dir / scratch_name(arm, seed))
    return ev is not None and ev["step"] >= st.scratch.steps


def scratch_rows(st: Study, arm: str, seed: int) -> list[dict[str, Any]]:
    """Per measurement (every ``trunk.check_every`` steps): the Adam trunk's and the from-scratch
    run's Kodak-crop PSNR, bpp and ``L_D``, and the run's mean ``z_D`` and ``a_D`` over the steps
    since the previous measurement."""
    trunk = {e["step"]: e for e in load_history(trunk_dir(st, seed), "eval")}
    run = st.out_dir / scratch_name(arm, seed)
    train = [h for h in load_history(run, "train") if "a_D" in h]
    rows, prev = [], 0
    for e in load_history(run, "eval"):
        window = [h for h in train if prev < h["step"] <= e["step"]]
        a = trunk.get(e["step"], {})
        rows.append({"step": e["step"], "adam_psnr": a.get("psnr", float("nan")), "adam_bpp": a.get("bpp", float("nan")),
                     "adam_L_D": a.get("D", float("nan")), "psnr": e["psnr"], "bpp": e["bpp"], "L_D": e["D"],
                     "z_D": float(np.mean([h["z_D"] for h in window])) if window else float("nan"),
                     "a_D": float(np.mean([h["a_D"] for h in window])) if window else float("nan")})
        prev = e["step"]
    return rows


def scratch_markdown(st: Study) -> list[str]:
    """The report's lines for the finished from-scratch pairs (an unfinished run's files are not
    committed, so the report, which must regenerate from committed files, leaves it out)."""
    lines = []
    for arm in st.scratch.arms:
        for seed in scratch_seeds(st, arm):
            if not scratch_done(st, arm, seed):
                continue
            rows = scratch_rows(st, arm, seed)
            risen = next((r["step"] for r in rows if r["a_D"] >= st.scratch.share), None)
            lam = st.scratch.arms[arm].get("loss.lmbda", st.trunk.lmbda)
            pair = (f"λ {lam}, lr {st.trunk.lr}" if lam == st.trunk.lmbda else
                    f"lr {st.trunk.lr}; λ {lam} here and {st.trunk.lmbda} for Adam, each `L_D` at its own λ")
            lines += ["", f"From scratch, {arm} beside trunk {seed} (Adam; same seed, init, crops, {pair}); "
                          f"{rows[-1]['step']} of {st.scratch.steps} steps; Kodak-crop measurements, "
                          f"`z_D`/`a_D` the mean over the steps since the previous row:", "",
                      "| step | Adam PSNR | Adam bpp | Adam L_D | PSNR | bpp | L_D | z_D | a_D |",
                      "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
            lines += [f"| {r['step']} | {r['adam_psnr']:.2f} | {r['adam_bpp']:.4f} | {r['adam_L_D']:.2f} | {r['psnr']:.2f} | "
                      f"{r['bpp']:.4f} | {r['L_D']:.2f} | {r['z_D']:.3f} | {r['a_D']:.3f} |" for r in rows]
            lines += ["", f"`a_D` first reaches {st.scratch.share} (the standard loss has 0.5) "
                          + (f"in the window ending at step {risen}." if risen else f"in none of these {len(rows)} windows.")]
    return lines


def curve_checkpoints(st: Study, curve: str, seed: int, ft_seed: int | None) -> list[Path]:
    """The checkpoints of one R-D curve: a base curve over ``branch.lambdas`` (``curve`` "base")
    or fine-tuned models over :func:`curve_points`."""
    if curve == "base":
        return [st.store_dir / f"{base_name(lam, seed)}.pt" for lam in st.branch.lambdas]
    arm, lams = curve_points(st, curve)
    return [compare_checkpoint(st, arm, seed, lam, ft_seed) for lam in lams]


def curve_name(arm: str, seed: int, ft_seed: int | None) -> str:
    return f"{arm}-s{seed}" + ("" if ft_seed is None else f"-f{ft_seed}")


def point_name(path: Path) -> str:
    """The evaluation name of one checkpoint (``<run>-step_<n>`` for a run's checkpoint)."""
    from lic_core.analysis.evaluation import model_names

    return model_names([str(path)])[0]


def test_keys(st: Study) -> list[str] | None:
    """The test images every point is evaluated on, as the per-image files name them: those of the
    bases' evaluation (the study's first evaluation; None before it). Read from the committed files,
    so that the report needs neither the weights nor the test images."""
    seed, lam = st.trunk.seeds[0], st.branch.lambdas[0]
    if not (st.out_dir / "eval" / f"{curve_name('base', seed, None)}.json").is_file():
        return None
    path = st.out_dir / "eval" / f"{point_name(st.store_dir / f'{base_name(lam, seed)}.pt')}.images.json"
    return list(_images(str(path), path.stat().st_mtime_ns))


def point_result(st: Study, path: Path) -> dict[str, Any] | None:
    """The per-image result of checkpoint ``path`` on every test image, if there is one."""
    keys, name = test_keys(st), point_name(path)
    file = st.out_dir / "eval" / f"{name}.images.json"
    if keys is None or not file.is_file():
        return None
    return _stored(str(file.parent), name, tuple(keys), file.stat().st_mtime_ns)


@lru_cache(maxsize=1024)
def _stored(folder: str, name: str, keys: tuple[str, ...], mtime_ns: int) -> dict[str, Any] | None:
    """:func:`lic_core.analysis.evaluation.stored`, read once per version of the file (the report and
    ``status`` ask for every point several times)."""
    from lic_core.analysis.evaluation import stored

    return stored(Path(folder), name, keys)


def evaluate_point(st: Study, path: Path) -> dict[str, Any]:
    """Real-bitstream evaluation of one checkpoint on the full test images (resumes per image; a
    complete result stands for a checkpoint that is gone)."""
    from lic_core.datasets import resolve
    from lic_core.analysis.evaluation import evaluate_model

    return evaluate_model(str(path), resolve(st.path(st.test_dir))[1], st.out_dir / "eval",
                          name=point_name(path), progress=False)


def run_evaluate(st: Study, arm: str, seed: int, ft_seed: int | None) -> Path:
    """Real-bitstream evaluation of one curve on the full test images (per-image files resume; a
    point whose weights are gone is represented by its complete per-image file)."""
    from lic_core.analysis.evaluation import evaluate

    name = curve_name(arm, seed, ft_seed)
    evaluate([str(p) for p in curve_checkpoints(st, arm, seed, ft_seed)], st.path(st.test_dir),
             st.out_dir / "eval", name=name, progress=False)
    return st.out_dir / "eval" / f"{name}.json"


def tasks(st: Study, stage: str) -> list[Task]:
    """The runs of ``stage`` and of the stages before it, in the protocol's order, each with the
    runs it needs and the study's ``threads``."""
    k = STAGES.index(stage)
    seeds, lams, arms = st.trunk.seeds, st.branch.lambdas, list(st.compare.arms)
    out = [Task(trunk_name(s), run_trunk, (st, s)) for s in seeds]
    if k >= 4:  # the from-scratch pairs, the longest runs, start first (beside the other stages' runs)
        out += [Task(scratch_name(a, s), run_scratch, (st, a, s), (trunk_name(s),))
                for a in st.scratch.arms for s in scratch_seeds(st, a) if st.scratch.steps > 0]
    if k >= 1:
        out += [Task(base_name(lam, s), run_branch, (st, s, lam), (trunk_name(s),)) for s in seeds for lam in lams]
    if k >= 3:  # the bases' curves first: cheap, and committed before the long compare stage
        out += [Task(f"eval-{curve_name('base', s, None)}", run_evaluate, (st, "base", s, None),
                     tuple(base_name(lam, s) for lam in lams)) for s in seeds]
    if k >= 2:  # block by block, fine-tune seed outermost, each block's curve summaries after its runs
        ext, pts = st.compare.extend, st.compare.arm_points
        runs = [(a, lam) for lam in lams for a in arms if a not in pts]
        runs += [(a, lam) for lam in ext.lambdas for a in ext.arms if a not in pts]
        runs += [(a, lam) for a in arms if a in pts for lam in arm_lambdas(st, a)]
        main = main_arms(st)
        for s, f in blocks(st):
            out += [Task(compare_name(a, lam, s, f), run_compare, (st, a, s, lam, f),
                         (base_name(base_lmbda(st, lam), s),)) for a, lam in runs if a in main]
            if k >= 3:
                out += [Task(f"eval-{curve_name(a, s, f)}", run_evaluate, (st, a, s, f),
                             tuple(compare_name(a, lam, s, f) for lam in arm_lambdas(st, a))) for a in main]
        for a, bl in st.compare.arm_blocks.items():  # exploratory arms last
            for s, f in map(tuple, bl):
                out += [Task(compare_name(a, lam, s, f), run_compare, (st, a, s, lam, f),
                             (base_name(base_lmbda(st, lam), s),)) for lam in arm_lambdas(st, a)]
                if k >= 3:
                    out += [Task(f"eval-{curve_name(a, s, f)}", run_evaluate, (st, a, s, f),
                                 tuple(compare_name(a, lam, s, f) for lam in arm_lambdas(st, a)))]
    return [replace(t, threads=st.threads) for t in out]


def main_arms(st: Study) -> list[str]:
    """The arms run in every block (not restricted by ``compare.arm_blocks``)."""
    return [a for a in st.compare.arms if a not in st.compare.arm_blocks]


def run_stage(st: Study, stage: str, jobs: int | None = None, executor: str = "local") -> dict[str, str]:
    """Run every task of ``stage`` (and those it needs) that is not :func:`finished`, through the
    project's scheduler (:func:`lic_core.workbench.sweep.run_tasks`): ``jobs`` processes side by
    side, ``threads`` torch threads each; a task starts once the tasks it needs are done. Returns
    name -> state (done / failed)."""
    outcomes = run_tasks(tasks(st, stage), jobs or st.jobs, executor, done=lambda t: finished(st, t),
                         progress=Lines("study"), folder=st.out_dir / "submitit")
    return {name: o.state for name, o in outcomes.items()}


# -------------------------------------------------------------------------------------- analysis


def load_image_curve(st: Study, arm: str, seed: int, ft_seed: int | None) -> Any:
    """Per-image R-D points of one evaluated curve (:class:`lic_core.analysis.bdrate.ImageCurve`)."""
    from lic_core.analysis.bdrate import image_curve

    files = [st.out_dir / "eval" / f"{point_name(p)}.images.json" for p in curve_checkpoints(st, arm, seed, ft_seed)]
    if not evaluated(st, arm, seed, ft_seed):
        raise LicError(f"curve {curve_name(arm, seed, ft_seed)} is not evaluated on every test image: "
                       f"{', '.join(str(f) for f in files)}")
    keys = test_keys(st)
    return image_curve([[by[k] for k in keys] for by in (_images(str(f), f.stat().st_mtime_ns) for f in files)],
                       curve_name(arm, seed, ft_seed))


def evaluated(st: Study, arm: str, seed: int, ft_seed: int | None) -> bool:
    """Whether every point of one curve has its result on every test image."""
    return all(point_result(st, p) is not None for p in curve_checkpoints(st, arm, seed, ft_seed))


@lru_cache(maxsize=512)
def _images(path: str, mtime_ns: int) -> dict[str, dict[str, Any]]:
    """Per-image records of one evaluation file by image, read once per version of the file: the
    report asks for the same curves in its table, its bootstrap and its figures."""
    return {r["image"]: r for r in json.loads(Path(path).read_text())["images"]}


def comparisons(st: Study) -> list[tuple[str, str]]:
    """(test curve, anchor curve): the pre-registered analysis' comparisons where the study has
    one; otherwise every arm against the Adam control, and the task weighting alone (balanced
    against Cautious Adam on the standard loss) where both arms exist."""
    pre = st.compare.analysis
    if pre.comparisons:
        return [(c["test"], c["anchor"]) for c in [*pre.comparisons, *pre.equivalence]]
    arms = list(st.compare.arms)
    anchor = arms[0]
    pairs = [(a, anchor) for a in arms[1:]]
    if {"balanced", "cautious"} <= set(arms):
        pairs.append(("balanced", "cautious"))
    return pairs


def ft_seeds(st: Study, seed: int) -> list[int]:
    """The fine-tune seeds of trunk ``seed``."""
    return st.compare.trunk_seeds.get(seed, st.compare.seeds)


def blocks(st: Study) -> list[tuple[int, int]]:
    """The (trunk seed, fine-tune seed) blocks of the protocol, in the order the study runs them:
    fine-tune seed outermost."""
    order = list(dict.fromkeys(f for s in st.trunk.seeds for f in ft_seeds(st, s)))
    return [(s, f) for f in order for s in st.trunk.seeds if f in ft_seeds(st, s)]


def evaluated_blocks(st: Study) -> list[tuple[int, int]]:
    """The blocks whose every arm's curve is evaluated (blocks finish in a fixed order, not chosen
    by their outcome, so an interim report over them selects nothing)."""
    return [(s, f) for s, f in blocks(st) if all(evaluated(st, a, s, f) for a in main_arms(st))]


def bd_rows(st: Study, methods: tuple[str, ...] = ("pchip", "cubic"),
            among: list[tuple[int, int]] | None = None) -> list[dict[str, Any]]:
    """One row per (comparison, trunk seed, fine-tune seed, method): strict BD-rate or NaN + reason;
    over the blocks ``among`` (default: all of them)."""
    from lic_core.analysis.bdrate import bd_rate_or_nan, quality_gaps, rate_gaps

    rows = []
    for test, anchor in comparisons(st):
        for s, f in among if among is not None else blocks(st):
            a, t = load_image_curve(st, anchor, s, f), load_image_curve(st, test, s, f)
            gaps, rgaps = quality_gaps(a.mean(), t.mean()), rate_gaps(a.mean(), t.mean())
            for m in methods:
                v, why = bd_rate_or_nan(a.mean(), t.mean(), m, st.compare.analysis.min_overlap)
                rows.append({"test": test, "anchor": anchor, "seed": s, "ft_seed": f, "method": m,
                             "bd_rate": v, "note": why, "gaps": gaps, "rate_gaps": rgaps})
    return rows


def summarize(st: Study, rows: list[dict[str, Any]], samples: int = 1000) -> list[dict[str, Any]]:
    """Per (comparison, method): mean and 95 % t-interval over the defined values, and the paired
    image bootstrap of the mean (over the pairs whose value is defined)."""
    from lic_core.analysis.bdrate import paired_bootstrap

    out = []
    for test, anchor in comparisons(st):
        for m in dict.fromkeys(r["method"] for r in rows):
            sel = [r for r in rows if (r["test"], r["anchor"], r["method"]) == (test, anchor, m)]
            ci = mean_ci([r["bd_rate"] for r in sel])
            ok = [r for r in sel if r["bd_rate"] == r["bd_rate"]]
            boot = paired_bootstrap([(load_image_curve(st, anchor, r["seed"], r["ft_seed"]),
                                      load_image_curve(st, test, r["seed"], r["ft_seed"])) for r in ok],
                                    m, samples) if ok else {"low": float("nan"), "high": float("nan"),
                                                            "samples": 0, "dropped": 0}
            out.append({"test": test, "anchor": anchor, "method": m, "n": ci.n, "of": len(sel),
                        "mean": ci.mean, "t_low": ci.low, "t_high": ci.high,
                        "boot_low": boot["low"], "boot_high": boot["high"], "boot_samples": boot["samples"],
                        "values": [r["bd_rate"] for r in sel],
                        "notes": sorted({f"{test} vs {anchor}, block s{r['seed']}-f{r['ft_seed']}: {r['note']}"
                                         for r in sel if r["note"]})})
    return out


def gap_summary(st: Study, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per comparison: each block's mean point-wise gap (dB at equal rate, % at equal PSNR; the
    measure that stays defined where the curves overlap too little for a BD-rate), then the mean
    and 95 % t-interval over the blocks. A block with no point inside the anchor's range gives none."""

    out = []
    first = rows[0]["method"] if rows else None
    by_trunk = bool(st.compare.analysis.comparisons)  # a pre-registered study: trunks are the unit
    for test, anchor in comparisons(st):
        sel = [r for r in rows if (r["test"], r["anchor"], r["method"]) == (test, anchor, first)]
        row: dict[str, Any] = {"test": test, "anchor": anchor}
        for key in ("gaps", "rate_gaps"):
            vals = [float(np.mean(r[key])) if r[key] else float("nan") for r in sel]
            if by_trunk:
                vals = list(trunk_means([{"seed": r["seed"], "bd_rate": v} for r, v in zip(sel, vals)]).values())
            ci = mean_ci(vals)
            row[key] = {"mean": ci.mean, "low": ci.low, "high": ci.high, "n": ci.n,
                        "of": len({r["seed"] for r in sel}) if by_trunk else len(sel)}
        out.append(row)
    return out


def trunk_means(rows: list[dict[str, Any]]) -> dict[int, float]:
    """Per trunk: the mean of its blocks' defined values (a trunk with none is left out)."""
    by: dict[int, list[float]] = {}
    for r in rows:
        if r["bd_rate"] == r["bd_rate"]:
            by.setdefault(r["seed"], []).append(r["bd_rate"])
    return {s: float(np.mean(v)) for s, v in sorted(by.items())}


def trunk_bootstrap(st: Study, test: str, anchor: str, method: str, blocks_: list[tuple[int, int]],
                    samples: int) -> dict[str, float]:
    """Two-level bootstrap of the mean over trunks: trunks resampled with replacement and, in every
    draw, the test images too (one draw shared by every curve); a trunk's value is the mean over
    its blocks, as in :func:`trunk_means`."""
    from lic_core.analysis.bdrate import bd_rate_or_nan
    from lic_core.analysis.stats import two_level_bootstrap

    trunks = sorted({s for s, _ in blocks_})
    curves = {b: (load_image_curve(st, anchor, *b), load_image_curve(st, test, *b)) for b in blocks_}
    images = next(iter(curves.values()))[0].bpp.shape[1]
    min_overlap = st.compare.analysis.min_overlap

    def statistic(units: np.ndarray, idx: np.ndarray) -> float:
        per: dict[int, float] = {}
        for u in set(units.tolist()):
            vals = [bd_rate_or_nan(a.mean(idx), t.mean(idx), method, min_overlap)[0]
                    for (s, _), (a, t) in curves.items() if s == trunks[u]]
            vals = [v for v in vals if v == v]
            per[u] = float(np.mean(vals)) if vals else float("nan")
        return float(np.mean([per[u] for u in units]))

    return two_level_bootstrap(len(trunks), images, statistic, samples)


def trunk_summary(st: Study, rows: list[dict[str, Any]], samples: int) -> list[dict[str, Any]]:
    """Per (comparison, method): each trunk's value, the mean over trunks with its 95 % t-interval
    and (PCHIP) the two-level bootstrap interval; blocks are averaged within their trunk."""
    from lic_core.analysis.stats import mean_ci

    out = []
    for test, anchor in comparisons(st):
        for m in dict.fromkeys(r["method"] for r in rows):
            sel = [r for r in rows if (r["test"], r["anchor"], r["method"]) == (test, anchor, m)]
            per = trunk_means(sel)
            ci = mean_ci(list(per.values()))
            boot = {"low": float("nan"), "high": float("nan"), "samples": 0, "dropped": 0}
            if m == "pchip" and ci.n >= 3 and samples:
                boot = trunk_bootstrap(st, test, anchor, m, sorted({(r["seed"], r["ft_seed"]) for r in sel}), samples)
            out.append({"test": test, "anchor": anchor, "method": m, "trunks": per, "values": list(per.values()), "n": ci.n,
                        "of": len({r["seed"] for r in sel}), "mean": ci.mean, "t_low": ci.low, "t_high": ci.high,
                        "boot_low": boot["low"], "boot_high": boot["high"], "boot_samples": boot["samples"],
                        "boot_dropped": boot["dropped"],
                        "notes": sorted({f"{test} vs {anchor}, block s{r['seed']}-f{r['ft_seed']}: {r['note']}"
                                         for r in sel if r["note"]})})
    return out


def decision(r: dict[str, Any]) -> str:
    """The pre-registered decision rule's words for one trunk-level result."""
    if r["n"] < 3:
        return f"undefined: {r['n']} trunk(s) with a defined value, the rule needs at least 3"
    where = f"{r['mean']:+.2f} % (95 % t-interval [{r['t_low']:+.2f}, {r['t_high']:+.2f}], {r['n']} trunks)"
    if r["t_high"] < 0:
        verdict = "Balanced R-D **helps** at this scale (the interval lies below 0)"
    elif r["t_low"] > 0:
        verdict = "Balanced R-D **hurts** at this scale (the interval lies above 0)"
    else:
        verdict = "**no effect detected** (the interval contains 0); the interval bounds its size"
    lo, hi = r["boot_low"], r["boot_high"]
    if lo == lo and hi == hi and ((hi < 0) != (r["t_high"] < 0) or (lo > 0) != (r["t_low"] > 0)):
        verdict += f"; the bootstrap interval [{lo:+.2f}, {hi:+.2f}] lies on another side of 0"
    return f"{where}: {verdict}."


def equivalent(r: dict[str, Any], margin: float) -> str:
    """Whether a trunk-level t-interval lies within ±``margin`` %."""
    if r["n"] < 3:
        return f"undefined ({r['n']} trunk(s))"
    inside = -margin < r["t_low"] and r["t_high"] < margin
    return (f"{'the same R-D' if inside else 'not shown to be the same R-D'}: t-interval "
            f"[{r['t_low']:+.2f}, {r['t_high']:+.2f}] {'within' if inside else 'not within'} ±{margin} %")


def exploratory_markdown(st: Study) -> list[str]:
    """The exploratory comparisons (``analysis.exploratory``), per block where both curves are
    evaluated: BD-rate with PCHIP and cubic, descriptive only (no interval, no decision)."""
    from lic_core.analysis.bdrate import bd_rate_or_nan

    rows = []
    for cmp in st.compare.analysis.exploratory:
        test, anchor = cmp["test"], cmp["anchor"]
        arms = {curve_points(st, c)[0] for c in (test, anchor)}
        for s, f in blocks(st):
            if not all(evaluated(st, a, s, f) for a in arms):
                continue
            a, t = load_image_curve(st, anchor, s, f).mean(), load_image_curve(st, test, s, f).mean()
            vals = [bd_rate_or_nan(a, t, m, st.compare.analysis.min_overlap) for m in ("pchip", "cubic")]
            why = "; ".join(sorted({w for _, w in vals if w}))
            rows.append(f"| {test} vs {anchor} | s{s}-f{f} | {_fmt(vals[0][0])} | {_fmt(vals[1][0])} | {why or '-'} |")
    if not rows:
        return []
    return ["", "Exploratory (not part of the decision): BD-rate % per block.", "",
            "| comparison | block | pchip | cubic | undefined because |", "|---|---|---:|---:|---|", *rows]


def base_points(st: Study) -> list[dict[str, Any]]:
    """Every base model: bpp, PSNR and ``L_D = λ·255²·mean MSE`` on the full test images with real
    bitstreams once its curve is evaluated; before that, the training run's last evaluation
    (estimated rates on the 256-px centre crops), said so in ``source``."""
    rows = []
    index = read_index(st.store_dir) if is_store(st.store_dir) else {}
    for s in st.trunk.seeds:
        if evaluated(st, "base", s, None):
            c = load_image_curve(st, "base", s, None)
            for lam, bpp, q in zip(st.branch.lambdas, c.bpp, c.quality):
                mse = float(np.mean(10 ** (-q / 10)))
                rows.append({"seed": s, "lmbda": lam, "bpp": float(bpp.mean()), "psnr": float(q.mean()),
                             "L_D": lam * 255**2 * mse, "source": "full test images, real bitstreams"})
            continue
        for lam in st.branch.lambdas:
            ev = index.get(f"{base_name(lam, s)}.pt", {}).get("eval")
            run = last_eval(st.out_dir / base_name(lam, s))  # a base kept out of the store: its run record
            ev = ev or (run if run is not None and run["step"] >= st.branch.steps else None)
            if ev:
                rows.append({"seed": s, "lmbda": lam, "bpp": ev["bpp"], "psnr": ev["psnr"], "L_D": ev["D"],
                             "source": f"{st.test_patch}-px crops, training eval (estimate)"})
    return rows


# ---------------------------------------------------------------------------------------- report


def _fmt(v: Any, digits: int = 2) -> str:
    return "undefined" if v is None or v != v else f"{v:+.{digits}f}"


def _answer_ready(st: Study, ready: list[tuple[int, int]]) -> bool:
    """Whether the pre-registered answer can be given: every block of the protocol has every main
    arm evaluated (an interim set of blocks gives interim values, not the answer)."""
    return bool(st.compare.analysis.comparisons) and len(ready) == len(blocks(st)) > 0


def _stage_done(st: Study, t: Task) -> bool:
    """A task's state as the committed files tell it: :func:`finished`, and a base that is not in
    the store (its weights are not shipped) counts as done once its run record reaches its last
    step, as does a trunk listed in the store's index."""
    if finished(st, t):
        return True
    if t.fn is run_branch or t.fn is run_trunk:
        if is_store(st.store_dir) and f"{t.name}.pt" in read_index(st.store_dir):
            return True
        ev = last_eval(st.out_dir / t.name)
        return t.fn is run_branch and ev is not None and ev["step"] >= st.branch.steps
    return False


def progress_markdown(st: Study) -> list[str]:
    """Which runs of the protocol are done and which are pending, stage by stage and, for the
    comparison runs, block by block and arm by arm (a comparison run is done once it is evaluated
    with real bitstreams on every test image)."""
    all_tasks = tasks(st, "evaluate")
    done = {t.name: _stage_done(st, t) for t in all_tasks}
    lines = ["| stage | done | pending |", "|---|---:|---|"]

    def row(what: str, names: list[str], pending: str | None = None) -> None:
        n = sum(done[x] for x in names)
        left = pending if pending is not None else ", ".join(x for x in names if not done[x])
        lines.append(f"| {what} | {n}/{len(names)} | {left or '-'} |")

    row("trunks", [trunk_name(s) for s in st.trunk.seeds])
    bases = [base_name(lam, s) for s in st.trunk.seeds for lam in st.branch.lambdas]
    row("bases", bases, ", ".join(
        f"trunk {s} (λ {', '.join(f'{lam:g}' for lam in st.branch.lambdas if not done[base_name(lam, s)])})"
        for s in st.trunk.seeds if not all(done[base_name(lam, s)] for lam in st.branch.lambdas)))
    row("bases evaluated (curves)", [f"eval-{curve_name('base', s, None)}" for s in st.trunk.seeds])
    main = main_arms(st)
    for s, f in blocks(st):
        names = {a: [compare_name(a, lam, s, f) for lam in arm_lambdas(st, a)] for a in main}
        n = sum(done[x] for v in names.values() for x in v)
        left = ", ".join(f"{a} {sum(done[x] for x in v)}/{len(v)}" for a, v in names.items()
                         if not all(done[x] for x in v))
        lines.append(f"| comparison runs, block s{s}-f{f} | {n}/{sum(map(len, names.values()))} | "
                     f"{'arms ' + left if left else '-'} |")
    extra = [t.name for t in all_tasks if t.fn is run_compare and t.args[1] not in main]
    if extra:
        row("exploratory comparison runs", extra, f"{sum(not done[x] for x in extra)} runs")
    return lines


def _iso_seconds(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def run_time(run_dir: Path) -> dict[str, Any] | None:
    """Compute of one training run from its record: the last logged step, the median and mean
    logged ``step_time`` (s, every logged step), the training time they give (mean × steps), the
    machine(s) (``study.json``) and its span from its first start (``study.json``) to its last
    ``wall`` stamp (``metrics.jsonl``). None without a record."""
    train = [h for h in load_history(run_dir, "train") if "step_time" in h]
    if not train:
        return None
    rec = run_dir / "study.json"
    sessions = json.loads(rec.read_text())["sessions"] if rec.is_file() else []
    steps = max(h["step"] for h in train)
    times = np.array([h["step_time"] for h in train], float)
    walls = [h["wall"] for h in train if "wall" in h]
    start = _iso_seconds(sessions[0]["time"]) if sessions else (min(walls) if walls else float("nan"))
    return {"steps": steps, "median": float(np.median(times)), "train_s": float(times.mean()) * steps,
            "start": start, "end": max(walls) if walls else float("nan"),
            "cpus": sorted({sess.get("cpu", "?") for sess in sessions})}


def eval_time(files: list[Path]) -> dict[str, float]:
    """Real-bitstream coding time of evaluated points: per-image ``encoding_time`` + ``decoding_time``
    summed over the images of every file."""
    total, images = 0.0, 0
    for f in files:
        for r in _images(str(f), f.stat().st_mtime_ns).values():
            total += float(r.get("encoding_time", 0.0)) + float(r.get("decoding_time", 0.0))
            images += 1
    return {"points": len(files), "images": images, "seconds": total}


def compute_markdown(st: Study) -> list[str]:
    """Compute each stage took, from the run records of this study's folder (finished runs only):
    training runs by stage, then the real-bitstream evaluations."""
    groups: dict[str, list[Task]] = {"trunks": [], "bases": [], "comparison runs": [], "from scratch": []}
    key = {run_trunk: "trunks", run_branch: "bases", run_compare: "comparison runs", run_scratch: "from scratch"}
    for t in tasks(st, STAGES[-1]):
        if t.fn in key and _stage_done(st, t):
            groups[key[t.fn]].append(t)
    lines = ["| stage | finished runs with a record here | steps per run | median step time (s) | "
             "training time, sum over runs (h) | first start to last record (h) | CPU |",
             "|---|---:|---|---:|---:|---:|---|"]
    elsewhere = []
    for stage, ts in groups.items():
        if not ts:
            continue
        recs = {t.name: run_time(st.out_dir / t.name) for t in ts}
        have = {k: v for k, v in recs.items() if v}
        elsewhere += [k for k, v in recs.items() if not v]
        if not have:
            continue
        steps = sorted({v["steps"] for v in have.values()})
        span = max(v["end"] for v in have.values()) - min(v["start"] for v in have.values())
        lines.append(f"| {stage} | {len(have)}/{len(ts)} | {', '.join(map(str, steps))} | "
                     f"{np.median([v['median'] for v in have.values()]):.2f} | "
                     f"{sum(v['train_s'] for v in have.values()) / 3600:.1f} | {span / 3600:.1f} | "
                     f"{', '.join(sorted({c for v in have.values() for c in v['cpus']}))} |")
    evals = {"bases": [], "comparison runs": []}
    for s in st.trunk.seeds:
        if evaluated(st, "base", s, None):
            evals["bases"] += [st.out_dir / "eval" / f"{point_name(p)}.images.json" for p in curve_checkpoints(st, "base", s, None)]
    for t in tasks(st, "compare"):
        if t.fn is run_compare and compare_done(st, *t.args[1:]):
            evals["comparison runs"].append(st.out_dir / "eval" / f"{point_name(compare_checkpoint(st, *t.args[1:]))}.images.json")
    ev_lines = []
    for what, files in evals.items():
        if files:
            e = eval_time(files)
            ev_lines.append(f"| evaluations, {what} | {e['points']} points × {e['images'] // e['points']} images | "
                            f"{e['seconds'] / 3600:.2f} |")
    out = ["Training (`step_time` of every logged step in each run's `metrics.jsonl`: the training time is "
           "the mean × the run's steps; the span runs from the first start in `study.json` to the last "
           "`wall` stamp, so it includes evaluations, pauses and runs side by side):", "", *lines]
    if len(lines) == 2:
        out = ["Training: no finished run has a record in this study's folder yet."]
    if elsewhere:
        out += ["", f"No run record in this study's folder for {len(elsewhere)} finished run(s) (trained elsewhere, "
                    f"in the store)" + (f": {', '.join(elsewhere)}." if len(elsewhere) <= 12 else ".")]
    out += ["", "Evaluation (real bitstreams; the encode + decode time of every image, summed):", "",
            "| stage | evaluated | coding time (h) |", "|---|---|---:|", *ev_lines] if ev_lines else \
        ["", "Evaluation: no point evaluated yet."]
    return out


def primary_row(st: Study, summary: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The primary comparison's trunk-level PCHIP row of a pre-registered summary."""
    pre = st.compare.analysis
    if not pre.comparisons:
        return None
    first = (pre.comparisons[0]["test"], pre.comparisons[0]["anchor"])
    return next((r for r in summary if (r["test"], r["anchor"]) == first and r["method"] == "pchip"), None)


def _verdict(r: dict[str, Any]) -> str:
    """The decision rule in one word (the table's column)."""
    if r["n"] < 3:
        return "undefined"
    return "helps" if r["t_high"] < 0 else "hurts" if r["t_low"] > 0 else "no effect detected"


def answer_markdown(st: Study, summary: list[dict[str, Any]], ready: list[tuple[int, int]],
                    figure: str | None = None, sources: str = "") -> list[str]:
    """The answer first: the primary comparison as one table (estimate, t-interval, bootstrap
    interval, trunks, the decision by the pre-registered rule) and its figure; before every block
    is evaluated, what is done and what is pending, and no answer."""
    pre = st.compare.analysis
    test, anchor = pre.comparisons[0]["test"], pre.comparisons[0]["anchor"]
    lines = ["", "#### Answer (pre-registered primary analysis)", ""]
    if not _answer_ready(st, ready):
        lines += [f"**Pending.** The primary comparison, `{test}` against `{anchor}` (BD-rate, PCHIP, trunks "
                  f"as the unit), needs every (trunk, fine-tune seed) block with every arm evaluated; "
                  f"{len(ready)} of {len(blocks(st))} blocks are. No answer is given before then. Done and pending:",
                  "", *progress_markdown(st)]
        return lines
    r = primary_row(st, summary)
    t_ci = f"[{_fmt(r['t_low'])}, {_fmt(r['t_high'])}]" if r["n"] >= 2 else "undefined"
    b_ci = f"[{_fmt(r['boot_low'])}, {_fmt(r['boot_high'])}]" if r["boot_samples"] else "undefined"
    lines += ["| comparison | BD-rate % (mean over trunks) | 95 % t-interval | two-level bootstrap 95 % | trunks | decision |",
              "|---|---:|---|---|---:|---|",
              f"| `{test}` vs `{anchor}` | {_fmt(r['mean'])} | {t_ci} | {b_ci} | {r['n']}/{r['of']} | {_verdict(r)} |",
              "", f"**Answer**: {decision(r)}" if r["n"] >= 3 else f"**Answer**: {decision(r)}."]
    if r["boot_samples"]:
        lines[-1] += (f" Bootstrap: {r['boot_samples']} of {r['boot_samples'] + r.get('boot_dropped', 0)} draws "
                      "defined, trunks and the test images resampled.")
    if figure:
        lines += ["", f"![BD-rate per trunk, mean and intervals]({figure})", "",
                  f"Figure: each trunk's BD-rate (dots), the mean over trunks with its 95 % t-interval and the "
                  f"two-level bootstrap interval; from the per-image files {sources}."]
    return lines


def secondary_markdown(st: Study, summary: list[dict[str, Any]], rows: list[dict[str, Any]],
                       title: str = "#### Secondary analyses (trunks as the unit)", interim: bool = False) -> list[str]:
    """The secondary analyses of the protocol: every other comparison (and every one with cubic
    interpolation) at the trunk level, the equivalence checks and the point-wise gaps."""
    pre = st.compare.analysis
    trunks = sorted({r["seed"] for r in rows})
    lines = ["", title, "",
             "| comparison | method | " + " | ".join(f"trunk {s}" for s in trunks)
             + " | mean over trunks | 95 % t-interval | two-level bootstrap 95 % | decision rule |",
             "|---|---|" + "---:|" * len(trunks) + "---:|---|---|---|"]
    for r in summary:
        t_ci = f"[{_fmt(r['t_low'])}, {_fmt(r['t_high'])}]" if r["n"] >= 2 else "undefined (< 2 trunks)"
        b_ci = f"[{_fmt(r['boot_low'])}, {_fmt(r['boot_high'])}]" if r["boot_samples"] else "-"
        lines.append(f"| {r['test']} vs {r['anchor']} | {r['method']} | "
                     + " | ".join(_fmt(r["trunks"].get(s)) for s in trunks)
                     + f" | {_fmt(r['mean'])} | {t_ci} | {b_ci} | {'(interim)' if interim else _verdict(r)} |")
    for cmp in pre.equivalence:
        r = next(x for x in summary if (x["test"], x["anchor"]) == (cmp["test"], cmp["anchor"]) and x["method"] == "pchip")
        lines += ["", f"Equivalence, `{cmp['test']}` against `{cmp['anchor']}` (margin ±{pre.margin} %): "
                      + (f"interim t-interval [{_fmt(r['t_low'])}, {_fmt(r['t_high'])}] ({r['n']} trunks), no decision."
                         if interim else f"{equivalent(r, pre.margin)}.")]
    lines += ["", "Point-wise gaps (secondary 6): each block's points inside the anchor's range averaged, then per "
                  "trunk, then over the trunks; mean and 95 % t-interval over trunks (n/N: trunks with a point inside).",
              "", "| comparison | PSNR difference at equal rate (dB) | rate difference at equal PSNR (%) |", "|---|---|---|"]
    lines += [f"| {g['test']} vs {g['anchor']} | {_gap_cell(g['gaps'], 3, 'trunks')} | {_gap_cell(g['rate_gaps'], 2, 'trunks')} |"
              for g in gap_summary(st, rows)]
    notes = sorted({n for r in summary for n in r["notes"]})
    if notes:
        lines += ["", "Undefined block values and why:", *[f"- {n}" for n in notes]]
    return lines


def _gap_cell(g: dict[str, Any], digits: int, unit: str) -> str:
    if g["n"] == 0:
        return f"0/{g['of']}: undefined"
    t_ci = f"[{_fmt(g['low'], digits)}, {_fmt(g['high'], digits)}]" if g["n"] >= 2 else f"undefined (< 2 {unit})"
    return f"{g['n']}/{g['of']}: {_fmt(g['mean'], digits)} {t_ci}"


def _setup_lines(st: Study) -> list[str]:
    runs = [st.out_dir / t.name for t in tasks(st, STAGES[-1]) if t.fn is not run_evaluate and _stage_done(st, t)]
    commits = sorted({sess["commit"] for run in runs if (run / "study.json").is_file()
                      for sess in json.loads((run / "study.json").read_text())["sessions"]})
    lines = [f"- model `{st.model}`, batch {st.batch}, patch {st.patch}; code: {', '.join(c[:10] for c in commits)}",
             f"- trunks: λ {st.trunk.lmbda}, seeds {st.trunk.seeds}, lr {st.trunk.lr}, gate L_D <= {st.trunk.gate_ld} "
             f"on {st.test_patch}-px test crops every {st.trunk.check_every} steps, cap {st.trunk.max_steps}",
             f"- bases: λ {st.branch.lambdas}, {st.branch.steps} steps from each trunk",
             f"- comparisons: arms {list(st.compare.arms)}, fine-tune seeds {st.compare.seeds}, "
             f"{st.compare.steps} steps, lr {st.compare.lr} -> {st.compare.step_lrs} at {st.compare.milestones}"]
    ext = st.compare.extend
    if ext.arms:
        lines.append(f"- quality-matched sampling: {ext.arms} also at λ {ext.lambdas}, fine-tuned from the "
                     f"λ {ext.base} bases")
    return lines


def _models_lines(st: Study) -> tuple[list[str], list[dict[str, Any]]]:
    trunks = read_index(st.store_dir)
    lines = ["| trunk | steps | gate met | crop PSNR | crop L_D |", "|---|---:|---|---:|---:|"]
    for s in st.trunk.seeds:
        m = trunks.get(f"{trunk_name(s)}.pt")
        if m:
            lines.append(f"| {s} | {m['step']} | {'yes' if m['gate_met'] else 'no'} | {m['eval']['psnr']:.2f} | "
                         f"{m['eval']['D']:.3f} |")
    bases = base_points(st)
    lines += ["", "| base (seed, λ) | bpp | PSNR | L_D | in [0.3, 3] | measured on |", "|---|---:|---:|---:|---|---|"]
    lines += [f"| {b['seed']}, {b['lmbda']} | {b['bpp']:.4f} | {b['psnr']:.2f} | {b['L_D']:.2f} | "
              f"{'yes' if 0.3 <= b['L_D'] <= 3 else 'no'} | {b['source']} |" for b in bases]
    return lines, bases


def _per_block_lines(st: Study, rows: list[dict[str, Any]], ready: list[tuple[int, int]]) -> list[str]:
    lines = ["", "Per block (descriptive): BD-rate % of each comparison in each (trunk, fine-tune seed) block.", "",
             "| comparison | method | " + " | ".join(f"s{s}-f{f}" for s, f in ready) + " |",
             "|---|---|" + "---:|" * len(ready)]
    for test, anchor in comparisons(st):
        for m in dict.fromkeys(r["method"] for r in rows):
            by = {(r["seed"], r["ft_seed"]): r["bd_rate"] for r in rows
                  if (r["test"], r["anchor"], r["method"]) == (test, anchor, m)}
            lines.append(f"| {test} vs {anchor} | {m} | " + " | ".join(_fmt(by.get(b)) for b in ready) + " |")
    return lines


def _pointwise_lines(st: Study, rows: list[dict[str, Any]]) -> list[str]:
    lines = ["", "Each test point against its anchor's curve (PCHIP): its PSNR minus the anchor's at the same "
                 "rate (points inside the anchor's rate range, in rate order), and its rate against the "
                 "anchor's at the same PSNR (points inside the anchor's PSNR range, in PSNR order; negative: "
                 "fewer bits); each cell starts with how many of the arm's points lie inside. Where a BD-rate is "
                 "undefined, this says whether the points lie above or below the anchor's curve.", "",
             "| comparison | block | PSNR difference at equal rate (dB) | rate difference at equal PSNR (%) |",
             "|---|---|---|---|"]
    for r in (r for r in rows if r["method"] == rows[0]["method"]):
        n = len(curve_points(st, r["test"])[1])
        lines.append(f"| {r['test']} vs {r['anchor']} | s{r['seed']}-f{r['ft_seed']} | "
                     f"{len(r['gaps'])}/{n}: {', '.join(f'{g:+.3f}' for g in r['gaps']) or '-'} | "
                     f"{len(r['rate_gaps'])}/{n}: {', '.join(f'{g:+.1f}' for g in r['rate_gaps']) or '-'} |")
    return lines


def preregistered_report(st: Study, samples: int, figure: str | None = None,
                         sources: str = "") -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """The block of a pre-registered study, answer first: the primary result (or, with partial
    data, what is done and pending), the secondary analyses, the compute each stage took, then the
    details (setup, models, per-block values, exploratory runs)."""
    ready = evaluated_blocks(st) if all(evaluated(st, "base", s, None) for s in st.trunk.seeds) else []
    rows = bd_rows(st, among=ready) if ready else []
    summary = trunk_summary(st, rows, samples) if rows else []
    complete = _answer_ready(st, ready)
    lines = [f"### `{st.name}`: reported {datetime.now(timezone.utc).date()}", "",
             f"Protocol: {len(st.trunk.seeds)} trunks, {len(blocks(st))} (trunk, fine-tune seed) blocks; "
             + ("every block evaluated." if complete else
                f"**partial data**: {len(ready)} of {len(blocks(st))} blocks evaluated.")]
    lines += answer_markdown(st, summary, ready, figure if complete else None, sources)
    if complete:
        lines += ["", "Done and pending:", "", *progress_markdown(st)]
    if rows:
        lines += secondary_markdown(st, summary, rows, "#### Secondary analyses (trunks as the unit)" if complete else
                                    f"#### Interim values over {len(ready)} of {len(blocks(st))} blocks (trunks as the "
                                    "unit; blocks finish in a fixed order; not the answer)", interim=not complete)
    else:
        lines += ["", "#### Secondary analyses", "", "Pending: no block has every arm evaluated yet."]
    lines += ["", "#### Compute", "", *compute_markdown(st)]
    models, bases = _models_lines(st)
    lines += ["", "#### Details", "", *_setup_lines(st), "", *models]
    if rows:
        lines += exploratory_markdown(st) + _per_block_lines(st, rows, ready) + _pointwise_lines(st, rows)
    return "\n".join(lines + scratch_markdown(st)) + "\n", summary, bases


def report_markdown(st: Study, samples: int = 1000, figure: str | None = None,
                    sources: str = "") -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """The RESULTS.md block of the study, from its files only; also its summary and base rows. A
    pre-registered study (``compare.analysis.comparisons``) gives its answer first
    (:func:`preregistered_report`; ``figure``: the path the block cites for the primary figure)."""
    if st.compare.analysis.comparisons:
        return preregistered_report(st, st.compare.analysis.samples, figure, sources)
    lines = [f"### `{st.name}`: reported {datetime.now(timezone.utc).date()}", "", *_setup_lines(st), ""]
    models, bases = _models_lines(st)
    lines += models
    runs = [t for t in tasks(st, "compare") if t.fn is run_compare]
    done = sum(compare_done(st, *t.args[1:]) for t in runs)
    ready = evaluated_blocks(st) if all(evaluated(st, "base", s, None) for s in st.trunk.seeds) else []
    if not ready:
        lines += ["", f"Comparisons pending: {done} of {len(runs)} fine-tuning runs finished and evaluated with "
                      "real bitstreams; no (trunk, fine-tune seed) block has every arm yet, so no BD-rate."]
        return "\n".join(lines + scratch_markdown(st)) + "\n", [], bases
    if len(ready) < len(blocks(st)):
        lines += ["", f"**Interim**: {done} of {len(runs)} fine-tuning runs done; BD-rates over the "
                      f"{len(ready)} of {len(blocks(st))} (trunk, fine-tune seed) blocks evaluated so far "
                      f"({', '.join(f's{s}-f{f}' for s, f in ready)}; blocks run in a fixed order)."]
    rows = bd_rows(st, among=ready)
    summary = summarize(st, rows, samples)
    lines += ["", "| comparison | method | defined | mean BD-rate % | 95 % t-interval | paired image bootstrap 95 % | values |",
              "|---|---|---:|---:|---|---|---|"]
    for r in summary:
        t_ci = f"[{_fmt(r['t_low'])}, {_fmt(r['t_high'])}]" if r["n"] >= 2 else "undefined (< 2 values)"
        b_ci = f"[{_fmt(r['boot_low'])}, {_fmt(r['boot_high'])}]" if r["boot_samples"] else "undefined"
        lines.append(f"| {r['test']} vs {r['anchor']} | {r['method']} | {r['n']}/{r['of']} | {_fmt(r['mean'])} | "
                     f"{t_ci} | {b_ci} | {', '.join(_fmt(v) for v in r['values'])} |")
    notes = sorted({n for r in summary for n in r["notes"]})
    if notes:
        lines += ["", "Undefined values and why:", *[f"- {n}" for n in notes]]
    lines += _pointwise_lines(st, rows)
    lines += ["", "The same gaps, averaged within each block (the block's points inside the anchor's range), "
                  "then over the blocks: mean and 95 % t-interval over blocks (n/N: blocks with a point inside).", "",
              "| comparison | PSNR difference at equal rate (dB) | rate difference at equal PSNR (%) |",
              "|---|---|---|"]
    lines += [f"| {g['test']} vs {g['anchor']} | {_gap_cell(g['gaps'], 3, 'blocks')} | {_gap_cell(g['rate_gaps'], 2, 'blocks')} |"
              for g in gap_summary(st, rows)]
    return "\n".join(lines + scratch_markdown(st)) + "\n", summary, bases


PRIMARY_FIGURE = "primary_bd_rate_per_trunk"  # the pre-registered answer: BD per trunk, mean, intervals
GAP_FIGURE = "rate_gap_at_equal_psnr_per_block"  # a study without one: the point-wise rate gaps


def _eval_glob(st: Study, curve: str) -> str:
    """The per-image files of a curve's arm, as a path from the study's root."""
    arm = curve_points(st, curve)[0]
    return f"`{os.path.relpath(st.out_dir / 'eval', st.root)}/{arm}-l*-step_*.images.json`"


def report(st: Study, results: Path, figures: Path | None = None, samples: int = 1000) -> Path:
    """Write the study's block into ``results`` (RESULTS.md) and its figures."""
    from lic_core.analysis import viz

    pre = st.compare.analysis
    figure = sources = None
    if pre.comparisons and figures is not None:
        figure = f"{os.path.relpath(figures, results.parent)}/{PRIMARY_FIGURE}.png"
        sources = " and ".join(_eval_glob(st, c) for c in (pre.comparisons[0]["test"], pre.comparisons[0]["anchor"]))
    body, summary, _ = report_markdown(st, samples, figure, sources or "")
    if figures is not None and summary:
        import pandas as pd

        curves = [load_image_curve(st, "base", s, None) for s in st.trunk.seeds]
        rd = [{"name": f"base s{s}", "results": {"bpp": c.bpp.mean(1).tolist(), "psnr-rgb": c.quality.mean(1).tolist()}}
              for s, c in zip(st.trunk.seeds, curves)]
        for arm in main_arms(st):
            cs = [load_image_curve(st, arm, s, f) for s, f in evaluated_blocks(st)]
            rd.append({"name": arm, "results": {"bpp": np.mean([c.bpp.mean(1) for c in cs], 0).tolist(),
                                                "psnr-rgb": np.mean([c.quality.mean(1) for c in cs], 0).tolist()}})
        viz.save_figure(viz.rd_curves(rd, title=f"{st.name}: Kodak (24 images)"), "rd_curves", figures)
        table = pd.DataFrame([{**r, "low": r["t_low"], "high": r["t_high"],
                               **{f"seed {i}": v for i, v in enumerate(r["values"])}} for r in summary])
        if table.loc[table["method"] == "pchip", "mean"].notna().any():
            viz.save_figure(viz.bd_bars_ci(table, "pchip", band=EXPECTED, band_label="expected 2-5% gain"),
                            "bd_rate_ci", figures)
        if pre.comparisons:
            r = primary_row(st, summary)
            if figure and r is not None and np.isfinite(r["mean"]) and _answer_ready(st, evaluated_blocks(st)):
                viz.save_figure(viz.estimates_ci([{"label": f"{r['test']}\nvs {r['anchor']}\n(dots: trunks)",
                                                   "values": {str(s): v for s, v in r["trunks"].items()},
                                                   "mean": r["mean"], "low": r["t_low"], "high": r["t_high"],
                                                   "boot_low": r["boot_low"], "boot_high": r["boot_high"]}],
                                                 xlabel="BD-rate [%] (PCHIP)", unit="trunk",
                                                 band=EXPECTED, band_label="expected 2-5% gain"),
                                PRIMARY_FIGURE, figures)
        else:
            gap_figure(st, figures)
        body += f"\nFigures: `{os.path.relpath(figures, results.parent)}` (R-D curves: the mean over the evaluated blocks; BD bars: defined values only).\n"
    return write_results(results, st.name, body)


def gap_figure(st: Study, figures: Path) -> Path | None:
    """A study without a pre-registered analysis: each comparison's rate difference at equal PSNR
    per block (the block's points inside the anchor's range averaged) and the mean over the
    blocks with its 95 % t-interval; ``figures/GAP_FIGURE.{pdf,png}``."""
    from lic_core.analysis import viz

    ready = evaluated_blocks(st)
    rows = bd_rows(st, methods=("pchip",), among=ready)
    out = []
    for g in gap_summary(st, rows):
        sel = [r for r in rows if (r["test"], r["anchor"]) == (g["test"], g["anchor"])]
        vals = {f"s{r['seed']}-f{r['ft_seed']}": float(np.mean(r["rate_gaps"])) if r["rate_gaps"] else float("nan")
                for r in sel}
        out.append({"label": f"{g['test']} vs {g['anchor']}", "values": vals, **{k: g["rate_gaps"][k] for k in ("mean", "low", "high")}})
    if not any(np.isfinite(r["mean"]) for r in out):
        return None
    fig = viz.estimates_ci(out, xlabel="rate difference at equal PSNR [%]", unit="block")
    return viz.save_figure(fig, GAP_FIGURE, figures)[-1]


def status(st: Study, stage: str = "evaluate") -> list[dict[str, Any]]:
    """One row per task of ``stage`` (and those before it): done / partial / pending, the step its
    run folder reached and its last measured Kodak-crop PSNR and ``L_D``."""
    rows = []
    for t in tasks(st, stage):
        if t.fn is run_evaluate:
            rows.append({"task": t.name, "state": "done" if finished(st, t) else "pending"})
            continue
        run_dir = st.out_dir / t.name
        step, ev = current_step(run_dir), last_eval(run_dir)
        state = "done" if finished(st, t) else ""
        if t.fn is run_compare:  # done once evaluated; "trained" while only its checkpoint exists
            state = state or ("trained" if compare_checkpoint(st, *t.args[1:]).is_file() else "")
            step = st.compare.steps if state == "done" else step
        rows.append({"task": t.name, "state": state or ("partial" if step else "pending"),
                     "step": step, "psnr": ev and round(ev["psnr"], 2), "L_D": ev and round(ev["D"], 3)})
    return rows


def finished(st: Study, t: Task) -> bool:
    """Whether a task is done by the committed files: trunks and bases in the store, comparisons
    evaluated, from-scratch runs measured at their last step, curves summarized from a result on
    every test image of every point."""
    if t.fn is run_evaluate:
        return (st.out_dir / "eval" / f"{t.name.removeprefix('eval-')}.json").is_file() and evaluated(st, *t.args[1:])
    if t.fn is run_compare:
        return compare_done(st, *t.args[1:])
    if t.fn is run_scratch:
        return scratch_done(st, *t.args[1:])
    return (st.store_dir / f"{t.name}.pt").is_file()


def finished_runs(st: Study) -> list[Path]:
    """Run folders of finished training runs."""
    return [st.out_dir / t.name for t in tasks(st, STAGES[-1])
            if t.fn is not run_evaluate and finished(st, t) and (st.out_dir / t.name / "study.json").is_file()]


@command("study")
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m studies.trunk_branch", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train a stage (and what it needs); resumes")
    r.add_argument("--study", required=True)
    r.add_argument("--stage", choices=STAGES, default="branch")
    r.add_argument("--jobs", type=int, default=None, help="processes side by side (default: the study's jobs)")
    r.add_argument("--threads", type=int, default=None, help="torch threads per process (default: the study's)")
    r.add_argument("--root", default=".", help="folder the study's relative paths start at")
    r.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local worker processes, Slurm via submitit, or submitit on this machine")
    c = sub.add_parser("status", help="state of every run of a stage")
    c.add_argument("--study", required=True)
    c.add_argument("--stage", choices=STAGES, default="evaluate")
    c.add_argument("--root", default=".")
    fin = sub.add_parser("finish-trunks", help="export every unfinished trunk at its latest checkpoint now "
                         "(stop the run first; its meta records why)")
    fin.add_argument("--study", required=True)
    fin.add_argument("--root", default=".")
    fin.add_argument("--why", required=True, help="recorded in each trunk's meta, e.g. 'time budget'")
    rp = sub.add_parser("report", help="write the study's block of RESULTS.md and its figures")
    rp.add_argument("--study", required=True)
    rp.add_argument("--root", default=".")
    rp.add_argument("--results", default="RESULTS.md")
    rp.add_argument("--figures", default="", help="folder for the figures (default: figures/<study name>)")
    rp.add_argument("--samples", type=int, default=1000, help="paired bootstrap samples")
    v = sub.add_parser("verify", help="check a store folder against its SHA-256 manifest")
    v.add_argument("folder")
    args = ap.parse_args(argv)
    if args.cmd == "status":
        st = load_study(args.study, args.root)
        import pandas as pd

        print(pd.DataFrame(status(st, args.stage)).to_string(index=False))
        return 0
    if args.cmd == "finish-trunks":
        st = load_study(args.study, args.root)
        for s in st.trunk.seeds:
            if not (st.store_dir / f"{trunk_name(s)}.pt").is_file():
                print(f"exported {export_trunk(st, s, args.why)}")
        return 0
    if args.cmd == "report":
        st = load_study(args.study, args.root)
        path = report(st, st.path(args.results), st.path(args.figures or f"figures/{st.name}"), args.samples)
        print(f"wrote {path}")
        return 0
    if args.cmd == "verify":
        bad = verify_store(args.folder)
        for name, why in bad.items():
            print(f"{name}: {why}")
        print("ok" if not bad else f"{len(bad)} problem(s)")
        return 1 if bad else 0
    st = load_study(args.study, args.root)
    t0 = time.time()
    if args.threads:
        st.threads = args.threads
    states = run_stage(st, args.stage, args.jobs, args.executor)
    print(f"[study] {args.stage}: {sum(s == 'done' for s in states.values())}/{len(states)} done "
          f"in {(time.time() - t0) / 60:.1f} min")
    return 0 if all(s == "done" for s in states.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
