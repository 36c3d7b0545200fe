"""One prepared run on a lent GPU: HPCM-Base training speed options, Kodak encode /
decode time, cross-device decoding (float32 and float64 files, and format version 5 files of the
exact entropy path, which must decode to the same symbols on either side), tiny-model throughput.
Writes ``benchmarks/results/gpu_<card>.md``.

    python benchmarks/gpu_check.py                          # on CUDA, sized to finish in < 10 min
    python benchmarks/gpu_check.py --device cpu --smoke     # the same code path at smoke sizes (CI)

Every section has a time budget; a section that does not fit what is left is reported as skipped,
so the run never overruns. Timings are interleaved rounds; a ratio is taken within each round and
the median of the per-round ratios is printed with min and max (``bench_model.per_round``).
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_model import per_round, spread  # noqa: E402
from bench_train import MODES, SPEED, make_trainer  # noqa: E402

from lic_core.coding import codec  # noqa: E402
from lic_core.atomic import write_file  # noqa: E402
from lic_core.training.data import train_loader  # noqa: E402
from lic_core.errors import LicError, ReconstructionWarning  # noqa: E402
from lic_core.imageio import load_image  # noqa: E402
from lic_core.models import exact  # noqa: E402
from lic_core.models.hpcm import hpcm  # noqa: E402
from lic_core.models.loading import load_checkpoint  # noqa: E402
from lic_core.workbench import store  # noqa: E402
from lic_core.paths import datasets_root  # noqa: E402

PAPER_MS = {"encode": 81.8, "decode": 81.3}  # HPCM-Base on Kodak, the paper's GPU (HPCM.md)
CROSS_IMAGES = 4  # cross-device decoding: each image is coded on the CPU too (seconds per image)
# synthetic_weights factors: on Kodak crops HPCM-Base codes at about 0.2, 0.5, 1 and 5 bpp with
# these (the rate rises steeply with the factor); the paper's times are for trained models at
# 0.1-0.9 bpp, and rANS time grows with the bits.
CODING_FACTORS = (0.68, 0.70, 0.72, 0.80)
# cross-device decoding: (factor, precision); float64 files decoded identically across CPU
# instruction sets (benchmarks/cross_cpu.py), GPU <-> CPU unmeasured
CROSS = ((0.70, torch.float32), (0.80, torch.float32), (0.80, torch.float64))
EXACT_FACTORS = (0.70, 0.80)  # synthetic weights whose exact versions cross devices (plus the shipped tiny models)
SECTIONS = ("coding", "cross-device", "cross-device exact", "throughput", "train options")


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def machine(dev: torch.device) -> list[str]:
    lines = [f"- torch {torch.__version__}, CUDA {torch.version.cuda}, Python {platform.python_version()}"]
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            driver = "unknown (no nvidia-smi)"
        lines.insert(0, f"- card: {p.name}, {p.total_memory / 2**30:.0f} GiB, driver {driver}")
    else:
        lines.insert(0, f"- device: CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
    return lines


def timed_rounds(fns: dict[str, Callable[[], Any]], rounds: int, dev: torch.device) -> dict[str, list[float]]:
    for fn in fns.values():  # warm-up (compile happens here)
        fn()
    sync(dev)
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            sync(dev)
            t0 = time.perf_counter()
            fn()
            sync(dev)
            out[k].append(time.perf_counter() - t0)
    return out


def train_options(model: str, batch: int, patch: int, rounds: int, dev: torch.device, out: str,
                  no_compile: str = "") -> list[str]:
    """fp32 / bf16 / channels_last / compile train steps of ``model``: ratio to fp32 and the first
    step's loss against fp32 (same initial weights, same batch). A ``no_compile`` reason leaves the
    compiled options out (compiling takes minutes on a CPU; tests/test_train_compile.py checks it)."""
    base = {"model.name": model, "data.patch": patch, "data.batch": batch, "optim.schedule": "constant",
            "run.steps": 10**6, "speed.device": str(dev), "speed.compile": False, "data.test": ""}
    trainers, refused = {}, {}
    for name, ov in SPEED.items():
        if no_compile and ov.get("speed.compile"):
            refused[name] = no_compile
            continue
        try:
            trainers[name] = make_trainer(base, ov, out, f"speed-{name}")
        except LicError as e:  # e.g. GPU-only options on a CPU
            refused[name] = str(e)
    cfg = trainers["fp32"].cfg
    x = next(train_loader(cfg.train_dir, patch, batch, seed=0)).to(dev)
    first, first_s = {}, {}
    for n, tr in trainers.items():  # the first step compiles where asked: its time is reported apart
        sync(dev)
        t0 = time.perf_counter()
        first[n] = tr.train_step(x.contiguous(memory_format=torch.channels_last) if tr.cfg.speed.channels_last else x)
        sync(dev)
        first_s[n] = time.perf_counter() - t0
    steps = {n: (lambda tr=tr: tr.train_step(x)) for n, tr in trainers.items()}
    t = timed_rounds(steps, rounds, dev)
    rows = [f"{model}, batch {batch} x {patch} px:", "",
            "| option | s/step | ratio to fp32 (median, min-max) | first-step loss vs fp32 | first step s |",
            "|---|---:|---:|---:|---:|"]
    ref = first["fp32"]["loss"]
    for n in SPEED:
        if n in refused:
            rows.append(f"| {n} | refused | - | {refused[n]} | - |")
            continue
        rows.append(f"| {n} | {statistics.median(t[n]):.4f} | {spread(per_round(t[n], t['fp32']))} | "
                    f"{(first[n]['loss'] - ref) / ref:+.2e} (relative) | {first_s[n]:.1f} |")
    return rows


def coding(model_name: str, images: list[Path], crop: int, dev: torch.device) -> list[str]:
    """Encode / decode time per image on ``dev`` and file bpp against the estimate, a row per
    synthetic-weight factor."""
    rows = ["| weights factor | images | encode ms (median) | decode ms (median) | paper (GPU) enc / dec | bpp "
            "| file vs estimate | decodes unlike the encoder's image |", "|---:|---:|---:|---:|---|---:|---:|---:|"]
    return rows + [_code_images(model_name, images, crop, dev, factor) for factor in CODING_FACTORS]


def _load(path: Path, crop: int) -> torch.Tensor:
    x, _ = load_image(path)
    return x[:, :, :crop, :crop] if crop else x


def _code_images(model_name: str, images: list[Path], crop: int, dev: torch.device, factor: float) -> str:
    model = codec.synthetic_weights(hpcm(model_name), factor).to(dev).eval()
    enc_ms, dec_ms, bits, est, px, unlike = [], [], 0, 0.0, 0, 0
    for p in images:
        x = _load(p, crop).to(dev)
        sync(dev)
        t0 = time.perf_counter()
        enc = codec.encode(model, x)
        sync(dev)
        t1 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:  # version 3's image check, same device
            warnings.simplefilter("always", ReconstructionWarning)
            codec.decompress(enc.data, model)
        sync(dev)
        unlike += any(issubclass(w.category, ReconstructionWarning) for w in caught)
        enc_ms.append(1e3 * (t1 - t0))
        dec_ms.append(1e3 * (time.perf_counter() - t1))
        bits += 8 * len(enc.data)
        est += sum(enc.estimated_bits.values())
        px += x.shape[2] * x.shape[3]
    return (f"| {factor} | {len(images)} | {statistics.median(enc_ms):.1f} | {statistics.median(dec_ms):.1f} | "
            f"{PAPER_MS['encode']} / {PAPER_MS['decode']} ms | {bits / px:.4f} | {bits / est - 1:+.2%} | {unlike} |")


def cross_device(model_name: str, images: list[Path], crop: int, dev: torch.device) -> list[str]:
    """Files encoded on ``dev`` decoded on the CPU, and files encoded on the CPU decoded on ``dev``
    (the first CROSS_IMAGES images, each (factor, precision) of CROSS), with what the decoder said
    (an error, or a warning of format version 3's image check)."""
    if dev.type == "cpu":
        return ["Skipped: one device only (run on a GPU machine)."]
    rows = ["| weights factor | precision | image | encoded on | decoded on | identical to same-device decode | "
            "max abs diff (8-bit) | decoder said |", "|---:|---|---|---|---|---|---:|---|"]
    for factor, dtype in CROSS:
        cpu_model = codec.synthetic_weights(hpcm(model_name), factor).eval().to(dtype)
        dev_model = codec.synthetic_weights(hpcm(model_name), factor).to(dev, dtype).eval()
        for p in images[:CROSS_IMAGES]:
            x = _load(p, crop)
            files = ((codec.encode(dev_model, x.to(dev)).data, dev.type, cpu_model, "cpu"),
                     (codec.encode(cpu_model, x).data, "cpu", dev_model, dev.type))
            for data, src, model, dst in files:
                ref = codec.decompress(data, dev_model if src != "cpu" else cpu_model).cpu()
                rows.append(f"| {factor} | {str(dtype)[6:]} | {p.name} | {src} | {dst} | " + _decode_row(data, model, ref))
    return rows


def exact_models(model_name: str, images: list[Path], crop: int, shipped: bool = True) -> dict[str, torch.nn.Module]:
    """Exact versions (format 5) to cross devices with, built on the CPU: ``model_name``'s synthetic
    weights at EXACT_FACTORS calibrated on the images, and (``shipped``) the shipped tiny models'
    from exact.json."""
    xs = [_load(p, crop) for p in images[:CROSS_IMAGES]]
    models = {f"{model_name}@{f}": exact.calibrate(codec.synthetic_weights(hpcm(model_name), f).eval(), xs)
              for f in EXACT_FACTORS}
    if shipped and store.is_store(store.SHIPPED) and store.exact_records():
        for q, path in store.qualities().items():
            models[f"shipped q{q}"] = store.exact_model(load_checkpoint(path).eval(), path)
    return models


def cross_device_exact(model_name: str, images: list[Path], crop: int, dev: torch.device,
                       other: torch.device = torch.device("cpu"), shipped: bool = True) -> list[str]:
    """Format-5 files encoded on ``dev`` decoded on ``other`` (the CPU) and the reverse: per model
    and direction, how many decodes were refused (must be 0), warned (pixels apart, every symbol
    right) or identical. On a CPU-only machine both sides are the CPU (a check of the code path)."""
    rows = ["| model | encoded on | decoded on | images | identical | warned | refused | silent |",
            "|---|---|---|---:|---:|---:|---:|---:|"]
    for name, cpu_model in exact_models(model_name, images, crop, shipped).items():
        dev_model = copy.deepcopy(cpu_model).to(dev)
        for src_model, src, dst_model, dst in ((dev_model, dev.type, cpu_model, other.type),
                                               (cpu_model, other.type, dev_model, dev.type)):
            counts = dict.fromkeys(("identical", "warned", "refused", "silent"), 0)
            for p in images[:CROSS_IMAGES]:
                x = _load(p, crop if not name.startswith("shipped") else (crop or 256))
                enc = codec.encode(src_model, x.to(next(src_model.parameters()).device))
                counts[_outcome(enc.data, dst_model, enc.image.cpu())] += 1
            rows.append(f"| {name} | {src} | {dst} | {len(images[:CROSS_IMAGES])} | " + " | ".join(str(v) for v in counts.values()) + " |")
    return rows


def _outcome(data: bytes, model: torch.nn.Module, ref: torch.Tensor) -> str:
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ReconstructionWarning)
            got = codec.decompress(data, model).cpu()
    except LicError:
        return "refused"
    if torch.equal(got, ref):
        return "identical"
    return "warned" if caught else "silent"


