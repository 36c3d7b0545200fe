"""Every phase notebook executes through papermill with tiny parameters, and leaves what it promises
(metrics.json, figures as PDF + PNG, tables) in its run folder."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
import yaml

from lic_core.workbench.notebooks import execute
from lic_core.paths import REPO



NOTEBOOKS = REPO / "notebooks"
TINY = {"steps": 3, "batch": 2, "patch": 128}


def run(name: str, out: Path, **params) -> nbformat.NotebookNode:
    """Execute notebook ``name`` into ``out`` (raises on any cell error) and return it."""
    out.mkdir(parents=True, exist_ok=True)
    execute(NOTEBOOKS / f"{name}.ipynb", out / f"{name}.ipynb", params)
    return nbformat.read(out / f"{name}.ipynb", as_version=4)


def images(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def figures(folder: Path) -> set[str]:
    pdf = {p.stem for p in folder.glob("*.pdf")}
    png = {p.stem for p in folder.glob("*.png")}
    assert pdf == png, f"every figure is exported as PDF and PNG in {folder}"
    return pdf


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory) -> Path:
    """A checkpoint store like the shipped one (two standard tiny models, SHA-256 manifest)."""
    from lic_core.workbench import store
    from lic_core.models.hpcm import hpcm, save_checkpoint

    folder = tmp_path_factory.mktemp("store")
    for seed, lmbda in enumerate((0.0067, 0.025)):
        save_checkpoint(hpcm("tiny", seed=seed), folder / "run.pt")
        store.export(folder / "run.pt", folder / f"base-l{lmbda:g}-s0.pt", {"stage": "base", "seed": 0, "lmbda": lmbda})
    (folder / "run.pt").unlink()
    store.write_manifest(folder)
    return folder


@pytest.fixture(scope="module")
def shared_runs(tmp_path_factory, kodak_dir, wikiphotos_dir) -> Path:
    """Runs at two λ trained once by notebook 05 (train_if_missing) and reused by notebook 06."""
    return tmp_path_factory.mktemp("runs")


def test_notebooks_are_committed_clean():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        assert "parameters" in nb.cells[0].metadata.get("tags", []), f"{path.name}: first cell is not tagged parameters"
        assert all(not c.get("outputs") and not c.get("execution_count") for c in nb.cells if c.cell_type == "code"), \
            f"{path.name} is committed with outputs"


def test_01_train(tmp_path, kodak_dir, wikiphotos_dir):
    run_dir = tmp_path / "01"
    nb = run("01_train", tmp_path, run_dir=str(run_dir), **TINY)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["runs"]) == {"standard", "balanced"}
    assert all(r["step"] == TINY["steps"] and Path(r["checkpoint"]).is_file() for r in metrics["runs"].values())
    assert figures(run_dir / "figures") == {"training_curves", "task_weights", "scale_bpp"}
    assert images(nb) == 3


def test_02_hyperparameters(tmp_path, kodak_dir, wikiphotos_dir):
    run_dir = tmp_path / "02"
    nb = run("02_hyperparameters", tmp_path, run_dir=str(run_dir), gamma=[0.001, 0.01], w_lr=[0.025], **TINY)
    best = json.loads((run_dir / "metrics.json").read_text())
    manifest = json.loads((run_dir / "sweep" / "manifest.json").read_text())
    assert sorted(r["state"] for r in manifest["jobs"].values()) == ["done", "done"]
    losses = {job["parameters"]["gamma"]: json.loads((run_dir / "sweep" / name / "run" / "metrics.json").read_text())
              ["runs"]["balanced"]["test_loss"] for name, job in manifest["jobs"].items()}
    assert best["best_gamma"] == min(losses, key=losses.get) and best["best_w_lr"] == 0.025  # the grid's argmin
    assert best["best_test_loss"] == pytest.approx(min(losses.values()))
    assert figures(run_dir / "figures") == {"gamma_wlr_grid"} and images(nb) == 1


def test_03_hierarchical(tmp_path, kodak_dir, wikiphotos_dir):
    run_dir = tmp_path / "03"
    run("03_hierarchical", tmp_path, run_dir=str(run_dir), **TINY)
    hist = [json.loads(x) for x in (run_dir / "hierarchical-l0.013-s0" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in hist if r["kind"] == "train"]
    assert {"z_D", "z_R_z", "z_R_s1", "z_R_s2", "z_R_s3"} <= set(train[-1])
    assert figures(run_dir / "figures") == {"hierarchical_weights", "scale_bpp"}


def test_04_finetuning(tmp_path, kodak_dir, wikiphotos_dir):
    run_dir = tmp_path / "04"
    run("04_finetuning", tmp_path, run_dir=str(run_dir), init="", pretrain_steps=2, **TINY)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert Path(metrics["init"]).is_file() and set(metrics["runs"]) == {"qp", "balanced", "standard"}
    assert figures(run_dir / "figures") == {"finetune_curves", "finetune_weights"}
    lrs = {d.parent.name: yaml.safe_load((d / "config.yaml").read_text())["optim"]["lr"] for d in run_dir.glob("*/standard-*")}
    assert lrs == {"pretrain": 1e-4, "finetune": 3e-5}  # pretraining at pretrain_lr, not the fine-tuning lr


def test_04_finetuning_from_a_store(tmp_path, tiny_store, kodak_dir, wikiphotos_dir):
    """``init`` a checkpoint store (the default: checkpoints/tiny): its model at lmbda."""
    run_dir = tmp_path / "04"
    run("04_finetuning", tmp_path, run_dir=str(run_dir), init=str(tiny_store), lmbda=0.025, modes=["standard"],
        **TINY)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["init"] == str(tiny_store / "base-l0.025-s0.pt") and metrics["runs"]["standard"]["step"] == 3


def test_05_evaluation(tmp_path, shared_runs, tiny_store):
    out = tmp_path / "05"
    nb = run("05_evaluation", tmp_path, run_root=str(shared_runs), train_if_missing=True, shipped=str(tiny_store),
             lambdas=[0.0067, 0.025], steps=2, dataset="kodak", limit=1, crop=128, codecs=["jpeg"],
             out_dir=str(out), figures_dir=str(out / "figures"))
    for mode in ("standard", "balanced", "shipped"):
        curve = json.loads((out / f"{mode}.json").read_text())
        assert len(curve["results"]["bpp"]) == 2 and all(b > 0 for b in curve["results"]["bpp"])
    assert (out / "figures" / "bd_rate.tex").read_text().count("\\toprule") == 1
    assert figures(out / "figures") == {"rd_psnr", "bd_rate_bars", "scale_bpp_images", "reconstructions_kodim01"}
    assert "balanced" in json.loads((out / "metrics.json").read_text())["bd"]["BD-rate cubic (%)"]
    assert images(nb) == 4
    jpeg = json.loads((out / "jpeg.json").read_text())
    assert "qualities chosen to span PSNR" in jpeg["description"]  # anchors on the curves' range


def test_06_lambda_explorer(tmp_path, shared_runs, tiny_store):
    for root, modes in ((shared_runs, ["standard", "balanced"]), (tiny_store, ["standard"])):
        nb = run("06_lambda_explorer", tmp_path, run_root=str(root), modes=modes, lambdas=[0.0067, 0.025], steps=2,
                 limit=1, crop=128)
        views = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
                 if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
        assert views, "the explorer cell displays a widget"


def test_07_experiment(tmp_path, kodak_dir, wikiphotos_dir):
    """The experiment notebook's whole pipeline at smoke size: train sweep, fine-tune sweep, real
    bitstreams, report (one seed: every job is a notebook in its own kernel, minutes on 2 cores;
    the report's per-seed statistics are tested in test_experiment.py)."""
    out = tmp_path / "07"
    nb = run("07_experiment", tmp_path, output=str(out / "train"), results=str(out / "RESULTS.md"),
             figures_dir=str(out / "figures"), limit=1, crop=128, grid={"lmbda": [0.0067, 0.025], "seed": [0]},
             sweep_params={"steps": 2, "batch": 1, "train_dir": str(wikiphotos_dir), "test_dir": str(kodak_dir)})
    for folder in ("train", "train-finetune"):
        jobs = json.loads((out / folder / "manifest.json").read_text())["jobs"]
        assert len(jobs) == 2 and {j["state"] for j in jobs.values()} == {"done"}, folder
    curves = sorted(p.stem for p in (out / "train-eval").rglob("*-s[01].json"))
    assert len(curves) == 6  # standard, balanced, hierarchical, ft-qp, ft-balanced, ft-standard
    block = (out / "RESULTS.md").read_text()
    assert "<!-- BEGIN experiment:experiment_cpu -->" in block
    assert all(f"**{t} vs " in block for t in ("balanced", "hierarchical", "ft-qp", "ft-balanced"))
    assert "gradient share a_D" in block and "| ft-balanced |" in block
    assert {"rd_train", "rd_finetune", "task_weights_train"} <= figures(out / "figures")
    assert images(nb) >= 3
