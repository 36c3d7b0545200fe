"""HPCM speed on this machine, side by side with the authors' implementation and the CPU's limit.

Measures, per model (base / large / tiny): one training step (batch 4 x 256x256: forward, loss,
backward, Adam), one eval forward (1x3x512x768), and real encode / decode of Kodak images with
file bytes vs the estimated bits. Prints a markdown table of seconds and the achieved MAC rate
against a large float32 matmul measured in every round. Ratios to the authors' code come only
from ``--authors`` (interleaved in one process): a reference time taken on another day on a
shared machine is not comparable (this project saw the same Base step take 10 s and 14 s).

    python benchmarks/bench_model.py                 # base, large, tiny; 3 Kodak images
    python benchmarks/bench_model.py --quick         # smoke test: tiny only, small sizes
    python benchmarks/bench_model.py --models base --kodak 24 --checkpoint base=ckpt.pth.tar
    python benchmarks/bench_model.py --models base --kodak 0 --authors ~/LIC-HPCM   # + their code
    python benchmarks/bench_model.py --models base --kodak 0 --layers   # 1x1 convs: oneDNN vs GEMM
    python benchmarks/bench_model.py --models base --kodak 0 --authors ~/LIC-HPCM --paths  # + each path forced

``--authors PATH`` takes a checkout of the authors' repository (lyq133/LIC-HPCM, not shipped here)
and times its ``src/models/HPCM_{Base,Large}.HPCM`` interleaved with ours, in this process, with
the same weights (ours, renamed to theirs), the same inputs and the same loss, so the printed
ratio is like-for-like on whatever machine runs it.

Ours runs with the autotuner (``--autotune``, default ``auto``: lic_core.models.autotune) measuring
each 1x1 conv shape afresh in this process (``--machine-cache`` reuses the machine's stored
choices instead); the output ends with every choice it made and the times it measured.

Without a checkpoint, weights follow the conformance rule (codec.synthetic_weights) so that the
entropy coder sees non-trivial symbols; timings do not depend on the weight values.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import os
import importlib
import platform
import statistics
import sys
import time
import types
from pathlib import Path
from typing import Callable, Iterator

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lic_core.coding import codec  # noqa: E402
from lic_core.imageio import load_image  # noqa: E402
from lic_core.config import OptimConfig  # noqa: E402
from lic_core.training.losses import distortion  # noqa: E402
from lic_core.models.authors import authors_name  # noqa: E402
from lic_core.provenance import commit, cpu_name  # noqa: E402
from lic_core.models import autotune  # noqa: E402
from lic_core.models.blocks import Conv1x1  # noqa: E402
from lic_core.models.hpcm import count_parameters, hpcm, kmacs_per_pixel  # noqa: E402
from lic_core.models.loading import load_checkpoint  # noqa: E402
from lic_core.paths import datasets_root  # noqa: E402
from lic_core.training.engine import bf16_transforms, compile_forward, cpu_bf16, make_optimizer  # noqa: E402

AUTHORS = ("base", "large")  # the models their repository has
COLUMNS = ("train step", "eval forward", "encode", "decode")
# ops that do the multiply-accumulates: oneDNN convolutions (forward and backward) and the matrix
# products of Conv1x1 and the attention
COMPUTE = ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::mm", "aten::addmm", "aten::bmm",
           "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_flash_attention_for_cpu_backward")


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median seconds of ``repeat`` runs after one warm-up run."""
    return statistics.median(rounds({"f": fn}, repeat)["f"])


def matmul_fn(n: int = 2048) -> Callable[[], object]:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return lambda: a @ b


def gflops(seconds: float, n: int = 2048) -> float:
    """float32 GFLOP/s of an n x n matmul that took ``seconds``: the practical limit of this CPU."""
    return 2 * n**3 / seconds / 1e9


