"""Phase workflows behind the notebooks (``notebooks/01`` ... ``06``).

A notebook holds its parameters and plots; everything it computes is one call here, so the same
workflow runs from a notebook, a papermill sweep, the demo or a test. Every function writes into a
run folder and returns plain data (dicts, DataFrames, :class:`~lic_core.training.engine.RunResult`).
"""
from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from lic_core.atomic import write_file
from lic_core.errors import ConfigError, LicError
from lic_core.paths import REPO, datasets_root, reference_root

METRICS_FILE = "metrics.json"
os.environ.setdefault("WANDB_SILENT", "true")  # wandb's banners would fill every notebook
# Color photos shipped inside scikit-image's wheel (no download): training and held-out test set.
BUNDLED_TRAIN = ("astronaut.png", "rocket.jpg", "motorcycle_left.png", "motorcycle_right.png",
                 "hubble_deep_field.jpg", "coffee.png")
BUNDLED_TEST = ("chelsea.png", "retina.jpg")


# ------------------------------------------------------------------------------------ data


def project_root() -> Path:
    """The checkout the notebooks belong to: relative paths in their parameters start here
    (a Jupyter kernel starts in ``notebooks/``, papermill jobs in the notebook's folder)."""
    return REPO


def bundled_photos(dest: str | Path) -> tuple[Path, Path]:
    """Train and test folders of scikit-image's bundled color photos, linked under ``dest``.

    Links (copies where links are impossible) of files that ship with a dependency, so the demo
    runs offline on a machine without ``../shared/datasets``.
    """
    import skimage

    src = Path(skimage.__file__).parent / "data"
    folders = []
    # the folder's name is the data set's name in every figure and summary line
    for name, files in (("scikit-image-train", BUNDLED_TRAIN), ("scikit-image-test", BUNDLED_TEST)):
        out = Path(dest) / name
        out.mkdir(parents=True, exist_ok=True)
        for f in files:
            if not (src / f).is_file():
                raise LicError(f"scikit-image {skimage.__version__} does not ship {f} in {src}")
            link = out / f
            if not link.exists():
                try:
                    link.symlink_to(src / f)
                except OSError:
                    shutil.copyfile(src / f, link)
        folders.append(out)
    return folders[0], folders[1]


def default_data(run_root: str | Path) -> tuple[Path, Path, str]:
    """(train folder, test folder, description): ``../shared/datasets`` (wikiphotos, Kodak) when
    present, otherwise scikit-image's bundled photos."""
    root = datasets_root()
    if (root / "wikiphotos").is_dir() and (root / "kodak").is_dir():
        return root / "wikiphotos", root / "kodak", f"wikiphotos / Kodak from {root}"
    train, test = bundled_photos(Path(run_root) / "bundled_photos")
    return train, test, "scikit-image's bundled photos (no shared datasets found)"


def resolve_data(run_root: str | Path, train_dir: str | Path = "", test_dir: str | Path = "") -> tuple[Path, Path, str]:
    """The folders a notebook was given, or :func:`default_data` for those left empty."""
    if train_dir and test_dir:
        return Path(train_dir), Path(test_dir), f"train {train_dir}, test {test_dir}"
    train, test, note = default_data(run_root)
    return Path(train_dir or train), Path(test_dir or test), note


# ------------------------------------------------------------------------------------ training


