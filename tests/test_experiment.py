"""The scratch study's protocol and analysis (studies.scratch_sweep): statistics, sweep building from fake run
folders, the RESULTS.md writer on synthetic curves. No training here: the run folders are written
the way notebook 01 / 04 leave them (config.yaml, checkpoints/, metrics.jsonl) with synthetic
numbers; one test codes a real (untrained) checkpoint on one Kodak crop."""
from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import nbformat
import numpy as np
import pytest
import yaml
from scipy import stats

from studies import scratch_sweep as ex
from lic_core.errors import ConfigError, LicError
from lic_core.paths import REPO

CPU_YAML = REPO / "studies" / "scratch_600" / "cpu.yaml"
STEP_TIME = {"standard": 0.25, "balanced": 0.325, "hierarchical": 0.44, "qp": 0.45}
TASKS = {"balanced": ("D", "bpp"), "hierarchical": ("D", "R_z", "R_s1", "R_s2", "R_s3"), "qp": ("D", "bpp")}


# ------------------------------------------------------------------------------------ fakes


def fake_run(run_dir: Path, mode: str, lmbda: float, seed: int, steps: int, init: str = "") -> Path:
    """A finished run folder as the engine leaves it; returns its checkpoint."""
    (run_dir / "checkpoints").mkdir(parents=True)
    cfg = {"model": {"name": "tiny"}, "loss": {"lmbda": lmbda, "mode": mode},
           "run": {"seed": seed, "steps": steps}, "finetune": {"init": init}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    recs = []
    for step in range(1, steps + 1, max(steps // 5, 1)):
        rec = {"kind": "train", "step": step, "step_time": STEP_TIME[mode],
               "loss": 1.0 / step, "bpp": 0.5, "psnr": 28.0, "R_z": 0.02, "R_s1": 0.1, "R_s2": 0.18, "R_s3": 0.2}
        for t in TASKS.get(mode, ()):
            rec[f"z_{t}"] = rec[f"a_{t}"] = 1 / len(TASKS[mode])
        recs.append(rec)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    ckpt = run_dir / "checkpoints" / f"step_{steps:08d}.pt"
    ckpt.write_bytes(b"not read by these tests")
    return ckpt


def fake_sweep(spec, modes, stage: str, skip: set = frozenset()) -> None:
    """Every job of ``spec`` done (except ``skip`` (λ, seed)) with one run folder per mode."""
    jobs = {}
    for job in spec.expand():
        p = job.parameters
        key = (p["lmbda"], p["seed"])
        jobs[job.name] = {"state": "failed" if key in skip else "done", "parameters": p}
        if key in skip:
            continue
        root = spec.output / job.name / "run" / ("finetune" if stage == "finetune" else "")
        for mode in modes:
            fake_run(root / f"{mode}-l{p['lmbda']:g}-s{p['seed']}", mode, p["lmbda"], p["seed"], p["steps"],
                     p.get("init", ""))
        wandb = spec.output / job.name / "run" / "wandb" / "files"  # a config.yaml that is no run
        wandb.mkdir(parents=True, exist_ok=True)
        (wandb / "config.yaml").write_text("_wandb: {value: {}}\n")
    spec.output.mkdir(parents=True, exist_ok=True)
    (spec.output / "manifest.json").write_text(json.dumps({"sweep": spec.name, "notebook": str(spec.notebook),
                                                           "jobs": jobs}))


def curve(bpp, psnr, ckpts, name="c") -> dict:
    scales = {k: [b * f for b in bpp] for k, f in zip(ex.SCALE_KEYS, (0.05, 0.2, 0.35, 0.38, 0.02))}
    return {"name": name, "description": "synthetic", "results": {
        "bpp": list(bpp), "psnr-rgb": list(psnr), "ms-ssim-rgb": [0.9] * len(bpp), **scales,
        "checkpoint": [str(c) for c in ckpts], "num_images": [24] * len(bpp)}}


BPP = np.array([0.15, 0.3, 0.6, 1.2])
PSNR = np.array([27.0, 29.5, 32.0, 34.5])


@pytest.fixture
def protocol(tmp_path):
    spec = ex.load_protocol(CPU_YAML, grid={"seed": [0, 1, 2]}, output=tmp_path / "exp")
    fake_sweep(spec, ex.TRAIN_MODES, "train")
    return spec


# ------------------------------------------------------------------------------------ statistics


def test_mean_ci_matches_scipy_student_t():
    v = [-1.2, -3.4, -2.0, -0.7]
    ci = ex.mean_ci(v)
    low, high = stats.t.interval(0.95, len(v) - 1, loc=np.mean(v), scale=stats.sem(v))
    assert (ci.n, ci.low, ci.high) == (4, pytest.approx(low), pytest.approx(high))
    one = ex.mean_ci([1.0, 2.0, 3.0])  # t_{0.975, 2} = 4.302653: half-width 4.302653 / sqrt(3)
    assert (one.mean, one.std) == (2.0, 1.0) and one.high - 2.0 == pytest.approx(2.4841377, rel=1e-6)
    assert ex.mean_ci([1.0, 2.0, 3.0], level=0.9).high < one.high


def test_mean_ci_leaves_out_undefined_seeds():
    ci = ex.mean_ci([-2.0, math.nan, -3.0, -1.0])
    assert ci.n == 3 and ci == ex.mean_ci([-2.0, -3.0, -1.0])
    single = ex.mean_ci([math.nan, -2.5])
    assert (single.n, single.mean) == (1, -2.5) and math.isnan(single.low) and math.isnan(single.std)
    none = ex.mean_ci([math.nan, math.nan])
    assert none.n == 0 and math.isnan(none.mean)


def test_verdict_words_follow_the_interval():
    assert "significant" in ex.verdict(ex.Interval(-3.0, 0.4, 3, -3.9, -2.1)) \
        and "compatible" in ex.verdict(ex.Interval(-3.0, 0.4, 3, -3.9, -2.1))
    null = ex.verdict(ex.Interval(-0.3, 0.5, 3, -1.5, 0.9))
    assert "no significant difference" in null and "2% or more is excluded" in null
    assert "more bits than standard" in ex.verdict(ex.Interval(1.0, 0.1, 3, 0.5, 1.5))
    assert "single seed" in ex.verdict(ex.mean_ci([math.nan, -1.0]))
    assert "undefined" in ex.verdict(ex.mean_ci([math.nan]))


def test_bd_per_seed_scaled_rates_and_an_undefined_seed():
    """A test curve at 0.97 x the anchor's rates has BD-rate -3 %; a non-monotonic curve is NaN."""
    curves, factors = {}, {0: 0.97, 1: 0.98, 2: 0.99}
    for seed, f in factors.items():
        curves[("train", "standard", seed)] = curve(BPP, PSNR, [])
        curves[("train", "balanced", seed)] = curve(BPP * f, PSNR, [])
    curves[("train", "hierarchical", 0)] = curve(BPP, PSNR[::-1], [])  # quality falls with rate
    per_seed = ex.bd_per_seed(curves, ("train", "standard"), [("train", "balanced"), ("train", "hierarchical")])
    bal = per_seed[(per_seed["test"] == "balanced")]
    for m in ex.METHODS:
        got = bal[bal["method"] == m].set_index("seed")["bd_rate"]
        assert got.to_dict() == pytest.approx({s: (f - 1) * 100 for s, f in factors.items()}, abs=1e-6)
    hier = per_seed[per_seed["test"] == "hierarchical"].set_index(["seed", "method"])
    assert math.isnan(hier.loc[(0, "pchip"), "bd_rate"]) and "must increase" in hier.loc[(0, "pchip"), "note"]
    assert "no test curve for seed 1" in hier.loc[(1, "cubic"), "note"]
    summary = ex.summarize_bd(per_seed).set_index(["test", "method"])
    row = summary.loc[("balanced", "pchip")]
    assert row["mean"] == pytest.approx(-2.0) and row["n"] == 3
    assert (row["low"], row["high"]) == pytest.approx(stats.t.interval(0.95, 2, loc=-2.0, scale=stats.sem([-3, -2, -1])))
    assert summary.loc[("hierarchical", "pchip"), "n"] == 0


# ------------------------------------------------------------------------------------ protocol


def _parameters_cell(notebook: str) -> set[str]:
    nb = nbformat.read(REPO / "notebooks" / notebook, as_version=4)
    tree = ast.parse(nb.cells[0].source)
    return {t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets}


@pytest.mark.parametrize("name", ["cpu", "gpu"])
def test_protocol_yaml_same_for_every_mode(name):
    spec = ex.load_protocol(REPO / "studies" / "scratch_600" / f"{name}.yaml")
    jobs = spec.expand()
    assert len(jobs) == 12 and {j.parameters["lmbda"] for j in jobs} == {0.0035, 0.0067, 0.013, 0.025}
    assert {j.parameters["seed"] for j in jobs} == {0, 1, 2}
    assert all(j.parameters["modes"] == list(ex.TRAIN_MODES) for j in jobs)  # one job trains all modes
    assert set(jobs[0].parameters) <= _parameters_cell("01_train.ipynb")


def test_load_protocol_overrides_and_errors(tmp_path):
    spec = ex.load_protocol(CPU_YAML, {"steps": 6}, {"lmbda": [0.0067, 0.025]}, tmp_path / "o")
    assert spec.output == tmp_path / "o" and len(spec.expand()) == 6
    assert all(j.parameters["steps"] == 6 for j in spec.expand())
    assert ex.stage_dirs(spec)["finetune"] == tmp_path / "o-finetune"
    with pytest.raises(ConfigError, match="cannot override.*stepz"):
        ex.load_protocol(CPU_YAML, {"stepz": 6})
    with pytest.raises(ConfigError, match="non-empty list"):
        ex.load_protocol(CPU_YAML, grid={"seed": []})


def test_collect_runs_reads_run_configs(protocol):
    runs = ex.collect_runs(protocol.output)
    assert len(runs) == 12 * 3 and set(runs["stage"]) == {"train"}  # the wandb config.yaml is no run
    one = runs[(runs["mode"] == "balanced") & (runs["lmbda"] == 0.013) & (runs["seed"] == 2)].iloc[0]
    assert one["checkpoint"] == one["run_dir"] / "checkpoints" / "step_00000600.pt"
    first = protocol.expand()[0].name
    assert set(ex.collect_runs(protocol.output, [first])["job"]) == {first}
    dup = protocol.output / first / "run" / "copy"
    fake_run(dup, "standard", 0.0035, 0, 600)
    with pytest.raises(LicError, match="several runs of the same"):
        ex.collect_runs(protocol.output)


def test_finetune_jobs_start_from_each_standard_checkpoint(protocol):
    ft = ex.finetune_spec(protocol, ex.Finetune(modes=("qp", "standard"), fraction=0.25, lr=3e-5))
    jobs = ft.expand()
    assert ft.notebook.name == "04_finetuning.ipynb" and ft.output == ex.stage_dirs(protocol)["finetune"]
    assert (ft.kernel, ft.timeout, ft.jobs, ft.slurm) == (protocol.kernel, protocol.timeout, protocol.jobs, protocol.slurm)
    assert len(jobs) == 12 and len({j.name for j in jobs}) == 12
    runs = ex.collect_runs(protocol.output).query("mode == 'standard'")
    want = {(r.lmbda, r.seed): str(r.checkpoint) for r in runs.itertuples()}  # tmp is outside the repo
    assert {(j.parameters["lmbda"], j.parameters["seed"]): j.parameters["init"] for j in jobs} == want
    p = jobs[0].parameters
    assert (p["steps"], p["lr"], p["modes"], p["model"], p["batch"], p["patch"]) == (150, 3e-5, ["qp", "standard"],
                                                                                      "tiny", 4, 128)
    assert set(p) <= _parameters_cell("04_finetuning.ipynb")
    assert ex._portable(REPO / "papermill_runs" / "x.pt") == "papermill_runs/x.pt"


def test_finetune_needs_every_train_job_unless_partial(tmp_path):
    spec = ex.load_protocol(CPU_YAML, grid={"seed": [0, 1]}, output=tmp_path / "exp")
    fake_sweep(spec, ex.TRAIN_MODES, "train", skip={(0.013, 1)})
    with pytest.raises(LicError, match=r"\(0.013, 1\)"):
        ex.finetune_spec(spec)
    assert len(ex.finetune_spec(spec, partial=True).expand()) == 7


# ------------------------------------------------------------------------------------ report


def write_curves(spec, runs, shift: dict[str, float]) -> None:
    """Synthetic evaluation: each (stage, mode, seed) curve at ``shift[label] * (1 + 0.01 seed)``
    times the anchor's rates."""
    out = ex.stage_dirs(spec)["eval"]
    for (stage, mode, seed), g in runs.groupby(["stage", "mode", "seed"]):
        g = g.sort_values("lmbda")
        f = shift[ex.label(stage, mode)] * (1 + 0.01 * seed)
        (out / stage).mkdir(parents=True, exist_ok=True)
        (out / stage / f"{ex.curve_name(stage, mode, seed)}.json").write_text(
            json.dumps(curve(BPP * f, PSNR, g["checkpoint"], ex.curve_name(stage, mode, seed))))


def test_report_writes_its_block_tables_and_figures(protocol, tmp_path):
    fake_sweep(ex.finetune_spec(protocol), ("qp", "standard"), "finetune")
    runs = ex.experiment_runs(protocol)
    assert sorted(set(zip(runs["stage"], runs["mode"]))) == [("finetune", "qp"), ("finetune", "standard"),
                                                              ("train", "balanced"), ("train", "hierarchical"),
                                                              ("train", "standard")]
    with pytest.raises(LicError, match="run the evaluate stage first"):
        ex.load_curves(runs, ex.stage_dirs(protocol)["eval"])
    write_curves(protocol, runs, {"standard": 1.0, "balanced": 0.97, "hierarchical": 1.02,
                                  "ft-standard": 0.99, "ft-qp": 0.98})
    results = tmp_path / "RESULTS.md"
    results.write_text("# Results\n\nprotocol text\n\n<!-- BEGIN experiment:experiment_cpu -->\nnot yet run\n"
                       "<!-- END experiment:experiment_cpu -->\n\n## What would change the conclusion\nkept\n")
    code = ex.main(["report", "--sweep", str(CPU_YAML), "--grid", "seed=0,1,2", "--output", str(protocol.output),
                    "--results", str(results), "--figures", str(tmp_path / "fig")])
    assert code == 0
    text = results.read_text()
    assert "not yet run" not in text and text.startswith("# Results\n\nprotocol text") and text.endswith("kept\n")
    assert text.count("<!-- BEGIN experiment:experiment_cpu -->") == 1
    # balanced at 0.97 x (1 + 0.01 seed) / (1 + 0.01 seed) of standard: -3 % in every seed
    assert "| balanced vs standard (pchip) | -3.00 |" in text
    assert "| ft-qp vs ft-standard (pchip) | -1.01 |" in text
    assert "**hierarchical vs standard** (pchip): +2.00%" in text
    assert "**ft-qp vs ft-standard** (pchip): -1.01% (95% CI [-1.01, -1.01], 3 seeds): fewer bits than ft-standard" in text
    assert "| balanced | 0.0035 | 0.1470 |" in text  # R-D points: mean over seeds per (mode, λ)
    assert "| balanced | 0.325 | 12 | 1.300 |" in text  # median step time, runs, ratio to standard
    figs = {p.stem for p in (tmp_path / "fig").glob("*.png")}
    assert figs == {"rd_train", "rd_finetune", "bd_rate_ci", "task_weights_train", "task_weights_finetune",
                    "scale_rates_train"}
    assert "](fig/bd_rate_ci.png)" in text


def test_write_results_replaces_only_its_block(tmp_path):
    path = tmp_path / "R.md"
    ex.write_results(path, "a", "first")
    ex.write_results(path, "b", "other")
    ex.write_results(path, "a", "second")
    text = path.read_text()
    assert "second" in text and "first" not in text and "other" in text
    assert text.index("experiment:a") < text.index("experiment:b")
    path.write_text(text + text)
    with pytest.raises(LicError, match="more than once"):
        ex.write_results(path, "a", "third")


MICRO = {"M": 32, "N": 32, "widths": (16, 24, 32), "heads": 4, "windows": (1, 2, 4)}


def _micro_run(tmp_path: Path, lmbda: float, seed: int, perturb: bool = False) -> dict:
    """A train-stage run row whose checkpoint is an untrained micro HPCM (``perturb``: weights
    scaled by a seed-dependent noise, since the init itself is seeded)."""
    import torch

    from lic_core.models.hpcm import hpcm, save_checkpoint

    ckpt = tmp_path / "runs" / f"standard-l{lmbda}-s{seed}" / "checkpoints" / "step_00000001.pt"
    ckpt.parent.mkdir(parents=True)
    model, gen = hpcm("tiny", **MICRO), torch.Generator().manual_seed(seed)
    if perturb:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1 + 0.2 * torch.randn(p.shape, generator=gen))
    save_checkpoint(model, ckpt)
    return {"stage": "train", "mode": "standard", "lmbda": lmbda, "seed": seed, "checkpoint": ckpt}


def test_evaluate_runs_codes_real_bitstreams(tmp_path, kodak_dir):
    """Two (untrained) micro checkpoints as one curve: one Kodak crop coded to bytes per point."""
    import pandas as pd

    rows = [_micro_run(tmp_path, lmbda, 0) for lmbda in (0.0067, 0.025)]
    runs = pd.DataFrame(rows)
    curves = ex.evaluate_runs(runs, tmp_path / "eval", kodak_dir, limit=1, crop=64, progress=False)
    res = curves[("train", "standard", 0)]["results"]
    assert res["num_images"] == [1, 1] and all(b > 0 for b in res["bpp"])
    assert ex.load_curves(runs, tmp_path / "eval") == curves
    pts = ex.points(curves, runs)
    assert sorted(pts["lmbda"]) == [0.0067, 0.025] and {"bpp_s1", "bpp_z"} <= set(pts.columns)


def test_evaluate_runs_side_by_side_matches_serial(tmp_path, kodak_dir):
    """Curves evaluated in two worker processes (one thread each) give the serial bytes and PSNR."""
    import pandas as pd

    rows = [_micro_run(tmp_path, 0.013, seed, perturb=True) for seed in (0, 1)]
    runs = pd.DataFrame(rows)
    serial = ex.evaluate_runs(runs, tmp_path / "serial", kodak_dir, limit=1, crop=64, progress=False)
    side = ex.evaluate_runs(runs, tmp_path / "side", kodak_dir, limit=1, crop=64, progress=False,
                            jobs=2, threads=1)
    assert side.keys() == serial.keys() == {("train", "standard", 0), ("train", "standard", 1)}
    for k in serial:
        for field in ("bpp", "bpp_s1", "psnr-rgb", "ms-ssim-rgb"):
            assert side[k]["results"][field] == serial[k]["results"][field]
    psnr = [serial[("train", "standard", seed)]["results"]["psnr-rgb"] for seed in (0, 1)]
    assert psnr[0] != psnr[1]


def test_modes_are_the_training_registry():
    from lic_core.training.objectives import MODES

    assert set(ex.TRAIN_MODES) | {"qp"} == set(MODES) and ex.TRAIN_MODES[0] == ex.ANCHOR
    assert set(ex.Finetune().modes) <= set(MODES)
    with pytest.raises(ConfigError, match="not training modes"):
        ex.Finetune(modes=("qp", "famo"))