def rounds(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, list[float]]:
    """Seconds of each of ``fns`` in each of ``repeat`` rounds (A B C, A B C, ...), after one
    warm-up each: round ``i`` of every variant ran at nearly the same moment, so a ratio within a
    round is what this noisy, shared machine can measure; a burst of load spoils one round, not
    the whole comparison."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return times


def per_round(num: list[float], den: list[float]) -> tuple[float, float, float]:
    """Median, min and max over rounds of ``num[i] / den[i]``."""
    r = [a / b for a, b in zip(num, den)]
    return statistics.median(r), min(r), max(r)


def spread(stats: tuple[float, float, float], digits: int = 2) -> str:
    med, lo, hi = stats
    return f"{med:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def their_adam(params) -> torch.optim.Optimizer:
    """The authors' optimizer as their train.py builds it (torch's default Adam: on CPU, a loop
    over the tensors)."""
    return torch.optim.Adam(params, lr=1e-4)


def our_adam(params) -> torch.optim.Optimizer:
    """Our engine's optimizer for the standard mode (torch's fused Adam), lr 1e-4 as theirs."""
    return make_optimizer(params, OptimConfig(lr=1e-4))


def train_step_fn(model, batch: int, size: int, lmbda: float = 0.0067,
                  adam: Callable = our_adam) -> Callable[[], None]:
    """Forward, R-D loss (bits of every likelihood tensor, so any HPCM implementation fits),
    backward and a step of ``adam`` (ours: the engine's; theirs: :func:`their_adam`)."""
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    opt = adam(model.parameters())

    def step() -> None:
        model.train()
        opt.zero_grad(set_to_none=True)
        out = model(x)
        bits = sum(-torch.log2(lik).sum() for lik in out["likelihoods"].values())
        loss = distortion(out["x_hat"], x, "mse", lmbda) + bits / (x.numel() // 3)
        loss.backward()
        opt.step()

    return step


def eval_forward_fn(model, h: int, w: int) -> Callable[[], None]:
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))

    def fwd() -> None:
        model.eval()
        with torch.no_grad():
            model(x)

    return fwd


def coding(model, images: list[Path], crop: int) -> dict[str, float]:
    """Mean encode / decode seconds and the file-size figures over ``images``."""
    enc_t, dec_t, files, est, streams, pixels = [], [], 0, 0.0, 0, 0
    for path in images:
        x, _ = load_image(path)
        if crop:
            x = x[:, :, :crop, :crop]
        t0 = time.perf_counter()
        enc = codec.encode(model, x)
        enc_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        codec.decompress(enc.data, model)
        dec_t.append(time.perf_counter() - t0)
        files += len(enc.data)
        streams += sum(enc.stream_bytes.values())
        est += sum(enc.estimated_bits.values()) / 8
        pixels += x.shape[2] * x.shape[3]
    return {
        "encode": statistics.mean(enc_t),
        "decode": statistics.mean(dec_t),
        "bpp": 8 * files / pixels,
        "stream_vs_est": streams / est - 1,
        "header": (files - streams) / len(images),
    }


def machine() -> str:
    return (f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, Python "
            f"{platform.python_version()}, commit {commit()}")


def build(name: str, checkpoints: dict[str, str]):
    if name in checkpoints:
        return load_checkpoint(checkpoints[name])
    return codec.synthetic_weights(hpcm(name))


def check_authors(checkout: Path, names: list[str]) -> None:
    """Refuse, before any timing, a folder that lacks the authors' model files for ``names``."""
    for name in names:
        rel = Path("src", "models", f"HPCM_{name.title()}.py")
        if name not in AUTHORS or not (checkout / rel).is_file():
            raise SystemExit(f"--authors {checkout}: no {rel} there for model {name!r} (a checkout of "
                             "lyq133/LIC-HPCM has src/models/HPCM_Base.py and HPCM_Large.py; models: base, large)")


def _stub(name: str, *attrs: str) -> types.ModuleType:
    mod = types.ModuleType(name)

    def refuse(*_a: object, **_k: object) -> None:
        raise RuntimeError(f"{name} is a stub put in by bench_model.py (their compiled coder is built for "
                           "Python 3.8 only): the authors' models are timed forward and backward, never coded")

    for attr in attrs:
        setattr(mod, attr, refuse)
    return mod


# Their compiled extensions (``.so`` files for CPython 3.8) and what their package imports of them.
STUBS = {"src.entropy_models._CXX": ("pmf_to_quantized_cdf",),
         "src.entropy_models.unbounded_ans": ("ubransEncoder", "ubransDecoder")}
FACTORIES = ("ones", "zeros", "empty", "full", "rand", "randn", "tensor", "arange")