def _decode_row(data: bytes, model: torch.nn.Module, ref: torch.Tensor) -> str:
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = codec.decompress(data, model).cpu()
    except Exception as e:  # noqa: BLE001 -- a wrong decode may fail anywhere; report it
        return f"no | - | {type(e).__name__}: {str(e)[:120]} |"
    diff = float((got - ref).abs().max() * 255)
    said = "; ".join(f"{w.category.__name__}: {str(w.message)[:90]}" for w in caught) or "nothing"
    return f"{'yes' if diff == 0 else 'no'} | {diff:.0f} | {said} |"


def throughput(model: str, batch: int, patch: int, rounds: int, dev: torch.device, out: str) -> list[str]:
    """Standard vs Solution 1 (balanced): images/s and the ratio within each round."""
    base = {"model.name": model, "data.patch": patch, "data.batch": batch, "optim.schedule": "constant",
            "run.steps": 10**6, "speed.device": str(dev), "speed.compile": False, "data.test": ""}
    trs = {m: make_trainer(base, MODES[m], out, f"tp-{model}-{m}") for m in ("standard", "balanced")}
    x = next(train_loader(trs["standard"].cfg.train_dir, patch, batch, seed=0)).to(dev)
    t = timed_rounds({m: (lambda tr=tr: tr.train_step(x)) for m, tr in trs.items()}, rounds, dev)
    return [f"| {model} {batch}x{patch}px | {batch / statistics.median(t['standard']):.1f} | "
            f"{batch / statistics.median(t['balanced']):.1f} | {spread(per_round(t['balanced'], t['standard']))} |"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (CPU check of the code path)")
    ap.add_argument("--budget", type=float, default=540.0, help="seconds for all sections")
    ap.add_argument("--out", default="", help="result file (default benchmarks/results/gpu_<card>.md)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    a = ap.parse_args(argv)
    chosen = a.sections.split(",")
    if set(chosen) - set(SECTIONS):
        ap.error(f"--sections: choose from {', '.join(SECTIONS)}")
    os.environ.setdefault("WANDB_MODE", "disabled")
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available here; use --device cpu --smoke to check the script", file=sys.stderr)
        return 2
    dev = torch.device(a.device)
    t_start = time.perf_counter()
    big, tiny_b, tiny_p = ("tiny", 1, 128) if a.smoke else ("base", 32, 128)
    rounds = 2 if a.smoke else 5
    big_batch = (1, 128) if a.smoke else (8, 256)
    cpu_smoke = "not timed in --smoke on a CPU (compiling takes minutes)" if a.smoke and dev.type == "cpu" else ""
    n_img, crop = (1, 128) if a.smoke else (24, 0)
    images = sorted((datasets_root() / "kodak").glob("kodim*.png"))[:n_img]
    card = re.sub(r"[^A-Za-z0-9]+", "_", torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu").strip("_")
    out = Path(a.out or Path(__file__).parent / "results" / f"gpu_{card.lower()}.md")
    lines = [f"# gpu_check: {card}", "", f"`python benchmarks/gpu_check.py {' '.join(argv or sys.argv[1:])}`, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", "", *machine(dev), ""]
    budget = {"train options": 0.30, "coding": 0.20, "cross-device": 0.15, "cross-device exact": 0.15, "throughput": 0.20}
    with tempfile.TemporaryDirectory() as tmp:
        # train options last: its compiles are the slowest part, so a run stopped at its limit has
        # already written the other sections
        sections: list[tuple[str, Callable[[], list[str]]]] = [
            ("coding", lambda: coding(big, images, crop, dev)),
            ("cross-device", lambda: cross_device(big, images, crop, dev)),
            ("cross-device exact", lambda: cross_device_exact(big, images, crop or 256, dev, shipped=not a.smoke)),
            ("throughput", lambda: throughput("tiny", tiny_b, tiny_p, rounds, dev, tmp)
             + ([] if a.smoke else throughput(big, 8, 256, rounds, dev, tmp))),
            ("train options", lambda: train_options(big, *big_batch, rounds, dev, tmp, cpu_smoke)
             + ([] if a.smoke else ["", *train_options(big, 32, 256, rounds, dev, tmp, "not timed at this batch "
                                                       "(each compile takes minutes)")])),
        ]
        for title, fn in [(t, f) for t, f in sections if t in chosen]:
            left = a.budget - (time.perf_counter() - t_start)
            lines += [f"## {title}", ""]
            if left < budget[title] * a.budget * 0.5:
                lines += [f"Skipped: {left:.0f} s of the {a.budget:.0f} s budget left.", ""]
                continue
            t0 = time.perf_counter()
            try:
                body = fn()
            except Exception as e:  # noqa: BLE001 -- one failing section must not lose the others
                body = [f"Failed: {type(e).__name__}: {e}"]
            if title == "throughput":
                body = ["| model | standard img/s | Solution 1 img/s | Solution 1 / standard step |",
                        "|---|---:|---:|---:|", *body]
            lines += [*body, "", f"({time.perf_counter() - t0:.0f} s)", ""]
            print("\n".join([f"## {title}", *body, f"({time.perf_counter() - t0:.0f} s)"]), flush=True)
            write_file(out, "\n".join(lines) + "\n")  # what is done so far survives a kill
    lines.append(f"Total {time.perf_counter() - t_start:.0f} s.")
    write_file(out, "\n".join(lines) + "\n")
    print(f"{lines[-1]}\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
