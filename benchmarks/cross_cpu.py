"""Decoding on another CPU: files encoded by a process that uses all of this CPU's vector
instructions, decoded by one limited to fewer (as on an AVX2-only or an older machine), and the
reverse. PyTorch's own kernels, oneDNN and MKL each pick their code path by the CPU, so this is what
happens when a file travels between machines.

    python benchmarks/cross_cpu.py --kodak 24 --limits avx2,sse4 \\
        --models checkpoints/tiny/base-l0.0035-s0.pt,checkpoints/tiny/base-l0.025-s0.pt,base@0.7,base@0.8
    python benchmarks/cross_cpu.py --version 5 --threads 1,2 --kodak 24 --limits avx2,sse4 --models ...

A model is a checkpoint or ``NAME@FACTOR`` (synthetic weights at that factor, crops of ``--crop``
pixels). Each instruction set (this CPU's own and each of ``--limits``) encodes the images once;
each decodes the others' files, once per ``--threads`` count. Each decode is compared with the
encoding process's own decode (which equals the encoder's image on a CPU) and sorted as identical,
"warned" (format version 3's ReconstructionWarning: every symbol right, pixels apart), "refused"
(a BitstreamError) or "silent" (a different image and no word from the decoder: what format
version 3 exists to prevent).

``--version 5`` codes with the models' exact versions (:mod:`lic_core.models.exact`): a
checkpoint's from its store's ``exact.json``, a synthetic model's calibrated here on its crops.
Synthetic weights are drawn once, in this process, and travel to the others as a file: PyTorch's
``randn`` draws other numbers under another instruction set.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lic_core.coding import codec  # noqa: E402
from lic_core.coding.bitstream import VERSION, WRITABLE  # noqa: E402
from lic_core.errors import BitstreamError, ReconstructionWarning  # noqa: E402
from lic_core.imageio import load_image  # noqa: E402
from lic_core.models import exact  # noqa: E402
from lic_core.models.hpcm import hpcm, save_checkpoint  # noqa: E402
from lic_core.models.loading import load_checkpoint  # noqa: E402
from lic_core.paths import datasets_root  # noqa: E402
from lic_core.provenance import header, load_average  # noqa: E402
from lic_core.workbench import store  # noqa: E402

# Environment that caps each library's instruction set (read when the library loads)
LIMITS = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "sse4": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
}
OUTCOMES = ("identical", "warned", "refused", "silent")


def model_of(spec: str, dtype: str = "float32", weights: str | None = None, grids: str | None = None) -> torch.nn.Module:
    """The coding model of ``spec``: a checkpoint, or synthetic weights read from ``weights`` (drawn
    by the parent); with ``grids`` (a spec file) or a store record, its exact version."""
    model = load_checkpoint(weights or spec).eval()
    if grids is not None:
        model = exact.derive(model, json.loads(Path(grids).read_text()))
    return model.eval().to(getattr(torch, dtype))


def images_of(spec: str, kodak: int, crop: int) -> dict[str, torch.Tensor]:
    paths = sorted((datasets_root() / "kodak").glob("kodim*.png"))[:kodak]
    xs = {p.stem: load_image(p)[0] for p in paths}
    return {k: x[:, :, :crop, :crop] for k, x in xs.items()} if crop else xs


def _levels(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round().to(torch.uint8)


def decode_outcome(data: bytes, model: torch.nn.Module, ref: torch.Tensor) -> str:
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ReconstructionWarning)
            out = codec.decompress(data, model)
    except BitstreamError:
        return "refused"
    if torch.equal(_levels(out), _levels(ref)):  # 8-bit levels: the two sides may differ in dtype
        return "identical"
    return "warned" if any(issubclass(w.category, ReconstructionWarning) for w in caught) else "silent"


def worker(a: argparse.Namespace) -> int:
    """In this process's instruction set: encode to ``--encode-to`` (files and their own decode),
    or decode each folder of ``--decode`` with each thread count and write the outcomes to
    ``--result``."""
    threads = [int(t) for t in a.threads.split(",")]
    model = model_of(a.model, a.dtype, a.weights, a.grids)
    if a.encode_to:
        torch.set_num_threads(max(threads))
        out = Path(a.encode_to)
        for name, x in images_of(a.model, a.kodak, a.crop if "@" in a.model else a.checkpoint_crop).items():
            data = codec.encode(model, x, version=a.version).data
            (out / f"{name}.hpcm").write_bytes(data)
            torch.save(_levels(codec.decompress(data, model)), out / f"{name}.pt")
    if a.decode:
        got: dict[str, dict[str, str]] = {}
        for src in a.decode.split(","):
            for t in threads:
                torch.set_num_threads(t)
                got[f"{Path(src).name} {t}"] = {
                    f.stem: decode_outcome(f.read_bytes(), model, torch.load(Path(src) / f"{f.stem}.pt").float() / 255)
                    for f in sorted(Path(src).glob("*.hpcm"))}
        Path(a.result).write_text(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(), "runs": got}))
    return 0


def run_worker(limit: str, model: str, a: argparse.Namespace, **paths: str) -> None:
    env = {**os.environ, **LIMITS.get(limit, {})}
    args = [sys.executable, __file__, "--worker", "--models", model, "--kodak", str(a.kodak), "--crop", str(a.crop),
            "--checkpoint-crop", str(a.checkpoint_crop), "--threads", a.threads, "--version", str(a.version),
            "--dtype", a.dtype]
    args += [f"--{k.replace('_', '-')}={v}" for k, v in paths.items() if v]
    subprocess.run(args, env=env, check=True)


def prepare(model: str, a: argparse.Namespace, d: Path) -> dict[str, str | None]:
    """Files the workers share: synthetic weights drawn here, and for version 5 the exact grids."""
    paths: dict[str, str | None] = {"weights": None, "grids": None}
    if "@" in model:
        name, factor = model.split("@")
        float_model = codec.synthetic_weights(hpcm(name), float(factor))
        paths["weights"] = str(save_checkpoint(float_model, d / "weights.pt"))
    else:
        float_model = load_checkpoint(model).eval()
    if a.version >= 5:
        if "@" in model:
            spec = exact.calibrate_spec(float_model, images_of(model, a.kodak, a.crop).values())
        else:
            rec = store.exact_records(Path(model).parent).get(Path(model).name)
            if rec is None:
                raise SystemExit(f"cross_cpu: {model} has no exact-model record in its store's exact.json")
            spec = rec["spec"]
        (d / "grids.json").write_text(json.dumps(spec))
        paths["grids"] = str(d / "grids.json")
    return paths


def _odd_ones(images: dict[str, str]) -> str:
    """The images of a row that were refused or silently different, to look into."""
    odd = [f"{k} {v}" for k, v in images.items() if v in ("refused", "silent")]
    return f"  ({', '.join(odd)})" if odd else ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="checkpoints/tiny/base-l0.0035-s0.pt,checkpoints/tiny/base-l0.025-s0.pt")
    ap.add_argument("--limits", default="avx2,sse4", help=f"comma list of {', '.join(LIMITS)}")
    ap.add_argument("--kodak", type=int, default=24)
    ap.add_argument("--crop", type=int, default=256, help="crop side for synthetic-weight models")
    ap.add_argument("--checkpoint-crop", type=int, default=0, help="crop side for checkpoints (0: whole images)")
    ap.add_argument("--threads", default="2", help="comma list: each decode runs with each (encoders: the most)")
    ap.add_argument("--version", type=int, default=VERSION, choices=WRITABLE,
                    help="format version the encoders write (5: the models' exact versions; versions 1 and 2 are no "
                         "longer written: benchmarks/results/cross_cpu_xeon_v2.txt holds the version-2 run)")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"),
                    help="the models' float precision on both sides (float64: far slower on a CPU)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--encode-to", "--decode", "--result", "--weights", "--grids"):
        ap.add_argument(hidden, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        a.model = a.models
        return worker(a)
    limits = a.limits.split(",")
    if set(limits) - set(LIMITS):
        ap.error(f"--limits: choose from {', '.join(LIMITS)}")
    native = torch.backends.cpu.get_cpu_capability()
    start = time.monotonic()
    print("\n".join(header(None if argv is None else ["benchmarks/cross_cpu.py", *argv])), flush=True)
    print(f"this CPU: {native}; format version {a.version}, {a.dtype}; decodes compared with the encoding "
          f"process's own (identical / warned / refused / silent)")
    print(f"{'model':42} {'encoded on':>10} {'decoded on':>10} {'threads':>7} " + " ".join(f"{o:>9}" for o in OUTCOMES))
    totals = dict.fromkeys(OUTCOMES, 0)
    with tempfile.TemporaryDirectory() as tmp:
        for model in a.models.split(","):
            d = Path(tmp) / str(abs(hash(model)))
            d.mkdir(parents=True)
            shared = prepare(model, a, d)
            sides = ["native", *limits]
            for side in sides:
                (d / side).mkdir()
                run_worker("" if side == "native" else side, model, a, encode_to=str(d / side), **shared)
            caps = {}
            for side in sides:
                others = ",".join(str(d / o) for o in sides if o != side)
                run_worker("" if side == "native" else side, model, a, decode=others,
                           result=str(d / f"{side}.json"), **shared)
                caps[side] = json.loads((d / f"{side}.json").read_text())["capability"]
            for side in sides:
                for run, images in json.loads((d / f"{side}.json").read_text())["runs"].items():
                    src, threads = run.split()
                    got = list(images.values())
                    for o in OUTCOMES:
                        totals[o] += got.count(o)
                    print(f"{model[-42:]:42} {caps[src]:>10} {caps[side]:>10} {threads:>7} "
                          + " ".join(f"{got.count(o):9d}" for o in OUTCOMES) + _odd_ones(images), flush=True)
    print(f"{'total':42} {'':>10} {'':>10} {'':>7} " + " ".join(f"{totals[o]:9d}" for o in OUTCOMES))
    print(f"# finished {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC after {(time.monotonic() - start) / 60:.0f} min; "
          f"load average at the end {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