@contextlib.contextmanager
def authors_shims() -> Iterator[None]:
    """In-process shims only, their files untouched: stub modules for their compiled coder, and,
    without CUDA, tensor factories that turn their hard-coded ``device='cuda'`` into the CPU."""
    saved_mods = {k: sys.modules.get(k) for k in STUBS}
    saved_fns = {n: getattr(torch, n) for n in FACTORIES}

    def on_cpu(fn: Callable) -> Callable:
        def call(*a: object, **kw: object) -> object:
            if not torch.cuda.is_available() and str(kw.get("device", "")).startswith("cuda"):
                kw["device"] = "cpu"
            return fn(*a, **kw)
        return call

    try:
        for name, attrs in STUBS.items():
            if saved_mods[name] is None:
                sys.modules[name] = _stub(name, *attrs)
        for n in FACTORIES:
            setattr(torch, n, on_cpu(saved_fns[n]))
        yield
    finally:
        for n, fn in saved_fns.items():
            setattr(torch, n, fn)


def authors_model(checkout: Path, name: str, ours: torch.nn.Module) -> torch.nn.Module:
    """The authors' ``HPCM`` of size ``name`` from an unmodified checkout of their repository,
    carrying the weights of ``ours`` (renamed with :func:`lic_core.models.authors.authors_name`)."""
    check_authors(checkout, [name])
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    with authors_shims():
        theirs = importlib.import_module(f"src.models.HPCM_{name.title()}").HPCM()
    own = {authors_name(k): v for k, v in ours.named_parameters()}
    missing = [k for k, _ in theirs.named_parameters() if k not in own]
    if missing:
        raise SystemExit(f"--authors: their {name} has parameters we do not map: {missing[:5]} ...")
    theirs.load_state_dict(own, strict=False)
    return theirs


def side_by_side(ours: dict[str, torch.nn.Module], theirs: torch.nn.Module, batch: int, size: int, eh: int,
                 ew: int, repeat: int) -> dict[str, dict[str, object]]:
    """Train step and eval forward of each variant of ours and of theirs in interleaved rounds,
    per variant: per-round ours/theirs ratios (median, min, max), median seconds, and the largest
    eval ``x_hat`` difference to theirs (the same weights should give the same image)."""
    x = torch.rand(1, 3, eh, ew, generator=torch.Generator().manual_seed(1))  # the eval shape: no extra compile
    with torch.no_grad():  # before the train steps, which move the copies of the weights apart
        ref = theirs.eval()(x)["x_hat"]
        diff = {k: (m.eval()(x)["x_hat"] - ref).abs().max().item() for k, m in ours.items()}
    fns = {"eval theirs": eval_forward_fn(theirs, eh, ew), "train theirs": train_step_fn(theirs, batch, size, adam=their_adam)}
    for k, m in ours.items():
        fns |= {f"eval {k}": eval_forward_fn(m, eh, ew), f"train {k}": train_step_fn(m, batch, size)}
    t = rounds(fns, repeat)
    return {k: {"train": statistics.median(t[f"train {k}"]), "eval": statistics.median(t[f"eval {k}"]),
                "train theirs": statistics.median(t["train theirs"]),
                "eval theirs": statistics.median(t["eval theirs"]), "x_hat max diff": diff[k],
                "train ratio": per_round(t[f"train {k}"], t["train theirs"]),
                "eval ratio": per_round(t[f"eval {k}"], t["eval theirs"])} for k in ours}


def profile_step(model: torch.nn.Module, batch: int, size: int, top: int = 12,
                 adam: Callable = our_adam) -> tuple[str, float, float]:
    """``torch.profiler`` of one train step (after a warm-up one): its op table by self CPU time,
    and the seconds in the multiply-accumulate ops (``COMPUTE``) and in everything else."""
    from torch.profiler import ProfilerActivity, profile

    step = train_step_fn(model, batch, size, adam=adam)
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    ops = prof.key_averages()
    conv = sum(e.self_cpu_time_total for e in ops if e.key in COMPUTE) / 1e6
    total = sum(e.self_cpu_time_total for e in ops) / 1e6
    return ops.table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=40), conv, total - conv


