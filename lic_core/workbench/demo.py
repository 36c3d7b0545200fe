"""The README's main command: ``python -m lic_core demo``.

Starts from the trained tiny-HPCM models that ship in ``checkpoints/tiny`` (SHA-256 checked):
fine-tunes each briefly with the standard loss (Adam, the control) and with Balanced R-D (FAMO +
Cautious Adam), same crops, steps and lr (the papermill sweep ``sweeps/demo.yaml`` over notebook 04),
then evaluates the shipped models and both fine-tuned sets with real bitstreams next to live JPEG /
WebP (at qualities spanning the models' PSNR range) and the published anchors (notebook 05), and
prints a summary: R-D points and where they were measured, BD-rates against the control with the
caveat that a run this short is a demonstration, reconstructions and figures written, wall time.
A line per finished fine-tuning job and a heartbeat every 30 s keep a long run talking. Offline;
data: ``../shared/datasets`` when present, else the photos that ship inside scikit-image.
Re-running reuses finished jobs.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import time
from pathlib import Path

import pandas as pd

from lic_core.workbench import store, workbook
from lic_core.errors import LicError, command
from lic_core.paths import REPO

CURVES = ("shipped", "standard", "balanced")
CAVEAT = ("a demonstration, not a result: tiny models, a few fine-tuning steps, a handful of test "
          "images; BD-rates this small are within run-to-run noise")
_WARNING = re.compile(r"BD-(?:rate \(([\w-]+) axis\)|([\w-]+) \(rate axis\)): (.*)")
_SHARE = re.compile(r"Insufficient curve overlap: '([\d.]+)'\. Minimum overlap: '([\d.]+)'")


def _stage(k: int, text: str) -> None:
    print(f"[demo {k}/4] {text}", flush=True)


def run_demo(out: Path, steps: int | None, limit: int, crop: int, jobs: int,
             models: Path = store.SHIPPED) -> dict:
    """Fine-tuning sweep from the shipped models + evaluation notebook; returns the evaluation
    notebook's metrics."""
    from lic_core.workbench.notebooks import execute
    from lic_core.workbench.sweep import heartbeat, load_sweep, run_sweep

    train, test, note = workbook.default_data(out)
    _stage(1, f"data: {note}")
    shipped = store.models(store.checked(models), "standard")
    index = store.read_index(models)
    evals = [index[p.name].get("eval") or {} for p in shipped.values()]
    _stage(2, f"shipped models ({models}, SHA-256 checked): tiny HPCM at λ "
              + ", ".join(f"{k:g} ({e.get('psnr', float('nan')):.2f} dB)" for k, e in zip(shipped, evals))
              + "; PSNR of their training-time evaluation (Kodak 256-px crops, forward pass), "
                "not from this run's test images")
    spec = load_sweep(REPO / "sweeps" / "demo.yaml", base=REPO)
    params = {**spec.parameters, "init": str(models), "train_dir": str(train), "test_dir": str(test),
              **({"steps": steps} if steps is not None else {})}
    spec = dataclasses.replace(spec, output=out / "runs", parameters=params, grid={"lmbda": list(shipped)})
    _stage(3, f"fine-tuning: notebook 04 x {len(spec.expand())} λ, modes {', '.join(params['modes'])}, "
              f"{params['steps']} steps each -> {spec.output}")
    t0 = time.perf_counter()
    records = run_sweep(spec, executor="local", jobs=jobs, progress=True)
    failed = [k for k, r in records.items() if r.get("state") != "done"]
    if failed:
        raise LicError(f"demo fine-tuning jobs failed: {', '.join(failed)}; see {spec.output}/<job>/error.txt")
    print(f"  fine-tuned {len(records)} jobs in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    _stage(4, f"evaluation: notebook 05 (real bitstreams on {workbook.data_note(test, limit, crop)}; "
              "JPEG / WebP at qualities spanning the models' PSNR range; BD-rate; reconstructions)")
    t0 = time.perf_counter()
    eval_dir = out / "evaluation"
    with heartbeat("evaluation (notebook 05)"):
        execute(REPO / "notebooks" / "05_evaluation.ipynb", out / "05_evaluation.ipynb",
                {"run_root": str(spec.output), "shipped": str(models), "dataset": str(test), "limit": limit,
                 "crop": crop, "out_dir": str(eval_dir), "figures_dir": str(out / "figures")})
    print(f"  evaluated in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    return json.loads((eval_dir / workbook.METRICS_FILE).read_text())


def _why(message: str, axis: str) -> str:
    """One BD warning message as a clause."""
    if found := _SHARE.match(message):
        return f"the curves share only {float(found[1]):.0f} % of their {axis} range ({float(found[2]):.0f} % needed)"
    if message.startswith("Curves do not overlap"):
        return f"the curves share no part of their {axis} range"
    if message.startswith("Polyfit may be poorly conditioned"):
        return "the cubic fit through the points is poorly conditioned"
    return message.rstrip(".")


def plain_reason(curve: str, text: str) -> str:
    """Why BD values of ``curve`` are undefined, whole, as one plain sentence."""
    reasons: dict[str, list[str]] = {}
    for part in filter(None, (p.strip() for p in text.split("; "))):
        found = _WARNING.match(part)
        if found:
            measure, axis = ("BD-rate", "PSNR") if found[1] else ("BD-PSNR", "bit-rate")
            reasons.setdefault(measure, []).append(_why(found[3], axis))
        else:
            reasons.setdefault("BD", []).append(part.rstrip("."))
    clauses = [f"{m} is undefined because {' and '.join(dict.fromkeys(r))}" for m, r in reasons.items()]
    return f"{curve}: " + "; ".join(clauses) + "."


def summary(out: Path, seconds: float) -> str:
    """R-D points of each mode and where they come from, BD-rate against standard with its
    caveat and whole reasons for undefined values, the files to look at."""
    rows = []
    for curve in CURVES:
        res = json.loads((out / "evaluation" / f"{curve}.json").read_text())["results"]
        for i, ck in enumerate(res["checkpoint"]):
            rows.append({"curve": curve, "λ": workbook.checkpoint_settings(ck)["lmbda"],
                         "bpp (file)": res["bpp"][i], "PSNR dB": res["psnr-rgb"][i],
                         "MS-SSIM": res["ms-ssim-rgb"][i], "enc s": res["encoding_time"][i],
                         "dec s": res["decoding_time"][i]})
    metrics = json.loads((out / "evaluation" / workbook.METRICS_FILE).read_text())
    data = metrics.get("data", "the test images")
    lines = ["", "=== demo summary ===",
             f"R-D points: real bitstreams on {data}; bpp from the file size, PSNR / MS-SSIM of the "
             "decoded 8-bit image, mean over the images (stage 2's PSNR are the training-time "
             "evaluation on Kodak 256-px crops, hence different)",
             pd.DataFrame(rows).to_string(index=False, float_format="%.4f"), ""]
    lines.append(f"BD vs {metrics['anchor']} (the Adam fine-tune) on {data}; negative BD-rate = fewer "
                 "bits at equal PSNR; JPEG / WebP coded live on the same images:")
    lines.append(pd.DataFrame(metrics["bd"]).to_string(float_format="%.2f"))
    lines.append(f"  caveat: {CAVEAT}.")
    published = [k for k in metrics["bd"].get(next(iter(metrics["bd"]), ""), {}) if k not in (*CURVES, "JPEG", "WebP")]
    if published:
        lines.append(f"  {', '.join(published)}: published R-D points of the full data set (reference files), "
                     "not measured on these images.")
    why = {k: v for k, v in metrics.get("bd_warnings", {}).items() if v}
    lines += [f"  {plain_reason(k, v)}" for k, v in why.items()]
    figs = sorted((out / "figures").glob("*.pdf"))
    recon = sorted((out / "figures").glob("reconstructions_*.png"))
    lines += ["", "made:",
              f"  figures ({len(figs)}, PDF + PNG): {out / 'figures'}",
              f"  reconstructions (one per test image, bpp / PSNR per panel): "
              + (", ".join(p.name for p in recon) or "none"),
              f"  R-D results (CompressAI JSON, per image): {out / 'evaluation'}",
              f"  executed notebooks: {out / 'runs'}/<job>/notebook.ipynb, {out / '05_evaluation.ipynb'}",
              f"  checkpoints: {out / 'runs'}/<job>/run/finetune/<mode>-l<λ>-s<seed>/checkpoints/",
              f"wall time: {seconds / 60:.1f} min"]
    return "\n".join(lines)


@command("demo")
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lic_core demo", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(REPO / "papermill_runs" / "demo"), help="output folder")
    ap.add_argument("--steps", type=int, default=None, help="fine-tuning steps per run (default: sweeps/demo.yaml)")
    ap.add_argument("--limit", type=int, default=4, help="test images evaluated (0: all)")
    ap.add_argument("--crop", type=int, default=0, help="center crop of the test images (0: full)")
    ap.add_argument("--jobs", type=int, default=1, help="training jobs at a time")
    ap.add_argument("--models", default=str(store.SHIPPED), help="checkpoint store to start from")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    out = Path(args.out).resolve()
    run_demo(out, args.steps, args.limit, args.crop, args.jobs, Path(args.models))
    print(summary(out, time.perf_counter() - t0))
    return 0