def run_config(run_dir: str | Path, mode: str, lmbda: float, overrides: Mapping[str, Any] | None = None,
               **params: Any) -> dict[str, Any]:
    """Config overrides of one workbook run (dotted keys, what :func:`lic_core.train` takes): the
    workbook's small-run defaults, then ``params`` by their short names (``steps``, ``batch``,
    ``gamma`` ... :data:`lic_core.config.ALIASES`), then ``overrides`` (any config key, e.g.
    ``{"optim.schedule": "cosine"}``). The run folder is ``run_dir/<mode>-l<λ>-s<seed>``; its
    ``config.yaml`` is what later steps read back."""
    from lic_core.config import dotted

    flat = {"model.name": "tiny", "data.patch": 128, "data.batch": 4, "data.test_limit": 4, "optim.lr": 1e-4,
            "run.steps": 200, "run.seed": 0, "run.wandb_mode": os.environ.get("WANDB_MODE", "offline"),
            **dotted(params), **dotted(dict(overrides or {})), "loss.mode": mode, "loss.lmbda": lmbda,
            "run.out": str(run_dir)}
    steps = int(flat["run.steps"])
    flat.setdefault("data.test_patch", flat["data.patch"])
    flat.setdefault("run.name", f"{mode}-l{lmbda:g}-s{flat['run.seed']}")
    flat.setdefault("run.eval_every", max(steps // 4, 1))
    flat.setdefault("run.ckpt_every", steps)
    flat.setdefault("run.log_every", max(steps // 50, 1))
    return flat


def train_modes(run_dir: str | Path, modes: Sequence[str], lmbda: float, **kw: Any) -> dict[str, Any]:
    """Train one run per mode at one λ with identical data, steps and schedule; returns
    ``{mode: RunResult}``. Finished runs resume (nothing is redone)."""
    from lic_core.training.engine import train

    return {m: train(None, run_config(run_dir, m, lmbda, **kw)) for m in modes}
def finetune_modes(run_dir: str | Path, modes: Sequence[str], lmbda: float, init: str | Path = "",
                   pretrain_steps: int = 200, pretrain_lr: float = 1e-4, **kw: Any) -> tuple[Path, dict[str, Any]]:
    """Fine-tune one checkpoint with each mode (e.g. ``qp`` = Solution 2, ``balanced`` =
    Solution 1, ``standard`` = plain Adam as the control); returns (start checkpoint, results).

    ``init`` is our checkpoint or an authors' one, or a checkpoint store folder (``checkpoints/tiny``:
    its standard model at ``lmbda``); empty: a ``standard`` run of ``pretrain_steps`` at learning rate
    ``pretrain_lr`` (notebook 01's default, not the fine-tuning ``lr``) is trained first under
    ``run_dir/pretrain`` and its checkpoint is the start.
    """
    if not init:
        pre_kw = {**kw, "steps": pretrain_steps, "lr": pretrain_lr}
        init = train_modes(Path(run_dir) / "pretrain", ["standard"], lmbda, **pre_kw)["standard"].checkpoint
    init = shipped_model(init, lmbda) if Path(init).is_dir() else init
    overrides = {**(kw.pop("overrides", None) or {}), "finetune.init": str(init)}
    return Path(init), train_modes(Path(run_dir) / "finetune", modes, lmbda, overrides=overrides, **kw)


def shipped_model(folder: str | Path, lmbda: float, seed: int = 0) -> Path:
    """The standard model at ``lmbda`` of a checkpoint store (``checkpoints/tiny``), its SHA-256
    checked."""
    from lic_core.workbench import store

    from lic_core.training.run import lmbda_key

    found = {lmbda_key(k): p for k, p in store.models(store.checked(folder), "standard", seed).items()}
    if lmbda_key(lmbda) not in found:
        raise ConfigError(f"lmbda: {folder} has no standard model at λ {lmbda:g} (has {', '.join(found) or 'none'})")
    return found[lmbda_key(lmbda)]


def ensure_runs(run_root: str | Path, modes: Sequence[str], lambdas: Sequence[float],
                **kw: Any) -> dict[str, dict[float, Path]]:
    """Train whatever (mode, λ) run is missing or unfinished under ``run_root``; returns
    ``{mode: {λ: checkpoint}}`` of all of them."""
    for lmbda in lambdas:
        train_modes(run_root, modes, lmbda, **kw)
    return {m: checkpoints_of(run_root, m) for m in modes}


def final_metrics(results: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Last evaluation (test crops, eval mode) and last training record of each run."""
    out = {}
    for label, res in results.items():
        evals = [r for r in res.history if r.get("kind") == "eval" and "loss" in r]
        trains = [r for r in res.history if r.get("kind") == "train"]
        row: dict[str, float] = {"step": res.step, "skipped": res.skipped}
        if evals:
            row.update({f"test_{k}": evals[-1][k] for k in ("loss", "bpp", "psnr", "D") if k in evals[-1]})
        if trains:
            row.update({f"train_{k}": trains[-1][k] for k in ("loss", "bpp", "psnr") if k in trains[-1]})
            times = [r["step_time"] for r in trains if "step_time" in r]
            row["step_time"] = sorted(times)[len(times) // 2] if times else math.nan
        row["checkpoint"] = str(res.checkpoint) if res.checkpoint else ""
        out[label] = row
    return out


def write_metrics(run_dir: str | Path, metrics: Mapping[str, Any]) -> Path:
    """``<run_dir>/metrics.json`` (what a sweep's manifest and ``sweep_results`` read)."""
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return write_file(Path(run_dir) / METRICS_FILE, json.dumps(metrics, indent=1, default=str) + "\n")


def history_frame(results: Mapping[str, Any], kind: str = "train") -> pd.DataFrame:
    """All runs' records of one kind in one long table with a ``run`` column."""
    frames = [pd.DataFrame([r for r in res.history if r.get("kind") == kind]).assign(run=label)
              for label, res in results.items()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


# ------------------------------------------------------------------------------------ sweeps


def sweep_grid(sweep_dir: str | Path, rows: str, cols: str, value: str,
               where: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """A (rows x cols) table of one metric over a finished sweep (e.g. gamma x w_lr), over the jobs
    whose parameters match ``where``. Jobs that differ in any other parameter would be averaged
    into one cell: that is an error naming the parameter (select one value with ``where``)."""
    from lic_core.workbench.sweep import read_manifest, sweep_results

    df = sweep_results(sweep_dir)
    missing = [k for k in (rows, cols, value, *(where or {})) if k not in df.columns]
    if missing:
        raise LicError(f"sweep {sweep_dir}: no column {missing[0]!r} (have {', '.join(map(str, df.columns))})")
    for k, v in (where or {}).items():
        df = df[df[k] == v]
    params = {k for job in read_manifest(sweep_dir)["jobs"].values() for k in job["parameters"]}
    mixed = [k for k in sorted(params - {rows, cols}) if k in df.columns and df[k].astype(str).nunique() > 1]
    if mixed:
        raise LicError(f"sweep {sweep_dir}: parameter {mixed[0]!r} varies ({', '.join(map(str, df[mixed[0]].unique()))}); "
                       f"choose one with where={{{mixed[0]!r}: ...}} rather than averaging over it")
    return df.pivot_table(index=rows, columns=cols, values=value, aggfunc="mean")


def hyper_sweep(run_dir: str | Path, grid: Mapping[str, Sequence[Any]], jobs: int = 1, **params: Any) -> Path:
    """Run notebook 01 in balanced mode over ``grid`` (its parameters by name, each with a list of
    values: ``{"gamma": [...], "w_lr": [...], "gamma_schedule": [...]}``) as a papermill sweep into
    ``run_dir/sweep``; finished jobs are skipped on a re-run. Returns the sweep folder."""
    from lic_core.workbench.sweep import run_sweep, spec_from_dict

    out = Path(run_dir).resolve() / "sweep"
    spec = spec_from_dict({
        "name": "hyperparameters", "notebook": str(REPO / "notebooks" / "01_train.ipynb"), "output": str(out),
        "parameters": {**params, "modes": ["balanced"]}, "grid": {k: list(v) for k, v in grid.items()},
    })
    records = run_sweep(spec, executor="local", jobs=jobs, progress=False)
    failed = [k for k, r in records.items() if r.get("state") != "done"]
    if failed:
        raise LicError(f"sweep {out}: jobs not done: {', '.join(failed)} (see their error.txt)")
    return out


def best_setting(grid: pd.DataFrame) -> tuple[Any, Any, float]:
    """(row, column, value) of the smallest entry of a grid from :func:`sweep_grid`."""
    stacked = grid.stack()
    (r, c) = stacked.idxmin()
    return r, c, float(stacked.min())


# ------------------------------------------------------------------------------------ evaluation


def run_settings(run: str | Path) -> dict[str, Any] | None:
    """``{"mode", "lmbda", "seed"}`` of a training run folder, from its typed config
    (:func:`lic_core.training.run.load_run`; None when the folder holds no training config)."""
    from lic_core.training.run import load_run

    try:
        return load_run(run).settings()
    except ConfigError:
        return None


def checkpoint_settings(path: str | Path) -> dict[str, Any]:
    """Mode, λ and seed of a checkpoint: from its store's index, or its run's ``config.yaml``."""
    from lic_core.workbench import store

    path = Path(path)
    if store.is_store(path.parent):
        meta = store.read_index(path.parent).get(path.name, {})
        return {"mode": store.mode_of(meta), "lmbda": meta.get("lmbda"), "seed": meta.get("seed")}
    found = run_settings(path.parent.parent) if path.parent.name == "checkpoints" else None
    if found is None:
        raise LicError(f"{path}: neither in a checkpoint store nor in a run's checkpoints/ folder")
    return found


def checkpoints_of(run_root: str | Path, mode: str, seed: int | None = None) -> dict[float, Path]:
    """``{λ: final checkpoint}`` of the runs of one mode under ``run_root`` (recursive; mode and λ
    from each run's ``config.yaml``), or of a checkpoint store (``checkpoints/tiny``, trunk
    ``seed`` or 0; each file SHA-256 checked). Two runs at one λ are an error naming both: which
    one is the curve's point is the user's choice, not the folder order's."""
    from lic_core.workbench import store
    from lic_core.training.run import find_runs

    if store.is_store(run_root):
        return {lam: store.checked_file(p) for lam, p in store.models(run_root, mode, seed or 0).items()}
    found: dict[float, Any] = {}
    for run in find_runs(run_root):
        if run.mode != mode or (seed is not None and run.seed != seed) or run.latest is None:
            continue
        if run.lmbda in found:
            raise LicError(f"{run_root}: two {mode} runs at λ {run.lmbda:g}: {found[run.lmbda].run_dir} and "
                           f"{run.run_dir}; point run_root at a folder that holds one (or pass a seed)")
        found[run.lmbda] = run
    return {lam: found[lam].latest for lam in sorted(found)}


def evaluate_modes(run_root: str | Path, modes: Sequence[str], dataset: str | Path, out: str | Path,
                   limit: int = 0, crop: int = 0, progress: bool = True) -> dict[str, dict]:
    """Real-bitstream evaluation of every mode's checkpoints (one R-D point per λ); returns
    ``{mode: CompressAI JSON dict}`` and writes ``out/<mode>.json``."""
    from lic_core.analysis.evaluation import evaluate

    curves = {}
    for mode in modes:
        ckpts = checkpoints_of(run_root, mode)
        if not ckpts:
            raise LicError(f"no finished {mode} runs under {run_root}")
        curves[mode] = evaluate([str(p) for p in ckpts.values()], dataset, out, limit=limit, crop=crop,
                                name=mode, progress=progress)
    return curves


def evaluate_shipped(folder: str | Path, dataset: str | Path, out: str | Path, limit: int = 0, crop: int = 0,
                     seed: int = 0, progress: bool = True) -> dict[str, dict]:
    """``{"shipped": CompressAI JSON}`` of the standard models of a checkpoint store (SHA-256
    checked) evaluated like :func:`evaluate_modes`; ``{}`` when ``folder`` is empty."""
    from lic_core.workbench import store
    from lic_core.analysis.evaluation import evaluate

    if not folder:
        return {}
    ckpts = store.models(store.checked(folder), "standard", seed)
    if not ckpts:
        raise LicError(f"checkpoint store {folder} holds no standard models of trunk seed {seed}")
    return {"shipped": evaluate([str(p) for p in ckpts.values()], dataset, out, limit=limit, crop=crop,
                                name="shipped", progress=progress)}


def runs_for_evaluation(run_root: str | Path, modes: Sequence[str], lambdas: Sequence[float] | None = None,
                        **train_kw: Any) -> dict[str, dict[float, Path]]:
    """``{mode: {λ: checkpoint}}`` under ``run_root``; when a mode has none and ``lambdas`` is given,
    short runs are trained first (default data), otherwise that is an error."""
    from lic_core.workbench import store

    runs = {m: checkpoints_of(run_root, m) for m in modes}
    if all(runs.values()):
        return runs
    missing = [m for m, r in runs.items() if not r]
    if store.is_store(run_root):
        raise LicError(f"checkpoint store {run_root} holds no {', '.join(missing)} models (a store is never trained "
                       "into); point run_root at a folder of training runs, e.g. papermill_runs/demo")
    if lambdas is None:
        raise LicError(f"no finished runs of {', '.join(missing)} under {run_root}; train them first "
                       "(notebook 01 or a sweep) or set train_if_missing = True")
    train, test, _ = default_data(run_root)
    return ensure_runs(run_root, modes, lambdas, train_dir=train, test_dir=test, **train_kw)


def classical_anchors(codecs: Sequence[str], dataset: str | Path, out: str | Path, limit: int = 0,
                      crop: int = 0, span: Sequence[Mapping[str, Any]] = (), points: int = 6) -> dict[str, dict]:
    """Live Pillow codecs on the same images (CompressAI JSON each, written to ``out/<codec>.json``):
    with ``span`` (evaluated curves), at ``points`` qualities chosen so that each codec's PSNR
    range covers theirs (BD-rate against it is then defined); without, over the codec's fixed
    quality ladder. Codecs this Pillow lacks are reported and left out."""
    from lic_core.analysis.anchors import psnr_span, sweep, unsupported
    from lic_core.datasets import resolve

    _, images = resolve(dataset, limit)
    target = psnr_span(list(span)) if span else None
    found = {}
    for key in codecs:
        if (why := unsupported(key)) is not None:
            print(f"skipping {key}: {why}")
            continue
        data = sweep(key, images, crop=crop, progress=False, span=target, points=points)
        write_file(Path(out) / f"{key}.json", json.dumps(data, indent=2) + "\n")
        found[data["name"]] = data
    return found


def published_curves(names: Iterable[str], dataset: str | Path = "kodak") -> dict[str, Path]:
    """``{file stem: path}`` of the published R-D files that exist for ``dataset``."""
    return {p.stem: p for p in published(dataset, names)}


def point_checkpoint(curve: Mapping[str, Any], point: int = -1) -> str:
    """The checkpoint of one point of an evaluated curve (a dict :func:`evaluate_modes` returned),
    the points ordered by rate (default: the highest)."""
    res = curve["results"]
    return sorted(zip(res["bpp"], res["checkpoint"]))[point][1]


def per_image_file(out: str | Path, curve: Mapping[str, Any], point: int = -1) -> Path:
    """The per-image result file behind one point (:func:`point_checkpoint`) of an evaluated curve."""
    from lic_core.analysis.evaluation import model_names

    ckpt = point_checkpoint(curve, point)
    path = Path(out) / f"{model_names([ckpt])[0]}.images.json"
    if not path.is_file():
        raise LicError(f"{path} does not exist (evaluate {ckpt} first)")
    return path


def anchor_span(curves: Mapping[str, Any], anchor: str, qualities: str) -> list[Any]:
    """The curves whose PSNR range live classical codecs must cover (:func:`classical_anchors`'
    ``span``): ``qualities`` "span" gives the anchor curve (every curve when the anchor is not one
    of them, e.g. a published one), "ladder" none (the codecs' fixed quality ladder)."""
    if qualities not in ("span", "ladder"):
        raise ConfigError(f"anchor_qualities {qualities!r}: use 'span' or 'ladder'")
    if qualities == "ladder":
        return []
    return [curves[anchor]] if anchor in curves else list(curves.values())


MODE_LABELS = {"standard": "Adam", "balanced": "Balanced R-D", "qp": "QP"}


def test_images(dataset: str | Path, limit: int = 0) -> tuple[str, list[Path]]:
    """(data set name, image paths) as the evaluation reads them (:func:`lic_core.datasets.resolve`)."""
    from lic_core.datasets import resolve

    return resolve(dataset, limit)


def data_note(dataset: str | Path, limit: int = 0, crop: int = 0) -> str:
    """``kodak, 2 images (center crops 128 px)``: what every figure and number of a run is
    measured on (the images actually read, not the ``limit`` asked for)."""
    from lic_core.analysis.viz import data_note as note

    name, images = test_images(dataset, limit)
    return note(name, len(images), crop)


def curves_note(curves: Iterable[str], anchors: Iterable[str] = (), published: Iterable[str] = ()) -> str:
    """What each curve of an R-D figure is: the modes, the shipped models, live and published anchors."""
    meaning = {"standard": "Adam fine-tune (the control)", "balanced": "Balanced R-D fine-tune",
               "qp": "QP fine-tune", "shipped": "the shipped trained models"}
    parts = [f"{c}: {meaning.get(c, 'checkpoints')}" for c in curves]
    if anchors:
        parts.append(f"dashed {', '.join(anchors)}: coded live on the same images")
    if published:
        parts.append(f"dashed {', '.join(published)}: published points of the full data set")
    return "; ".join(parts)


def reconstruction_models(run_root: str | Path, modes: Sequence[str], shipped: str | Path = "",
                          lmbda: float | None = None) -> dict[str, Path]:
    """``{panel label: checkpoint}`` of the reconstruction figures: the shipped standard model at
    each λ (a checkpoint store; none when empty), then each mode's run at one λ they share
    (``lmbda``, or the middle one)."""
    from lic_core.workbench import store

    found: dict[str, Path] = {}
    if shipped:
        found |= {f"shipped λ={k:g}": p for k, p in store.models(store.checked(shipped), "standard").items()}
    from lic_core.training.run import lmbda_key

    runs = {m: {lmbda_key(k): p for k, p in checkpoints_of(run_root, m).items()} for m in modes}
    shared = sorted(set.intersection(*(set(r) for r in runs.values())), key=float) if runs else []
    if shared:
        pick = lmbda_key(lmbda) if lmbda is not None and lmbda_key(lmbda) in shared else shared[len(shared) // 2]
        found |= {f"{MODE_LABELS.get(m, m)} λ={pick}": runs[m][pick] for m in modes}
    if not found:
        raise LicError(f"no checkpoints to reconstruct with: no shipped store and no run of "
                       f"{', '.join(modes)} under {run_root} at a shared λ")
    return found


def reconstructions(models: Mapping[str, str | Path], dataset: str | Path, limit: int = 0,
                    crop: int = 0) -> list[tuple[str, Any, list]]:
    """Each test image decoded from the real bitstream of every model: a list of (image name,
    original (H, W, 3) uint8, [(label, decoded, bpp, PSNR dB), ...]) for
    :func:`lic_core.analysis.viz.reconstructions`."""
    from lic_core.analysis.anchors import center_crop
    from lic_core.imageio import read_rgb
    from lic_core.models.loading import load_checkpoint
    from lic_core.workbench.explorer import compute_view

    _, images = test_images(dataset, limit)
    originals = [center_crop(read_rgb(p)[0], crop) for p in images]
    panels: list[list] = [[] for _ in images]
    for label, ckpt in models.items():  # each model loaded once
        model = load_checkpoint(ckpt).eval()
        for rows, rgb in zip(panels, originals):
            v = compute_view(model, rgb, maps=False)
            rows.append((label, v.x_hat, v.bpp, v.psnr))
    return [(p.name, rgb, rows) for p, rgb, rows in zip(images, originals, panels)]


def explorer(runs: Mapping[str, Mapping[float, Path]], dataset: str | Path, limit: int = 3, crop: int = 256):
    """The λ explorer of notebook 06 on the first ``limit`` images of ``dataset``; a registered
    dataset that is absent falls back to the bundled test photos."""
    from lic_core.datasets import REGISTRY, resolve
    from lic_core.workbench.explorer import LambdaExplorer

    if str(dataset) in REGISTRY and not (datasets_root() / str(dataset)).is_dir():
        dataset = default_data(REPO / "papermill_runs")[1]
    return LambdaExplorer(runs, resolve(dataset, limit)[1], crop=crop)


def bd_against(anchor: str, curves: Mapping[str, Any], metric: str = "psnr-rgb",
               methods: Sequence[str] = ("cubic", "pchip")) -> pd.DataFrame:
    """BD-rate / BD-PSNR of each curve against the curve named ``anchor`` (a key of ``curves``)."""
    from lic_core.analysis.bdrate import bd_table

    if anchor not in curves:
        raise ConfigError(f"anchor {anchor!r} is not one of the curves: {', '.join(curves)}")
    tests = [curves[k] for k in curves if k != anchor]
    return bd_table(curves[anchor], tests, metric=metric, methods=methods)


def published(dataset: str | Path = "kodak", names: Iterable[str] = ("vtm", "hpcm-base-mse-published")) -> list[Path]:
    """Published R-D points shipped in the reference folder (CompressAI JSON) for a dataset name
    or a dataset folder of that name (``.../kodak``)."""
    folder = reference_root() / Path(str(dataset)).name
    paths = [folder / f"{n}.json" for n in names]
    return [p for p in paths if p.is_file()]