def conv1x1_calls(model: torch.nn.Module, batch: int, size: int) -> dict[tuple[int, ...], int]:
    """Input shape -> number of calls, of every :class:`Conv1x1` in one train-mode forward (the
    shapes need no backward or optimizer step)."""
    calls: dict[tuple[int, ...], int] = {}

    def hook(mod: torch.nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        key = (*inp[0].shape, mod.out_channels)
        calls[key] = calls.get(key, 0) + 1

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, Conv1x1)]
    try:
        with torch.no_grad():
            model.train()(torch.rand(batch, 3, size, size))
    finally:
        for h in hooks:
            h.remove()
    return calls


class Forced(torch.nn.Module):
    """``model`` run with the autotuner forced to ``path`` (a benchmark variant of ours)."""

    def __init__(self, model: torch.nn.Module, path: str):
        super().__init__()
        self.model, self.path = model, path

    def forward(self, x: torch.Tensor) -> dict:
        with autotune.forced(self.path):
            return self.model(x)


def layers_table(model: torch.nn.Module, batch: int, size: int, repeat: int) -> list[str]:
    """Forward + backward of each of the model's Conv1x1 shapes on both of its paths, forced: the
    GEMM and the oneDNN convolution (channels-last weights, as the model's), the same weights, in
    interleaved rounds; rows by oneDNN time spent per train step, then the total."""
    rows, tot = [], {"gemm": 0.0, "onednn": 0.0}
    calls = conv1x1_calls(model, batch, size)
    for (b, c, h, w, cout), n in calls.items():
        layer = Conv1x1(c, cout).to(memory_format=torch.channels_last)
        x = torch.randn(b, c, h, w).contiguous(memory_format=torch.channels_last).requires_grad_()
        grad = torch.randn(b, cout, h, w)

        def run(path: str) -> Callable[[], None]:
            def once() -> None:
                with autotune.forced(path):
                    layer(x).backward(grad)
            return once

        t = rounds({"gemm": run("gemm"), "onednn": run("conv")}, repeat)
        med = {k: statistics.median(v) for k, v in t.items()}
        for k in tot:
            tot[k] += n * med[k]
        gmacs = {k: 3 * b * h * w * c * cout / v / 1e9 for k, v in med.items()}  # forward + 2 backward GEMMs
        rows.append((n * med["onednn"], f"| {c} -> {cout} | {b}x{h}x{w} | {n} | {gmacs['onednn']:.1f} | "
                     f"{gmacs['gemm']:.1f} | {spread(per_round(t['gemm'], t['onednn']))} |"))
    head = ["| channels | positions (BxHxW) | calls per step | oneDNN conv GMAC/s | GEMM GMAC/s | GEMM/oneDNN per round |",
            "|---|---|---:|---:|---:|---:|"]
    return head + [r for _, r in sorted(rows, reverse=True)] + [
        f"| all, weighted by calls | | {sum(calls.values())} | "
        f"{tot['onednn']:.2f} s | {tot['gemm']:.2f} s | {tot['gemm'] / tot['onednn']:.2f} |"]


def variants(model: torch.nn.Module, bf16: bool, paths: bool = False,
             compiled: bool = False) -> dict[str, torch.nn.Module]:
    """Ours as is (the autotuner in the benchmark's mode); with ``paths``, a copy with each path of
    the autotuner forced; with ``bf16``, a copy with the engine's ``speed.bf16`` (transforms under
    bfloat16 autocast; not like-for-like with their float32, so it gets its own row); with
    ``compiled``, a copy with the engine's ``speed.compile`` (float32, torch.compile of the forward,
    as every training run of at least ``COMPILE_MIN_STEPS`` steps runs by default)."""
    out = {"ours": model}
    if paths:
        for path in autotune.PATHS["conv1x1"]:
            out[f"ours, {path}"] = Forced(copy.deepcopy(model), path)
    if bf16:
        out["ours, speed.bf16"] = copy.deepcopy(model)
        bf16_transforms(out["ours, speed.bf16"], "cpu")
    if compiled:
        out["ours, speed.compile"] = copy.deepcopy(model)
        if not compile_forward(out["ours, speed.compile"], torch.device("cpu")):
            del out["ours, speed.compile"]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="base,large,tiny")
    ap.add_argument("--kodak", type=int, default=3, help="Kodak images to encode/decode (0: skip)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs after a warm-up (median)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--checkpoint", action="append", default=[], metavar="NAME=PATH")
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny only, small sizes, 1 run")
    ap.add_argument("--authors", type=Path, metavar="CHECKOUT",
                    help="a checkout of lyq133/LIC-HPCM: time its base/large side by side with ours")
    ap.add_argument("--profile", action="store_true",
                    help="with --authors: profile one train step of ours and theirs (convs and GEMMs vs the rest)")
    ap.add_argument("--bf16", action="store_true",
                    help="with --authors: also ours with speed.bf16 (CPUs with oneDNN bfloat16 kernels)")
    ap.add_argument("--compile", action="store_true",
                    help="with --authors: also ours with speed.compile (the engine's default on long runs)")
    ap.add_argument("--layers", action="store_true",
                    help="forward + backward of each 1x1 conv shape of the context model: GEMM vs oneDNN")
    ap.add_argument("--autotune", default="auto", choices=autotune.MODES,
                    help="ours: measure each 1x1 conv shape (auto), the portable default (off), or one path")
    ap.add_argument("--machine-cache", action="store_true",
                    help="take the autotuner's choices stored on this machine (default: measure afresh)")
    ap.add_argument("--paths", action="store_true",
                    help="with --authors: also ours with each autotuner path forced, one row each")
    a = ap.parse_args(argv)
    with autotune.forced(a.autotune), machine_cache(a.machine_cache):
        return run(a)


@contextlib.contextmanager
def machine_cache(use: bool) -> Iterator[None]:
    """Without ``use``, the autotuner neither reads nor stores the machine cache while the
    benchmark runs: it measures every shape afresh, in this process."""
    saved = os.environ.get(autotune.STORE_ENV)
    if not use:
        os.environ[autotune.STORE_ENV] = ""
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(autotune.STORE_ENV, None)
        else:
            os.environ[autotune.STORE_ENV] = saved


def run(a: argparse.Namespace) -> int:
    """The benchmark of the parsed command line ``a``."""
    if a.bf16 and not cpu_bf16():
        raise SystemExit("--bf16: oneDNN has no bfloat16 kernels for this CPU (it needs AVX-512)")
    torch.set_num_threads(a.threads)
    names = ["tiny"] if a.quick and not a.authors else a.models.split(",")
    big = any(n != "tiny" for n in names)  # Base / Large pad to multiples of 256
    batch, size, (eh, ew) = ((1, 256, (256, 256)) if big else (1, 128, (128, 256))) if a.quick else (4, 256, (512, 768))
    # their code needs sides that are multiples of 256
    a_batch, a_size, a_eh, a_ew = (1, 256, 256, 256) if a.quick else (batch, size, eh, ew)
    repeat, crop = (1, size) if a.quick else (a.repeat, 0)
    kodak = sorted((datasets_root() / "kodak").glob("kodim*.png"))[: 1 if a.quick else a.kodak]
    checkpoints = dict(c.split("=", 1) for c in a.checkpoint)
    if a.authors:
        a.authors = a.authors.expanduser().resolve()
        check_authors(a.authors, names)

    load0 = os.getloadavg()[0]
    n_mm = 1024 if a.quick else 2048
    rows, peaks = [], []
    for name in names:
        model = build(name, checkpoints)
        t = rounds({"train": train_step_fn(model, batch, size), "forward": eval_forward_fn(model, eh, ew),
                    "matmul": matmul_fn(n_mm)}, repeat)
        kmacs = kmacs_per_pixel(model, eh, ew)
        peak = [gflops(s, n_mm) for s in t["matmul"]]  # measured in every round, beside the model
        peaks += peak
        util = per_round([kmacs * 1e3 * eh * ew / f / 1e9 for f in t["forward"]], [p / 2 for p in peak])
        train, fwd = statistics.median(t["train"]), statistics.median(t["forward"])
        c = coding(build(name, checkpoints), kodak, crop) if kodak else {}  # not the train-stepped copy
        rows.append((name, count_parameters(model), kmacs, train, fwd, kmacs * 1e3 * eh * ew / fwd / 1e9, util, c))
        print(f"[{name}] train {train:.2f} s, forward {fwd:.2f} s, {c}", file=sys.stderr, flush=True)
    peak = statistics.median(peaks)
    load = os.getloadavg()[0]
    print(f"\n**Machine:** {machine()}; float32 matmul {peak:.1f} GFLOP/s ({peak / 2:.1f} GMAC/s; median of "
          f"every round, {min(peaks):.1f}-{max(peaks):.1f}); load average {load0:.2f} at the start, {load:.2f} at the end "
          "(this run's own 2 threads count)")
    print(f"Train step: batch {batch} x {size}^2, forward + loss + backward + Adam step (ours: the "
          f"engine's, torch's fused Adam; theirs: their train.py's, torch's default Adam); eval forward 1x3x{eh}x{ew}; "
          f"median of {repeat} after a warm-up; ours with the autotuner in mode {autotune.mode()} (its choices at "
          f"the end). Coding: mean over {len(kodak)} Kodak image(s)"
          + (f" cropped to {crop}x{crop}" if crop else "") + ". Ratios to the authors' code: `--authors`.\n")
    print("| model | params | kMACs/px | " + " | ".join(COLUMNS) + " | forward GMAC/s (% of that round's matmul: median, min-max) | bpp | streams vs est. | header B |")
    print("|---|---:|---:|" + "---:|" * (len(COLUMNS) + 4))
    for name, params, kmacs, train, fwd, gmacs, util, c in rows:
        cells = [f"{v:.2f} s" for v in (train, fwd, *((c["encode"], c["decode"]) if c else ()))]
        cells += [] if c else ["-", "-"]
        extra = [f"{c['bpp']:.4f}", f"{100 * c['stream_vs_est']:+.2f}%", f"{c['header']:.0f}"] if c else ["-"] * 3
        util = f"{gmacs:.1f} ({spread(tuple(100 * u for u in util), 0)}%)"
        print(f"| {name} | {params / 1e6:.2f} M | {kmacs:.1f} | " + " | ".join(cells) + f" | {util} | " + " | ".join(extra) + " |")
    if a.layers:
        for name in names:
            print(f"\n{name}: the context model's 1x1 convs at the train step's shapes, forward + backward, "
                  f"as Conv1x1 computes them (GEMM) and as a oneDNN convolution; median of {repeat} interleaved "
                  "rounds (the total row: seconds per train step)\n")
            print("\n".join(layers_table(build(name, checkpoints), batch, size, repeat)))
    if a.authors:
        print(f"\nSide by side with the authors' code in {a.authors} (unmodified; their compiled coder stubbed "
              f"and, without CUDA, their device='cuda' mapped to the CPU, in this process only). Same weights, inputs "
              f"and loss; {repeat} interleaved rounds; ours/theirs is the median of the per-round ratios (min-max):\n")
        print("| model | train step ours | theirs | ours/theirs | eval forward ours | theirs | ours/theirs "
              "| eval x_hat max diff |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for name in names:
            ours = build(name, checkpoints)
            res = side_by_side(variants(ours, a.bf16, a.paths, a.compile), authors_model(a.authors, name, ours),
                               a_batch, a_size, a_eh, a_ew, repeat)
            for k, r in res.items():
                label = name if k == "ours" else f"{name} ({k})"
                print(f"| {label} | {r['train']:.2f} s | {r['train theirs']:.2f} s | {spread(r['train ratio'], 3)} | "
                      f"{r['eval']:.2f} s | {r['eval theirs']:.2f} s | {spread(r['eval ratio'], 3)} | "
                      f"{r['x_hat max diff']:.2e} |")
        if a.profile:
            print("\nOne profiled train step each (self CPU time; one step, so shares count more than seconds):")
            for name in names:
                ours = build(name, checkpoints)
                prof = {"ours": profile_step(ours, a_batch, a_size),
                        "theirs": profile_step(authors_model(a.authors, name, ours), a_batch, a_size,
                                               adam=their_adam)}
                for who, (table, conv, rest) in prof.items():
                    print(f"\n{name}, {who}: convolutions and matrix products {conv:.2f} s ({100 * conv / (conv + rest):.0f} %), "
                          f"the rest {rest:.2f} s\n```\n{table}```")
                (_, conv, _), (_, c2, r2) = prof["ours"], prof["theirs"]
                print(f"\n{name}: ours with nothing but its convolutions and matrix products would take "
                      f"{conv / (c2 + r2):.2f}x theirs (a bound on what code around them can reach)")
    print("\nThe autotuner's choices for ours (key: path; how decided: times of the best round):\n```\n"
          + "\n".join(autotune.describe()) + "\n```")
    return 0


if __name__ == "__main__":
    sys.exit(main())
